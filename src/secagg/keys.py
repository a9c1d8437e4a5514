"""Key agreement, share encryption and secret sharing for secure aggregation.

- X25519 (`cryptography`): fresh key pairs per round; c-keys encrypt shares,
  s-keys make the pairwise masks.
- Shares travel through the server encrypted with ChaCha20-Poly1305 under
  HKDF-SHA256(X25519(c_sk_src, c_pk_dst), info = label || round || src || dst), with
  (round, src, dst) also as associated data: the server can neither read a share
  nor move it to another hospital or round without failing authentication.
- Shamir t-of-n sharing is Flower's (`flwr.common.secure_aggregation.crypto.shamir`).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

from .errors import SecAggError

KEY_BYTES = 32
_NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw


def u64(value: int) -> bytes:
    """8 bytes, big-endian: how node ids (Flower node ids, < 2^64) and rounds enter keys and AAD."""
    if not 0 <= int(value) < 1 << 64:
        raise ValueError(f"expected an integer in [0, 2^64), got {value!r}")
    return int(value).to_bytes(8, "big")


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes: (private 32 bytes, public 32 bytes)."""
    sk = X25519PrivateKey.generate()
    return (
        sk.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
        sk.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
    )


def public_key_of(sk: bytes) -> bytes:
    """The public key that belongs to a raw private key (lets the server check a reconstructed key)."""
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def exchange(sk: bytes, peer_pk: bytes) -> bytes:
    """X25519 shared secret; a malformed or low-order public key is a protocol error."""
    try:
        return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(peer_pk))
    except ValueError as err:
        raise SecAggError(f"key agreement failed: {err}") from None


def hkdf(material: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 without salt: turns a seed or a Diffie-Hellman secret into a uniform 32-byte key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def _share_key(c_sk: bytes, peer_c_pk: bytes, server_round: int, src: int, dst: int) -> tuple[bytes, bytes]:
    aad = u64(server_round) + u64(src) + u64(dst)
    return hkdf(exchange(c_sk, peer_c_pk), b"fedcxr/secagg/share" + aad), aad


def encrypt_shares(
    c_sk: bytes, peer_c_pk: bytes, server_round: int, src: int, dst: int, b_share: bytes, sk_share: bytes
) -> bytes:
    """nonce || ChaCha20-Poly1305(len(b_share) (2 bytes) || b_share || sk_share), for `dst` only."""
    key, aad = _share_key(c_sk, peer_c_pk, server_round, src, dst)
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = len(b_share).to_bytes(2, "big") + b_share + sk_share
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt_shares(
    c_sk: bytes, peer_c_pk: bytes, server_round: int, src: int, dst: int, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """(b_share, sk_share) sent by `src` to `dst`; SecAggError if it was altered or misrouted."""
    key, aad = _share_key(c_sk, peer_c_pk, server_round, src, dst)
    if not isinstance(ciphertext, (bytes, bytearray)) or len(ciphertext) < _NONCE_BYTES + 16 + 2:
        raise SecAggError("share ciphertext too short")
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(ciphertext[:_NONCE_BYTES], bytes(ciphertext[_NONCE_BYTES:]), aad)
    except InvalidTag:
        raise SecAggError("share ciphertext failed authentication (altered, or not for this round/pair)") from None
    n = int.from_bytes(plaintext[:2], "big")
    if len(plaintext) < 2 + n:
        raise SecAggError("share plaintext malformed")
    return plaintext[2 : 2 + n], plaintext[2 + n :]


def split_secret(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """Shamir: `num` shares (share k carries index k + 1), any `threshold` of which rebuild `secret`."""
    if not 1 <= threshold <= num:
        raise ValueError(f"threshold: expected 1 <= threshold <= {num}, got {threshold}")
    return create_shares(secret, threshold, num)


def combine_secret(shares: list[bytes]) -> bytes:
    """Shamir reconstruction; the caller must pass at least `threshold` shares (fewer give garbage)."""
    try:
        return combine_shares(list(shares))
    except ValueError as err:
        raise SecAggError(f"secret reconstruction failed: {err}") from None
