"""Idempotent uploads: an `Idempotency-Key` maps to the first upload's video id for a day.

The claim is a KV create (compare-and-set on "absent"), so two concurrent requests with the
same key cannot both start a video: the loser waits for the winner's outcome. A winner
that fails releases the key, and a later retry starts afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from shared import topology

MAX_KEY_LENGTH = 255


class Claim(msgspec.Struct, frozen=True):
    video_id: str
    state: str  # uploading | accepted


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Claim)


class StillUploading(Exception):
    """The first request with this key is still streaming or being probed."""


def _kv_key(tenant: str, key: str) -> str:
    # hashed: the client's key may hold any characters, KV keys may not
    return f"{tenant}.{hashlib.sha256(key.encode()).hexdigest()[:40]}"


async def claim(bus, tenant: str, key: str, video_id: str, wait_s: float) -> str | None:
    """None when this request owns the key; else the video id of the first request."""
    kv = await bus.kv(topology.KV_UPLOADS)
    name = _kv_key(tenant, key)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await kv.create(name, _encoder.encode(Claim(video_id, "uploading")))
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            existing = _decoder.decode((await kv.get(name)).value)
        except KeyNotFoundError:
            continue  # released between our create and get: try to claim again
        if existing.state == "accepted":
            return existing.video_id
        if time.monotonic() > deadline:
            raise StillUploading()
        await asyncio.sleep(0.2)


async def accept(bus, tenant: str, key: str, video_id: str) -> None:
    kv = await bus.kv(topology.KV_UPLOADS)
    await kv.put(_kv_key(tenant, key), _encoder.encode(Claim(video_id, "accepted")))


async def release(bus, tenant: str, key: str) -> None:
    kv = await bus.kv(topology.KV_UPLOADS)
    try:
        await kv.delete(_kv_key(tenant, key))
    except Exception:
        pass  # the day-long TTL clears it anyway
