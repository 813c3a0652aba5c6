"""Short-lived read tokens for browsers (pure: no nats, no fastapi).

A browser's `<video src>`, `<img src>` and `EventSource` cannot send an `Authorization`
header. Putting the API key itself in the URL would leak a long-lived secret into
tracing backends (the HTTP span records the full URL), proxies and browser history. So
the page exchanges its key once (`POST /v1/tokens`, header-authenticated) for a token
that

- is read-only: the gateway accepts it only as `?token=` on GET/HEAD of the media and
  events routes, never on uploads, lists or deletes;
- expires (`TOKEN_TTL_S`);
- is bound to one tenant and signed with HMAC-SHA256 under a secret derived from that
  tenant's API keys, so every gateway replica with the same keys verifies it without new
  configuration, and rotating a tenant's key revokes its tokens.

Form: `<tenant>.<expires unix s>.<urlsafe base64 signature>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

TOKEN_TTL_S = 3600
_LABEL = b"vidmesh media token v1\0"


def _secret(keys: dict[str, str], tenant: str) -> bytes | None:
    digests = sorted(hashlib.sha256(key.encode()).digest() for key, owner in keys.items() if owner == tenant)
    if not digests:
        return None
    return hashlib.sha256(_LABEL + b"".join(digests)).digest()


def _sign(secret: bytes, tenant: str, expires: int) -> str:
    mac = hmac.new(secret, f"{tenant}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mint(keys: dict[str, str], tenant: str, now: float | None = None, ttl: int = TOKEN_TTL_S) -> tuple[str, int]:
    """A token for `tenant` and its expiry (unix seconds)."""
    secret = _secret(keys, tenant)
    if secret is None:
        raise KeyError(tenant)
    expires = int(now if now is not None else time.time()) + ttl
    return f"{tenant}.{expires}.{_sign(secret, tenant, expires)}", expires


def verify(keys: dict[str, str], token: str | None, now: float | None = None) -> str | None:
    """The tenant a valid, unexpired token was minted for; None otherwise."""
    if not token or len(token) > 512:
        return None
    parts = token.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    tenant, expires_s, signature = parts
    expires = int(expires_s)
    if expires < (now if now is not None else time.time()):
        return None
    secret = _secret(keys, tenant)
    if secret is None:
        return None
    if not hmac.compare_digest(_sign(secret, tenant, expires), signature):
        return None
    return tenant
