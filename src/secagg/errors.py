"""Why a secure-aggregation round stopped.

Two kinds, because the caller reacts differently: a `BelowThresholdError` is an
ordinary outcome of dropouts (keep the old global model, try the next round),
while any other `SecAggError` means someone broke the protocol.
"""


class SecAggError(Exception):
    """A protocol violation: a stage called out of order, a request that would unmask a hospital."""


class BelowThresholdError(SecAggError):
    """Too few hospitals (or shares) left to finish the round without revealing anyone."""
