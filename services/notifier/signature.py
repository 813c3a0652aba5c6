"""Webhook signatures: `Vidmesh-Signature: t=<unix>,v1=<hex>` over `"<t>.<raw body>"`.

The notifier signs every delivery attempt with the webhook's secret (HMAC-SHA256); a
receiver written in Python verifies with `verify()` on the raw request body, before parsing
it. The timestamp bounds replays: a signature older than `tolerance_s` is refused, so keep
the receiver's clock in sync. Several `v1=` entries may appear (secret rotation); any match
is enough. This module imports only the standard library, so receivers can copy it.

    from services.notifier.signature import verify, SignatureError
    try:
        verify(secret, request_body_bytes, request.headers["Vidmesh-Signature"])
    except SignatureError:
        return 400
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Vidmesh-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale or does not match."""


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body` signed now (or at `timestamp`)."""
    t = int(time.time() if timestamp is None else timestamp)
    return f"t={t},{SCHEME}={_digest(secret, t, body)}"


def parse(header: str) -> tuple[int, list[str]]:
    """(timestamp, [v1 signatures]) from a header value; SignatureError if malformed."""
    timestamp, signatures = None, []
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == SCHEME and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError(f"malformed {HEADER} header: expected t=<unix>,{SCHEME}=<hex>")
    return timestamp, signatures


def verify(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a delivery; returns its signing timestamp or raises SignatureError.

    `body` must be the raw bytes received (re-serialising parsed JSON changes them).
    """
    if not header:
        raise SignatureError(f"no {HEADER} header")
    timestamp, signatures = parse(header)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp {timestamp} is outside the {tolerance_s:g}s tolerance")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("signature does not match the body and secret")
    return timestamp
