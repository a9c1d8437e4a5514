"""The encrypted linear layer: it agrees with the plaintext one, reveals only the scores, refuses bad bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard

from src.inference.ckks import (
    MAX_KEY_BYTES,
    SLOTS,
    CiphertextError,
    EncryptedLinear,
    HospitalKeys,
    Layout,
    _loaded,
    _saved,
    uncompressed,
)


@pytest.fixture(scope="module")
def head():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 40)) * 0.5, rng.normal(size=3)


@pytest.fixture(scope="module")
def parties(head):
    service = EncryptedLinear(*head)
    return service, HospitalKeys(service.layout)


def test_layout_packs_images_in_class_blocks():
    layout = Layout(features=40, classes=3)
    assert (layout.padded, layout.block, layout.images_per_ciphertext) == (64, 192, SLOTS // 192)
    assert layout.rotations == [32, 16, 8, 4, 2, 1]
    slots = layout.pack(np.arange(80.0).reshape(2, 40) + 1)
    assert np.array_equal(slots[64:104], np.arange(40.0) + 1) and slots[104:128].sum() == 0
    assert np.array_equal(slots[192:232], np.arange(40.0, 80.0) + 1)


def test_encrypted_scores_equal_the_plaintext_head(head, parties):
    service, hospital = parties
    x = np.random.default_rng(1).normal(size=(service.layout.images_per_ciphertext, 40))
    answer = service(service.load_ciphertext(hospital.encrypt(x)), service.load_keys(hospital.galois_keys), len(x))
    assert np.abs(hospital.decrypt(answer, len(x)) - (x @ head[0].T + head[1])).max() < 1e-4


def test_the_answer_holds_nothing_but_the_scores_asked_for(head, parties):
    """The hospital holds the secret key: every other slot must decrypt to (noise around) zero,
    not to the partial sums that would give away the weights, nor to the scores of images packed
    beyond the number it declared (the service's rate limit counts that number)."""
    service, hospital = parties
    x = np.random.default_rng(2).normal(size=(service.layout.images_per_ciphertext, 40))
    answer = service(service.load_ciphertext(hospital.encrypt(x)), service.load_keys(hospital.galois_keys), 3)
    plain = seal.Plaintext()
    hospital._decryptor.decrypt(_loaded(seal.Ciphertext(), hospital.ctx, answer), plain)
    slots = np.asarray(hospital._encoder.decode_double(plain))
    asked = service.layout.outputs(3)
    assert np.abs(slots[asked] - (x[:3] @ head[0].T + head[1])).max() < 1e-4
    assert np.abs(np.delete(slots, asked.ravel())).max() < 1e-5


def test_malformed_truncated_and_foreign_bytes_are_refused(parties):
    service, hospital = parties
    good = hospital.encrypt(np.zeros((1, 40)) + 0.5)
    for bad in (b"", b"\x00" * 100, good[: len(good) // 2], good[:16] + b"\x01" * 64):
        with pytest.raises(CiphertextError):
            service.load_ciphertext(bad)
    with pytest.raises(CiphertextError):
        service.load_keys(good)  # a ciphertext is not a key set


def test_a_ciphertext_of_another_scale_or_level_is_refused(parties):
    service, hospital = parties
    plain, cipher = seal.Plaintext(), seal.Ciphertext()
    hospital._encoder.encode([0.5] * 10, 2.0**30, plain)
    hospital._encryptor.encrypt(plain, cipher)
    with pytest.raises(CiphertextError, match="scale"):
        service.load_ciphertext(_saved(cipher))
    hospital._encoder.encode([0.5] * 10, 2.0**40, plain)
    hospital._encryptor.encrypt(plain, cipher)
    seal.Evaluator(hospital.ctx).mod_switch_to_next_inplace(cipher)
    with pytest.raises(CiphertextError, match="fresh"):
        service.load_ciphertext(_saved(cipher))


def test_crafted_objects_that_load_are_refused_rather_than_crash_the_service(parties):
    service, hospital = parties
    cipher = _loaded(seal.Ciphertext(), hospital.ctx, hospital.encrypt(np.zeros((1, 40))))
    cipher.scale = float("nan")  # SEAL loads it; encoding at that scale would raise
    with pytest.raises(CiphertextError, match="scale"):
        service.load_ciphertext(_saved(cipher))
    good = service.load_ciphertext(hospital.encrypt(np.zeros((1, 40))))
    with pytest.raises(CiphertextError, match="cannot evaluate"):  # keys SEAL cannot rotate with
        service(good, seal.GaloisKeys(), 1)


def test_a_key_upload_that_would_inflate_past_the_cap_is_refused_before_seal_loads_it(parties):
    """A few megabytes of zstd can hold gigabytes of repeated keys, and SEAL inflates an object whole."""
    service, hospital = parties
    keys = hospital.galois_keys
    assert keys[5] == 2  # SEAL compresses with zstd
    members = zstandard.ZstdDecompressor().stream_reader(keys[16:]).read()
    body = zstandard.ZstdCompressor(level=3).compress(members + bytes(MAX_KEY_BYTES))
    bomb = keys[:8] + struct.pack("<Q", 16 + len(body)) + body
    assert len(bomb) < MAX_KEY_BYTES  # within the upload cap, yet 42 MiB of content
    with pytest.raises(CiphertextError, match="inflates past"):
        service.load_keys(bomb)
    plain = uncompressed(keys, MAX_KEY_BYTES)
    assert plain[5] == 0 and len(plain) == 16 + len(members)
    service.load_keys(plain)  # the same keys, stored without compression
    with pytest.raises(CiphertextError, match="no SEAL header"):
        service.load_keys(b"\x00" * 64)
    nested = bytearray(plain)  # the first key inside, its own header now saying zstd: SEAL would inflate it unbounded
    first = plain.find(b"\x5e\xa1\x10", 16)
    assert first > 0 and nested[first + 5] == 0
    nested[first + 5] = 2
    with pytest.raises(CiphertextError, match="nested in the upload is compressed"):
        service.load_keys(bytes(nested))


def test_keys_without_the_needed_rotations_are_refused(parties):
    service, hospital = parties
    keygen = seal.KeyGenerator(hospital.ctx)
    partial = seal.GaloisKeys()
    keygen.create_galois_keys(Layout(features=8, classes=3).galois_elements(), partial)  # rotations 4, 2, 1
    with pytest.raises(CiphertextError, match=r"lack the rotations by \[32, 16, 8\]"):
        service.load_keys(_saved(partial))
