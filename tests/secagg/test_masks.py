"""Masks: a cryptographic PRG that cancels in pairs; masked vectors look uniform whatever the update."""

import os

import numpy as np
import pytest
from scipy import stats

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from src.secagg.keys import generate_keypair, hkdf
from src.secagg.masks import (
    _CHUNK_WORDS,
    add_pairwise,
    add_prg,
    pairwise_seed,
)
from tests.secagg.secagg_round import Federation, reference_quantize

IDS = [2, 3, 5, 7, 11]
L = 20_000


def prg(seed: bytes, num_words: int, label: bytes) -> np.ndarray:
    """Reference: the whole AES-256-CTR keystream under HKDF(seed, label) in one call, as uint64 words."""
    encryptor = Cipher(algorithms.AES(hkdf(seed, label)), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * num_words)), dtype="<u8").astype(np.uint64)


def test_prg_is_deterministic_keyed_and_chunked_consistently():
    seed = os.urandom(32)

    def mask(seed, label, n=10):
        v = np.zeros(n, dtype=np.uint64)
        add_prg(v, seed, label)
        return v

    a = mask(seed, b"x")
    assert np.array_equal(a, mask(seed, b"x"))
    assert not np.array_equal(a, mask(os.urandom(32), b"x"))
    assert not np.array_equal(a, mask(seed, b"another label"))
    v = mask(seed, b"x", _CHUNK_WORDS + 3)
    np.testing.assert_array_equal(v, prg(seed, v.size, b"x"))
    add_prg(v, seed, b"x", sign=-1)
    assert not v.any()


def test_pairwise_masks_cancel_and_are_bound_to_the_round():
    sk_i, pk_i = generate_keypair()
    sk_j, pk_j = generate_keypair()
    seed_i = pairwise_seed(sk_i, pk_j, 4, 10, 2**64 - 1)
    assert seed_i == pairwise_seed(sk_j, pk_i, 4, 2**64 - 1, 10)
    assert seed_i != pairwise_seed(sk_i, pk_j, 5, 10, 2**64 - 1)
    v = np.arange(100, dtype=np.uint64)
    add_pairwise(v, seed_i, 10, 2**64 - 1)
    add_pairwise(v, seed_i, 2**64 - 1, 10)
    np.testing.assert_array_equal(v, np.arange(100, dtype=np.uint64))
    with pytest.raises(ValueError):
        add_pairwise(v, seed_i, 3, 3)


@pytest.fixture(scope="module")
def masked():
    """The masked vector hospital 5 sends for an all-zero update (A) and a ramp (B), in two rounds."""
    rng = np.random.default_rng(0)
    a = np.zeros(L, np.float32)
    b = np.linspace(-1, 1, L, dtype=np.float32)
    out = {}
    for name, update in (("A", a), ("B", b)):
        updates = {i: rng.uniform(-1, 1, L).astype(np.float32) for i in IDS} | {5: update}
        fed = Federation(IDS, L)
        fed.run(updates, {i: 100 for i in IDS})
        out[name] = fed.sent[5]
    return out, b


def uniform_bits(v):
    """Each of the 64 bit positions set about half the time (6 standard deviations)."""
    bits = np.unpackbits(v.view(np.uint8)).reshape(-1, 64).mean(axis=0)
    return np.abs(bits - 0.5).max() < 6 * 0.5 / np.sqrt(v.size)


def uniform_bytes(v):
    counts = np.bincount(v.view(np.uint8), minlength=256)
    return stats.chisquare(counts).pvalue > 1e-6


def test_masked_vectors_look_uniform(masked):
    vectors, b = masked
    for v in vectors.values():
        assert v.dtype == np.uint64 and v.shape == (L + 1,)
        assert uniform_bits(v) and uniform_bytes(v)
    plain = reference_quantize(b, 1.0, 16) * np.uint64(100)  # the test can tell a plain vector
    assert not uniform_bits(plain) and not uniform_bytes(plain)


def test_masked_vectors_carry_no_trace_of_the_update(masked):
    vectors, b = masked
    va, vb = (vectors[k][:-1].astype(np.float64) for k in "AB")
    limit = 6 / np.sqrt(L)
    assert abs(stats.pearsonr(vb, b).statistic) < limit
    assert abs(stats.pearsonr(va, vb).statistic) < limit
    assert stats.ks_2samp(va, vb).pvalue > 1e-6  # the same distribution for update A and update B
    plain = (reference_quantize(b, 1.0, 16) * np.uint64(100)).astype(np.float64)
    assert stats.pearsonr(plain, b).statistic > 0.99  # what masking hides
