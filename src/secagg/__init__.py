"""Secure aggregation (SecAgg+, Bell et al. 2020) for fedcxr: the cryptographic core.

The server learns only sum_i n_i q(x_i) and sum_i n_i over the hospitals that
finished the round (at least `threshold` of them), never one hospital's update.
Pure Python + `cryptography` + numpy; Flower messaging lives with the strategy and
the ClientApp, which drive `ClientSession` and `ServerSession` stage by stage.
"""

from .client import ClientSession
from .encoding import check_modulus, dequantize_mean, encode, error_bound, quantize
from .errors import BelowThresholdError, SecAggError
from .graph import circulant_neighbours, default_num_shares, default_threshold
from .identity import Identity, RoundKeys
from .server import Rejection, ServerSession

__all__ = [
    "BelowThresholdError", "ClientSession", "Identity", "RoundKeys", "Rejection", "SecAggError", "ServerSession", "check_modulus",
    "circulant_neighbours", "default_num_shares", "default_threshold", "dequantize_mean",
    "encode", "error_bound", "quantize",
]
