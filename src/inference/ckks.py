"""A linear layer evaluated on CKKS ciphertexts (Microsoft SEAL through TenSEAL's `sealapi`).

The hospital packs each image's feature vector x (d values, padded to D = 2^k) once per
class into one block of C·D slots, several images per ciphertext. The service, holding
W (C × d) and b in the clear, computes in three steps and a depth of two:

    y = ct ⊙ [W_0 | W_1 | … ]           one plaintext multiplication: slot-wise products
    y += rot(y, D/2) + … + rot(y, 1)    log2(D) rotations: the first slot of each class block
                                         now holds W_c · x (the others hold partial sums)
    y = y ⊙ e + b                        a 0/1 mask keeps only those slots, then the bias

The mask matters: without it the hospital, which holds the secret key, would decrypt the
partial sums and with them the individual products W_cj·x_j, i.e. the weights (TenSEAL's
own `dot`/`mm` leave such partial sums in the other slots). Only the Galois keys of the
log2(D) rotations are needed; no relinearisation keys, no ciphertext-ciphertext product.

TenSEAL's high-level CKKSVector offers no rotation by a chosen step and no Galois keys
for chosen steps, hence `sealapi` (SEAL's own API); it saves and loads objects only
through file paths, hence the temporary files in `_saved`/`_loaded`.

Parameters: N = 8192, coefficient modulus 60+40+40+60 = 200 bits (≤ 218, SEAL's bound
for 128-bit security at this N, enforced by `SEALContext(…, TC128)`), scale 2^40.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal
import zstandard

POLY_MODULUS_DEGREE = 8192
COEFF_MODULUS_BITS = (60, 40, 40, 60)
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2
MAX_KEY_BYTES = 32 << 20  # a hospital's Galois keys: 8.4 MB as SEAL compresses them, 9.5 MB inflated
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") else None


class CiphertextError(ValueError):
    """Bytes that are not a ciphertext this service can use (malformed, wrong parameters, wrong scale)."""


def parameters() -> seal.EncryptionParameters:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MODULUS_BITS)))
    return parms


def context() -> seal.SEALContext:
    return seal.SEALContext(parameters(), True, seal.SEC_LEVEL_TYPE.TC128)


@dataclass(frozen=True)
class Layout:
    """Where each image and class sit in the slots: blocks of `padded` slots, one per class."""

    features: int
    classes: int

    @property
    def padded(self) -> int:
        return 1 << max(0, math.ceil(math.log2(self.features)))

    @property
    def block(self) -> int:
        return self.classes * self.padded

    @property
    def images_per_ciphertext(self) -> int:
        return SLOTS // self.block

    @property
    def rotations(self) -> list[int]:
        return [self.padded >> (i + 1) for i in range(int(math.log2(self.padded)))]

    def galois_elements(self) -> list[int]:
        """SEAL's Galois element of a left rotation by `step` slots: 3^step mod 2N."""
        return [pow(3, step, 2 * POLY_MODULUS_DEGREE) for step in self.rotations]

    def pack(self, features: np.ndarray) -> np.ndarray:
        """(n ≤ images_per_ciphertext, d) feature rows -> the slot vector the hospital encrypts."""
        slots = np.zeros(SLOTS)
        for i, row in enumerate(features):
            for c in range(self.classes):
                start = i * self.block + c * self.padded
                slots[start:start + self.features] = row
        return slots

    def outputs(self, n: int) -> np.ndarray:
        """The slot of each (image, class) score: shape (n, classes)."""
        return np.arange(n)[:, None] * self.block + np.arange(self.classes)[None, :] * self.padded

    def weights(self, weight: np.ndarray) -> np.ndarray:
        slots = np.zeros(SLOTS)
        for i in range(self.images_per_ciphertext):
            for c in range(self.classes):
                start = i * self.block + c * self.padded
                slots[start:start + self.features] = weight[c]
        return slots


def _saved(obj) -> bytes:
    with tempfile.NamedTemporaryFile(dir=_TMP) as f:
        obj.save(f.name)
        return Path(f.name).read_bytes()


