"""Who a hospital is: a long-term Ed25519 identity key, checked against the consortium's roster.

A server that relays public keys could otherwise substitute its own (key
substitution: it invents neighbours and decrypts the shares sent to them), replay
keys of an earlier round or run, or tell hospitals different thresholds. So every
hospital signs what it advertises for a round, and every neighbour verifies the
signature against the roster, the hospitals' identity public keys distributed out of
band (by the consortium, never by the server). The same keys sign the survivor list
of Bonawitz et al.'s consistency check, which exposes a server that tells hospitals
different lists.

Signed messages are domain-separated and length-prefixed:

    keys:      "fedcxr/secagg/keys"      || run || round || node || threshold || name || c_pk || s_pk || commitment
    survivors: "fedcxr/secagg/survivors" || run || round || node || graph digest || c_pk || s_pk || sorted survivor ids

(integers as 8 bytes big-endian, `name` as 2-byte length || UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SecAggError
from .keys import KEY_BYTES, u64

SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw


def _name(name: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) < 1 << 16:
        raise ValueError(f"hospital name {name!r}: expected 1 to 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def commitment(b: bytes, server_round: int, node: int) -> bytes:
    """SHA-256 commitment to a self-mask seed b (32 random bytes): lets the server check a rebuilt b."""
    return hashlib.sha256(b"fedcxr/secagg/commit" + u64(server_round) + u64(node) + b).digest()


@dataclass(frozen=True)
class RoundKeys:
    """What a hospital advertises for one round, signed with its identity key."""

    name: str
    c_pk: bytes
    s_pk: bytes
    commitment: bytes
    signature: bytes

    def message(self, run_id: int, server_round: int, node: int, threshold: int) -> bytes:
        return (b"fedcxr/secagg/keys" + u64(run_id) + u64(server_round) + u64(node) + u64(threshold)
                + _name(self.name) + self.c_pk + self.s_pk + self.commitment)

    def well_formed(self) -> bool:
        return (isinstance(self.name, str) and bool(self.name)
                and all(isinstance(k, bytes) and len(k) == KEY_BYTES for k in (self.c_pk, self.s_pk, self.commitment))
                and isinstance(self.signature, bytes) and len(self.signature) == SIGNATURE_BYTES)


def survivors_message(run_id: int, server_round: int, node: int, survivors, graph: bytes,
                      keys: tuple[bytes, bytes]) -> bytes:
    """What a survivor signs: the list, the digest of the graph it was shown (GraphView.digest) and its
    own round keys (c_pk, s_pk), so that a signature counts only with the neighbours holding that
    session's shares. (A hospital masks in one session per round of a run: src/client/secure_aggregation.py.)"""
    return b"fedcxr/secagg/survivors" + u64(run_id) + u64(server_round) + u64(node) + graph + b"".join(
        keys) + b"".join(u64(s) for s in sorted(survivors))


class Identity:
    """A hospital's signing key, its name, and the roster it checks its neighbours against."""

    def __init__(self, name: str, private_key: bytes, roster: dict[str, bytes]):
        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.roster = dict(roster)
        own = self._key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
        if self.roster.get(name) != own:
            raise SecAggError(f"{name}: its identity key is not the one the consortium roster holds for it")

    @classmethod
    def load(cls, name: str, key_file: Path, roster_file: Path) -> Identity:
        """The hospital's PEM identity key and the roster (JSON {hospital: base64 raw public key})."""
        try:
            roster = {str(k): base64.b64decode(v, validate=True)
                      for k, v in json.loads(Path(roster_file).read_text()).items()}
            return cls.from_pem(name, Path(key_file).read_bytes(), roster)
        except (OSError, ValueError, TypeError) as e:
            raise SecAggError(f"{name}: cannot read its identity key {key_file} or the roster {roster_file} ({e})") \
                from None

    @classmethod
    def from_pem(cls, name: str, pem: bytes, roster: dict[str, bytes]) -> Identity:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("expected an Ed25519 private key")
        return cls(name, key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
                   roster)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verify(self, name: str, signature: bytes, message: bytes) -> bool:
        """Whether `name` is on the roster and signed `message`."""
        public = self.roster.get(name)
        if public is None or not isinstance(signature, bytes):
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def new_identity_key() -> tuple[bytes, bytes]:
    """(PEM private key, raw 32-byte public key) of a fresh Ed25519 identity."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def consortium(names) -> dict[str, Identity]:
    """Fresh identities for `names`, each holding the roster of all: hospitals of one process (tests)."""
    keys = {name: new_identity_key() for name in names}
    roster = {name: public for name, (_, public) in keys.items()}
    return {name: Identity.from_pem(name, pem, roster) for name, (pem, _) in keys.items()}


def write_roster(path: Path, public_keys: dict[str, bytes]) -> None:
    Path(path).write_text(json.dumps({name: base64.b64encode(pk).decode() for name, pk in sorted(public_keys.items())},
                                     indent=1))
