"""Differential privacy at a hospital: Opacus DP-SGD, with ε cumulative over the whole run.

Opacus' accountant knows only the steps of its own PrivacyEngine, and each round builds
a new one, in a process that may be new (a restarted worker, Flower's per-message
processes, `resume=`'s fresh SuperNodes), so it would report that round's ε alone. The
accountant's history — one (σ, q, steps) entry per round trained — is kept in the
hospital's ledger file next to its manifest, and every ε is computed by Opacus' RDP
accountant over all of it.

With `privacy.target_epsilon`, σ is chosen once, for the whole planned run
(rounds × local epochs × steps per epoch at the hospital's sample rate), and written
to the ledger; later rounds (and resumed runs) reuse it, without searching for it again
(at a sample rate below 1 it is a binary search of RDP computations; searched every round,
and with `epsilon` below handed every round's entry, small_cnn's rounds took 15.0–15.2 s,
13.0–14.5 s without: bench/round_overhead.py). A round
that would take ε past the target is declined.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class Plan:
    """A hospital's DP-SGD settings, derived from the config and its number of training images."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int
    delta: float
    max_grad_norm: float
    target_epsilon: float | None


def _positive(name: str, value) -> float:
    """A positive, finite number (a NaN target would disable every comparison against it)."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value}")
    return value


def plan(privacy, federation, num_train: int, max_epsilon: float | None = None,
         sigma: float | None = None, max_delta: float | None = None) -> Plan:
    """Check the privacy settings for a hospital of `num_train` images; one clear error naming the key.

    `max_epsilon` and `max_delta` are the hospital's own cap (its policy, not the server's
    config): σ is planned for the smaller target, ε is counted at the smaller δ, and no round
    may take ε past the cap. `sigma`: the σ this run already spent under (the hospital's
    ledger), kept as it is."""
    delta = _positive("privacy.delta", privacy.delta)
    if max_delta is not None:
        delta = min(delta, _positive("hospital.max_delta", max_delta))
    if not delta < 1:
        raise ValueError(f"privacy.delta: expected a value in (0, 1), got {delta}")
    if delta >= 1 / num_train:  # the message names no n: it reaches the server
        raise ValueError(f"privacy.delta: {delta} is not below 1/n for this hospital's number of training images; "
                         "a δ that large allows leaking a whole record")
    _positive("privacy.max_grad_norm", privacy.max_grad_norm)
    batches = math.ceil(num_train / int(federation.batch_size))
    sample_rate = 1 / batches  # Opacus' Poisson sampling: expected batch = batch_size
    steps_per_round = int(federation.local_epochs) * batches
    planned = int(federation.rounds) * steps_per_round
    target = None if privacy.target_epsilon is None else _positive("privacy.target_epsilon", privacy.target_epsilon)
    if max_epsilon is not None:
        max_epsilon = _positive("hospital.max_epsilon", max_epsilon)
        if target is not None and target > max_epsilon:
            target = max_epsilon
    if sigma is not None:
        sigma = _positive("the ledger's noise multiplier", sigma)
    elif target is not None:
        try:
            with warnings.catch_warnings():  # see `epsilon`
                warnings.simplefilter("ignore", UserWarning)
                sigma = get_noise_multiplier(target_epsilon=float(target), target_delta=delta,
                                             sample_rate=sample_rate, steps=planned, accountant=ACCOUNTANT)
        except ValueError as e:
            raise ValueError(f"privacy.target_epsilon: ε={target} cannot be met in the planned {planned} steps "
                             f"at sample rate {sample_rate:.3g} ({e})") from e
    elif privacy.noise_multiplier is None:
        raise ValueError("privacy.noise_multiplier: give a noise multiplier or privacy.target_epsilon")
    else:
        sigma = _positive("privacy.noise_multiplier", privacy.noise_multiplier)
    limit = float(target) if target is not None else (None if max_epsilon is None else float(max_epsilon))
    return Plan(sigma, sample_rate, steps_per_round, planned, delta, float(privacy.max_grad_norm), limit)


def epsilon(history: list[dict], delta: float) -> float:
    """ε after every (σ, q, steps) entry of `history`, by Opacus' RDP accountant.

    Entries of one (σ, q) are handed to it as one, their steps summed: RDP adds up over
    steps, so the ε is the same, and the accountant's work per call stays that of one
    round instead of growing with every round trained."""
    if not history:
        return 0.0
    steps: dict[tuple[float, float], int] = {}
    for h in history:
        key = (h["noise_multiplier"], h["sample_rate"])
        steps[key] = steps.get(key, 0) + h["steps"]
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, n) for (sigma, q), n in steps.items()]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, only loose
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


@contextlib.contextmanager
def ledger_lock(path: Path):
    """Hold the ledger at `path` exclusively (flock on a file beside it) from reading it to the last spend."""
    with open(Path(path).with_name(Path(path).name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass
class Ledger:
    """A hospital's privacy spending over the run: σ fixed at the first round (plan each round with
    `sigma=ledger.noise_multiplier`), one entry per round."""

    path: Path
    noise_multiplier: float | None = None
    history: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> "Ledger":
        if not Path(path).exists():
            return cls(Path(path))
        saved = json.loads(Path(path).read_text())
        return cls(Path(path), saved["noise_multiplier"], saved["history"])

    def next_round(self, plan: Plan, server_round: int) -> dict:
        return {"round": server_round, "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                "steps": plan.steps_per_round}

    def refusal(self, plan: Plan, server_round: int) -> str | None:
        """Why this round must be declined (it would exceed the target ε), or None."""
        if plan.target_epsilon is None:
            return None
        after = epsilon(self.history + [self.next_round(plan, server_round)], plan.delta)
        if not after <= plan.target_epsilon:  # NaN-safe: only a number within the limit trains
            return (f"privacy budget spent: another round would take ε from "
                    f"{epsilon(self.history, plan.delta):.3f} to {after:.3f} > limit {plan.target_epsilon}")
        return None

    def spend(self, plan: Plan, server_round: int, steps: int) -> None:
        """Record a trained round (the steps actually taken) and save atomically."""
        self.noise_multiplier = plan.noise_multiplier
        self.history.append(self.next_round(plan, server_round) | {"steps": steps})
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"noise_multiplier": self.noise_multiplier, "history": self.history}, indent=1))
        tmp.replace(self.path)

    def report(self, plan: Plan, secure: bool = False) -> dict:
        """What the hospital reports: ε over every round trained so far. Under secure aggregation
        only (ε, δ): σ, the sample rate and the steps would tell the server ⌈n/batch⌉."""
        released = {"epsilon": epsilon(self.history, plan.delta), "delta": plan.delta, "accountant": ACCOUNTANT}
        if secure:
            return released
        return released | {"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                           "steps": sum(h["steps"] for h in self.history)}