def _loaded(obj, ctx, data: bytes):
    with tempfile.NamedTemporaryFile(dir=_TMP) as f:
        f.write(data)
        f.flush()
        obj.load(ctx, f.name)
    return obj


def uncompressed(data: bytes, cap: int) -> bytes:
    """`data`, a serialised SEAL object, as SEAL would read it but stored without compression; refused
    (CiphertextError) if its content inflates past `cap` bytes. SEAL inflates a compressed object whole
    before anything can be checked, and a few megabytes of zstd can hold gigabytes of repeated keys.
    The objects nested inside (each key of a key set, its polynomials) carry SEAL headers of their own,
    whose compression SEAL honours too: one that is compressed is refused (SEAL saves them without).
    The header (SEAL 4): magic A15E, header size 16, version, compression mode (0 none, 1 zlib, 2 zstd),
    2 reserved bytes, then the object's size, header included, as a little-endian uint64."""
    if len(data) < 16 or data[:3] != b"\x5e\xa1\x10":
        raise CiphertextError("not a SEAL object (no SEAL header)")
    mode, size = data[5], struct.unpack_from("<Q", data, 8)[0]
    body = data[16:size]
    try:
        if mode == 0:
            members = body
        elif mode == 1:
            members = zlib.decompressobj().decompress(body, cap + 1)
        elif mode == 2:
            members = zstandard.ZstdDecompressor().stream_reader(body).read(cap + 1)
        else:
            raise CiphertextError(f"unknown SEAL compression mode {mode}")
    except (zlib.error, zstandard.ZstdError) as e:
        raise CiphertextError(f"the SEAL object does not decompress: {e}") from None
    if len(members) > cap:
        raise CiphertextError(f"the SEAL object inflates past {cap} bytes")
    at = members.find(b"\x5e\xa1\x10")
    while at >= 0:  # a nested header: magic, size 16, this version, reserved bytes zero (random data: ~2^-48)
        nested = members[at:at + 8]
        if nested[3:4] == data[3:4] and nested[6:8] == b"\0\0" and nested[5:6] != b"\0":
            raise CiphertextError("a SEAL object nested in the upload is compressed (its inflation is unbounded)")
        at = members.find(b"\x5e\xa1\x10", at + 1)
    return data[:5] + b"\x00" + data[6:8] + struct.pack("<Q", 16 + len(members)) + members


def key_id(galois_keys: bytes) -> str:
    return hashlib.sha256(galois_keys).hexdigest()[:32]


class HospitalKeys:
    """The hospital's side: secret key (never leaves), encryption, decryption."""

    def __init__(self, layout: Layout):
        self.layout, self.ctx = layout, context()
        keygen = seal.KeyGenerator(self.ctx)
        public = seal.PublicKey()
        keygen.create_public_key(public)
        galois = seal.GaloisKeys()
        keygen.create_galois_keys(layout.galois_elements(), galois)
        self.galois_keys = _saved(galois)  # evaluation keys: all the service needs, sent once
        self._encoder = seal.CKKSEncoder(self.ctx)
        self._encryptor = seal.Encryptor(self.ctx, public)
        self._decryptor = seal.Decryptor(self.ctx, keygen.secret_key())

    def encrypt(self, features: np.ndarray) -> bytes:
        plain = seal.Plaintext()
        self._encoder.encode(self.layout.pack(features).tolist(), 2.0**SCALE_BITS, plain)
        cipher = seal.Ciphertext()
        self._encryptor.encrypt(plain, cipher)
        return _saved(cipher)

    def decrypt(self, data: bytes, n: int) -> np.ndarray:
        """The (n, classes) scores of the service's answer. They stay at the hospital: decrypted CKKS
        values must never go back to anyone holding the ciphertext (IND-CPA-D, Li & Micciancio 2021)."""
        plain = seal.Plaintext()
        self._decryptor.decrypt(_loaded(seal.Ciphertext(), self.ctx, data), plain)
        return np.asarray(self._encoder.decode_double(plain))[self.layout.outputs(n)]


