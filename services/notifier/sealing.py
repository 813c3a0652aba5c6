"""Webhook secrets sealed at rest: AES-256-GCM under keys from VIDMESH_WEBHOOK_KEYS (pure).

The notifier must keep each secret to sign with, so it cannot store a hash; it stores
`v1.<key id>.<nonce>.<ciphertext>` instead. The record's `tenant/id` is the associated
data, so a sealed secret copied onto another webhook's record does not open. The first
key seals; every listed key opens, which is how keys rotate (put the new key first, keep
the old one until no record uses it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1"


class SealError(Exception):
    """A sealed secret that cannot be opened (unknown key, tampered, malformed)."""


def new_key() -> str:
    """A fresh key in the form VIDMESH_WEBHOOK_KEYS takes (32 random bytes, base64url)."""
    return _b64(os.urandom(32))


def parse_key(text: str) -> bytes:
    """A 32-byte key from base64url (padding optional); ValueError with the reason."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, not 32 (make one with `vidmesh webhook-key`)")
    return raw


class Keyring:
    def __init__(self, keys: list[str] | tuple[str, ...]):
        if not keys:
            raise ValueError("no webhook keys")
        self._keys: dict[str, AESGCM] = {}
        for text in keys:
            raw = parse_key(text)
            self._keys.setdefault(hashlib.sha256(raw).hexdigest()[:8], AESGCM(raw))
        self._current = next(iter(self._keys))

    def seal(self, secret: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self._current].encrypt(nonce, secret.encode(), context.encode())
        return ".".join((VERSION, self._current, _b64(nonce), _b64(sealed)))

    def open(self, sealed: str, context: str) -> str:
        parts = sealed.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise SealError("not a sealed secret")
        key = self._keys.get(parts[1])
        if key is None:
            raise SealError(f"sealed with key {parts[1]}, which is not in VIDMESH_WEBHOOK_KEYS")
        try:
            return key.decrypt(_unb64(parts[2]), _unb64(parts[3]), context.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SealError("the sealed secret does not open (tampered, or another record's)") from None


@functools.lru_cache(maxsize=4)
def keyring(keys: tuple[str, ...]) -> Keyring:
    """The keyring of the configured keys, built once per distinct configuration."""
    return Keyring(keys)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
