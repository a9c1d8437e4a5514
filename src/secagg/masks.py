"""Masks that hide one hospital's vector and cancel in the sum.

Every mask is an AES-256-CTR keystream (a cryptographically secure stream cipher
from `cryptography`; about twice ChaCha20's speed where the CPU has AES-NI) keyed
through HKDF-SHA256 and read as little-endian uint64 words;
numpy adds and subtracts them mod 2^64 by natural wraparound. Expanding a mask is
one call into OpenSSL and one `np.frombuffer`: no Python loop over coordinates.

- self mask: PRG(b), b a fresh 32-byte seed per hospital and round;
- pairwise mask between i and j: PRG(HKDF(X25519(s_sk_i, s_pk_j),
  info = label || round || min(i, j) || max(i, j))), added by the smaller id and
  subtracted by the larger, so the pair cancels when both are summed.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .keys import exchange, hkdf, u64

_COUNTER = bytes(16)  # every PRG key is used once, so the counter may start at zero
_WORD = np.dtype("<u8")
_CHUNK_WORDS = 1 << 20


def add_prg(vector: np.ndarray, seed: bytes, label: bytes, sign: int = 1) -> None:
    """In place, mod 2^64: vector += (or -= for sign < 0) the AES-256-CTR keystream under
    HKDF(seed, label), read as uint64 words.

    The keystream is expanded in 8 MB chunks into one reused buffer: a mask of 11M
    words then costs no 88 MB allocation (whose page faults cost as much as AES).
    """
    if vector.dtype != np.uint64 or vector.ndim != 1 or not vector.flags.c_contiguous:
        raise ValueError("vector: expected a contiguous 1-d uint64 array")
    encryptor = Cipher(algorithms.AES(hkdf(seed, label)), modes.CTR(_COUNTER)).encryptor()
    words = min(vector.size, _CHUNK_WORDS)
    zeros = bytes(8 * words)
    buf = bytearray(8 * words + 16)  # update_into wants room for one block more
    for start in range(0, vector.size, _CHUNK_WORDS):
        n = min(_CHUNK_WORDS, vector.size - start)
        encryptor.update_into(zeros[: 8 * n] if n < words else zeros, buf)
        mask = np.frombuffer(buf, dtype=_WORD, count=n)
        if sign > 0:
            np.add(vector[start : start + n], mask, out=vector[start : start + n], casting="unsafe")
        else:
            np.subtract(vector[start : start + n], mask, out=vector[start : start + n], casting="unsafe")


def add_self_mask(vector: np.ndarray, b: bytes, sign: int = 1) -> None:
    """vector +=  PRG(b) (sign -1: the server removing it once it has rebuilt b of a survivor)."""
    add_prg(vector, b, b"fedcxr/secagg/self", sign)


def pairwise_seed(s_sk: bytes, peer_s_pk: bytes, server_round: int, node: int, peer: int) -> bytes:
    """Seed shared by `node` and `peer` (either side computes it), bound to the round and the pair."""
    lo, hi = sorted((node, peer))
    info = b"fedcxr/secagg/pair" + u64(server_round) + u64(lo) + u64(hi)
    return hkdf(exchange(s_sk, peer_s_pk), info)


def add_pairwise(vector: np.ndarray, seed: bytes, node: int, peer: int, sign: int = 1) -> None:
    """In place: vector += mask if node < peer else vector -= mask (`sign=-1` undoes it)."""
    if node == peer:
        raise ValueError("a hospital has no pairwise mask with itself")
    add_prg(vector, seed, b"fedcxr/secagg/pair", 1 if (node < peer) == (sign > 0) else -1)