class EncryptedLinear:
    """The service's side: W·x + b on ciphertexts, with the plaintext weights only it holds."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.layout = Layout(features=weight.shape[1], classes=weight.shape[0])
        self.ctx = context()
        self._encoder, self._evaluator = seal.CKKSEncoder(self.ctx), seal.Evaluator(self.ctx)
        self._weights = self.layout.weights(np.asarray(weight, dtype=np.float64)).tolist()
        self._bias = np.asarray(bias, dtype=np.float64)

    def load_keys(self, data: bytes) -> seal.GaloisKeys:
        """The hospital's Galois keys, checked: they must load for these parameters and hold every rotation."""
        data = uncompressed(data, MAX_KEY_BYTES)
        try:
            keys = _loaded(seal.GaloisKeys(), self.ctx, data)
        except (RuntimeError, ValueError, OSError) as e:
            raise CiphertextError(f"not Galois keys for CKKS N={POLY_MODULUS_DEGREE}, "
                                  f"coefficient modulus {'+'.join(map(str, COEFF_MODULUS_BITS))} bits: {e}") from None
        missing = [step for step, elt in zip(self.layout.rotations, self.layout.galois_elements())
                   if not keys.has_key(elt)]
        if missing:
            raise CiphertextError(f"the Galois keys lack the rotations by {missing} slots")
        return keys

    def load_ciphertext(self, data: bytes) -> seal.Ciphertext:
        try:
            cipher = _loaded(seal.Ciphertext(), self.ctx, data)
        except (RuntimeError, ValueError, OSError) as e:
            raise CiphertextError(f"not a CKKS ciphertext for these parameters: {e}") from None
        if cipher.size() != 2 or cipher.parms_id() != self.ctx.first_parms_id():
            raise CiphertextError("expected a fresh ciphertext (2 polynomials, full coefficient modulus)")
        if not (math.isfinite(cipher.scale) and cipher.scale > 0) or abs(math.log2(cipher.scale) - SCALE_BITS) > 1e-6:
            raise CiphertextError(f"expected scale 2^{SCALE_BITS}, got 2^{math.log2(cipher.scale):.3f}")
        if cipher.is_transparent():
            raise CiphertextError("a transparent ciphertext (it encrypts nothing)")
        if not cipher.is_ntt_form():
            raise CiphertextError("a ciphertext not in NTT form (SEAL's CKKS ciphertexts always are)")
        return cipher

    def __call__(self, cipher: seal.Ciphertext, keys: seal.GaloisKeys, images: int) -> bytes:
        """The scores of the first `images` images packed in `cipher`: the other blocks are masked to zero,
        so an answer holds no more scores than were asked for (and counted). CiphertextError when SEAL
        refuses the ciphertext or keys (crafted objects that passed the loading checks)."""
        try:
            return self._evaluate(cipher, keys, images)
        except (RuntimeError, ValueError) as e:
            raise CiphertextError(f"cannot evaluate on this ciphertext with these keys: {e}") from None

    def _evaluate(self, cipher: seal.Ciphertext, keys: seal.GaloisKeys, images: int) -> bytes:
        outputs = self.layout.outputs(images)
        mask, biases = np.zeros(SLOTS), np.zeros(SLOTS)
        mask[outputs], biases[outputs] = 1.0, self._bias
        ev, enc = self._evaluator, self._encoder
        plain = seal.Plaintext()
        enc.encode(self._weights, cipher.parms_id(), cipher.scale, plain)
        y = seal.Ciphertext()
        ev.multiply_plain(cipher, plain, y)
        ev.rescale_to_next_inplace(y)
        for step in self.layout.rotations:
            rotated = seal.Ciphertext()
            ev.rotate_vector(y, step, keys, rotated)
            ev.add_inplace(y, rotated)
        enc.encode(mask.tolist(), y.parms_id(), 2.0**SCALE_BITS, plain)
        ev.multiply_plain_inplace(y, plain)
        ev.rescale_to_next_inplace(y)
        enc.encode(biases.tolist(), y.parms_id(), y.scale, plain)
        ev.add_plain_inplace(y, plain)
        return _saved(y)
