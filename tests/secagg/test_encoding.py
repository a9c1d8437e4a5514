"""Clip, quantise, weight, dequantise: the documented error bound, and no wraparound of 2^64."""

import numpy as np
import pytest

from src.secagg import (
    check_modulus,
    dequantize_mean,
    encode,
    error_bound,
    quantize,
)
from src.secagg.encoding import _CHUNK
from tests.secagg.secagg_round import Federation, random_inputs, reference_quantize


def test_quantize_matches_the_plain_formula_across_chunks():
    x = np.random.default_rng(0).normal(0, 0.05, _CHUNK + 7).astype(np.float32)
    np.testing.assert_array_equal(quantize(x, 0.1, 12), reference_quantize(x, 0.1, 12))
    q = quantize(np.array([-5.0, -0.1, 0.0, 0.1, 5.0]), 0.1, 4)
    assert q.tolist() == [0, 0, 8, 15, 15]  # 7.5 rounds to even; beyond the clip range -> the ends


def test_encode_weights_and_appends_the_weight():
    x = np.linspace(-1, 1, 9, dtype=np.float32).reshape(3, 3)
    v = encode(x, 37, 1.0, 8)
    assert v.dtype == np.uint64 and v.shape == (10,)
    np.testing.assert_array_equal(v[:-1], reference_quantize(x.ravel(), 1.0, 8) * 37)
    assert v[-1] == 37


@pytest.mark.parametrize("bad, match", [
    ({"update": np.array([0.0, np.nan])}, "finite"),
    ({"update": np.array([np.inf])}, "finite"),
    ({"num_examples": 0}, "num_examples"),
    ({"num_examples": 2.5}, "num_examples"),
    ({"clip_range": 0.0}, "strategy.clip_range"),
    ({"quant_bits": 0}, "strategy.quant_bits"),
    ({"quant_bits": 60}, "strategy.quant_bits"),
])
def test_encode_refuses_bad_input(bad, match):
    args = {"update": np.zeros(4), "num_examples": 3, "clip_range": 1.0, "quant_bits": 16} | bad
    with pytest.raises(ValueError, match=match):
        encode(**args)


@pytest.mark.parametrize("bits", [4, 8, 16, 24])
def test_secure_mean_is_within_the_documented_bound(bits):
    ids = [11, 22, 33, 44, 55]
    length, clip = 2000, 0.05
    updates, weights = random_inputs(ids, length, seed=bits, clip_range=clip)
    updates[11][:3] = [clip, -clip, 0.0]  # the ends of the range are exact
    total, weight = Federation(ids, length, clip_range=clip, quant_bits=bits).run(updates, weights)
    mean = dequantize_mean(total, weight, clip, bits)
    exact = sum(weights[i] * updates[i].astype(np.float64) for i in ids) / sum(weights.values())
    assert mean.dtype == np.float32
    err = np.abs(mean - exact).max()
    assert err <= error_bound(clip, bits) + 4 * np.finfo(np.float32).eps * clip
    if bits == 4:  # the bound is not vacuous: coarse grids do come close to it
        assert err > 0.3 * error_bound(clip, bits)


def test_clipping_is_applied_before_the_bound():
    clip, bits = 0.1, 10
    x = {1: np.array([0.5, -0.5, 0.05], np.float32), 2: np.array([0.0, 0.0, 0.05], np.float32)}
    n = {1: 3, 2: 1}
    total, weight = Federation([1, 2], 3, clip_range=clip, quant_bits=bits).run(x, n)
    mean = dequantize_mean(total, weight, clip, bits)
    clipped = (3 * np.clip(x[1], -clip, clip) + np.clip(x[2], -clip, clip)) / 4
    assert np.abs(mean - clipped).max() <= error_bound(clip, bits) + 1e-7


def test_dequantize_is_exact_for_sums_near_2_to_the_64():
    bits, n = 32, 2**31  # sum of n_i q_i up to (2^32 - 1) 2^31 ~ 2^63: too big for float64 to hold exactly
    q = np.array([0, 2**32 - 1, 2**31], dtype=np.uint64)
    mean = dequantize_mean(q * np.uint64(n), n, 1.0, bits, dtype=np.float64)
    np.testing.assert_allclose(mean, q.astype(np.float64) * 2 / (2**32 - 1) - 1, atol=1e-15)


def test_modulus_check():
    check_modulus(16, 1_000_000, 100)  # 16 + log2(1e8) = 42.6 bits
    check_modulus(32, 2**16, 2**16)  # (2^32 - 1) 2^32 < 2^64, just
    with pytest.raises(ValueError, match=r"strategy.quant_bits: expected at most 31 .* got 32"):
        check_modulus(32, 2**16 + 1, 2**16)
    with pytest.raises(ValueError, match="strategy.quant_bits"):
        check_modulus(40, 1_000_000, 100)
    with pytest.raises(ValueError, match="strategy.quant_bits"):
        check_modulus(0, 10, 10)
