"""Team secrets at rest: AES-256-GCM with the secret's team and name as associated data, so a
ciphertext copied onto another team's or name's row does not decrypt (the database alone, or a
write to it, gives away no value)."""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1:"  # room for a key rotation: a new version names a new key
_NONCE = 12


class SecretUnreadable(Exception):
    """The stored value does not decrypt with this key (another key, or a tampered row)."""


class SecretBox:
    """Team secrets sealed with AES-GCM under the control plane's key, bound to their team and
    name (a sealed value moved to another secret does not open)."""

    def __init__(self, key: bytes) -> None:
        # A wrong key fails at start-up, as AESGCM(key) would; the cipher itself (cryptography's
        # native library, 6 MB of the control plane) is loaded when the first secret is.
        if len(key) not in (16, 24, 32):
            raise ValueError("AESGCM key must be 128, 192, or 256 bits.")
        self._key = key
        self._cipher: AESGCM | None = None

    @property
    def _aead(self) -> AESGCM:
        if self._cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._cipher = AESGCM(self._key)
        return self._cipher

    def seal(self, team: str, name: str, value: str) -> str:
        """The sealed form of ``value`` (versioned, base64)."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode(), _aad(team, name))
        return _VERSION + base64.b64encode(nonce + sealed).decode()

    def open(self, team: str, name: str, ciphertext: str) -> str:
        """The value of a sealed secret; SecretUnreadable when it does not open."""
        if not ciphertext.startswith(_VERSION):
            raise SecretUnreadable(f"secret {team}/{name}: unknown format")
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(ciphertext[len(_VERSION) :], validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(team, name)).decode()
        except (InvalidTag, ValueError) as e:
            raise SecretUnreadable(f"secret {team}/{name} does not decrypt with this key") from e


def _aad(team: str, name: str) -> bytes:
    return f"trainyard-secret\0{team}\0{name}".encode()
