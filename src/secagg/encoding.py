"""Float updates <-> integers that can be masked and summed mod 2^64.

Masks only hide values in a finite group, so each hospital clips its update to
[-clip_range, clip_range], maps it to integers in [0, 2^quant_bits - 1] (nearest
integer, ties to even: deterministic), multiplies by its weight n_i (number of
training examples) and appends n_i, so the server learns the weighted sum and the
total weight, nothing else.

Error bound: if every |x| <= clip_range, each quantised value is within half a
step of the exact one, so, per coordinate,

    |dequantize(sum, N) - sum_i n_i x_i / N| <= clip_range / (2^quant_bits - 1)

(plus float32 rounding of the returned mean, <= 2^-24 clip_range). Values beyond
clip_range are clipped first; that error is not bounded here.

No wraparound: the sum of n_i * q_i must stay below 2^64, i.e.
(2^quant_bits - 1) * max_examples * num_hospitals < 2^64, roughly
quant_bits + log2(sum of n_i) < 64. `check_modulus` refuses configs that break it.
"""

from __future__ import annotations

import numpy as np

from .errors import SecAggError

MODULUS_BITS = 64
MAX_QUANT_BITS = 52  # float64 holds every integer below 2^53: quantisation stays exact
_EXACT = np.uint64(1 << 53)
_CHUNK = 1 << 20  # values per step: temporaries stay cache-sized even for 11M-value updates


def _levels(quant_bits: int) -> int:
    return (1 << quant_bits) - 1


def check_params(clip_range: float, quant_bits: int) -> None:
    """Refuse a clip range or bit width that cannot encode anything, naming the config key."""
    if not (isinstance(quant_bits, (int, np.integer)) and 1 <= quant_bits <= MAX_QUANT_BITS):
        raise ValueError(f"strategy.quant_bits: expected an integer in [1, {MAX_QUANT_BITS}], got {quant_bits!r}")
    if not (np.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"strategy.clip_range: expected a finite number > 0, got {clip_range!r}")


def check_modulus(quant_bits: int, max_examples_per_hospital: int, num_hospitals: int) -> None:
    """Refuse settings under which the weighted sum could wrap around 2^64 (silently wrong model)."""
    check_params(1.0, quant_bits)
    if int(max_examples_per_hospital) < 1:
        raise ValueError(f"max_examples_per_hospital: expected at least 1, got {max_examples_per_hospital!r}")
    if int(num_hospitals) < 1:
        raise ValueError(f"federation.num_hospitals: expected at least 1, got {num_hospitals!r}")
    bound = _levels(quant_bits) * int(max_examples_per_hospital) * int(num_hospitals)
    if bound >= 1 << MODULUS_BITS:
        spare = MODULUS_BITS - (int(max_examples_per_hospital) * int(num_hospitals)).bit_length()
        raise ValueError(
            f"strategy.quant_bits: expected at most {max(spare, 0)} so that (2^quant_bits - 1) x "
            f"{max_examples_per_hospital} examples x {num_hospitals} hospitals stays below 2^64, "
            f"got {quant_bits}"
        )


def _quantize_into(x: np.ndarray, out: np.ndarray, clip_range: float, quant_bits: int, weight: int) -> None:
    """out = weight * quantize(x), chunk by chunk: no update-sized float64 temporaries."""
    levels = _levels(quant_bits)
    scale = levels / (2.0 * clip_range)
    for start in range(0, x.size, _CHUNK):
        y = x[start : start + _CHUNK].astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError("update: expected finite values, got NaN or infinity")
        np.clip(y, -clip_range, clip_range, out=y)
        y += clip_range
        y *= scale
        np.rint(y, out=y)
        np.clip(y, 0, levels, out=y)
        q = out[start : start + y.size]
        q[...] = y  # exact: integers below 2^53
        if weight != 1:
            q *= np.uint64(weight)


def quantize(update: np.ndarray, clip_range: float, quant_bits: int) -> np.ndarray:
    """Clip to [-clip_range, clip_range] and map to integers in [0, 2^quant_bits - 1] (uint64)."""
    check_params(clip_range, quant_bits)
    x = np.asarray(update).ravel()
    out = np.empty(x.size, dtype=np.uint64)
    _quantize_into(x, out, clip_range, quant_bits, 1)
    return out


def encode(update: np.ndarray, num_examples: int, clip_range: float, quant_bits: int) -> np.ndarray:
    """n_i * quantize(update), with n_i appended as the last coordinate: length L + 1, uint64."""
    check_params(clip_range, quant_bits)
    n = int(num_examples)
    if n != num_examples or n < 1:
        raise ValueError(f"num_examples: expected an integer >= 1, got {num_examples!r}")
    if _levels(quant_bits) * n >= 1 << MODULUS_BITS:
        raise ValueError(f"strategy.quant_bits: {quant_bits} bits x {n} examples overflows 2^64")
    x = np.asarray(update).ravel()
    out = np.empty(x.size + 1, dtype=np.uint64)
    _quantize_into(x, out[:-1], clip_range, quant_bits, n)
    out[-1] = n
    return out


def check_range(total: np.ndarray, total_weight: int, contributors: int, quant_bits: int) -> None:
    """Refuse an unmasked sum that honest inputs cannot produce: each n_i >= 1, so the total
    weight is at least the number of contributors, and each coordinate sums n_i * q_i with
    0 <= q_i <= 2^quant_bits - 1, so it is at most (2^quant_bits - 1) * total weight.

    A hospital that adds anything else, or a wrong share that slipped through, gives a
    sum that is out of range with overwhelming probability (masks are uniform mod 2^64).
    """
    if not contributors <= int(total_weight) < 1 << MODULUS_BITS:
        raise SecAggError(f"the unmasked total weight {total_weight} is impossible for {contributors} hospitals")
    limit = _levels(quant_bits) * int(total_weight)
    if limit < 1 << MODULUS_BITS and np.asarray(total).size and int(np.asarray(total).max()) > limit:
        raise SecAggError("the unmasked sum is out of range: a hospital added values outside the protocol's range, "
                          "or a share was wrong")


def dequantize_mean(
    total: np.ndarray, total_weight: int, clip_range: float, quant_bits: int, dtype=np.float32
) -> np.ndarray:
    """The weighted mean update from sum_i n_i q_i (uint64, length L) and N = sum_i n_i."""
    check_params(clip_range, quant_bits)
    if int(total_weight) < 1:
        raise ValueError(f"total_weight: expected at least 1, got {total_weight!r}")
    total = np.asarray(total, dtype=np.uint64).ravel()
    n = np.uint64(total_weight)
    scale = 2.0 * clip_range / _levels(quant_bits)
    out = np.empty(total.size, dtype=dtype)
    for start in range(0, total.size, _CHUNK):
        part = total[start : start + _CHUNK]
        if part.size and part.max() < _EXACT:  # float64 holds these sums exactly
            mean = part.astype(np.float64)
            mean /= float(n)
        else:  # quotient and remainder in integers: a float64 of a sum near 2^64 would round
            quotient, remainder = np.divmod(part, n)
            mean = quotient.astype(np.float64)
            mean += remainder.astype(np.float64) / float(n)
        mean *= scale
        mean -= clip_range
        out[start : start + part.size] = mean
    return out


def error_bound(clip_range: float, quant_bits: int) -> float:
    """Largest per-coordinate error of the dequantised mean when no value was clipped."""
    return clip_range / _levels(quant_bits)
