"""kv_update, the one compare-and-set read-modify-write of a KV entry, against a real
nats-server: racing writers lose no update, and a key that never holds still gives up with
KvContention."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from shared import topology
from shared.bus import KvContention, kv_update
from tests.integration.conftest import connected_bus


def _key(name: str) -> str:
    return f"kvupdate.{name}{time.time_ns()}"


async def _value(kv, key: str) -> bytes | None:
    try:
        return (await kv.get(key)).value
    except KeyNotFoundError:
        return None


async def test_two_racing_writers_lose_no_increment(bus, nats_server):
    key = _key("counter")
    calls = 0

    async def increment(value: bytes | None) -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)  # let the other writer read the same revision meanwhile
        return str(int(value or b"0") + 1).encode()

    async def writer(b) -> None:
        kv = await b.kv(topology.KV_SCHEDULER)
        for _ in range(50):
            # Each lost race is a write of the other writer, which makes 50 in all: 51
            # attempts cannot run out, so only a lost update could fail this test.
            await kv_update(kv, key, increment, attempts=51)

    async with connected_bus(nats_server.url) as other:  # a second connection, as a second replica
        await asyncio.gather(writer(bus), writer(other))

    kv = await bus.kv(topology.KV_SCHEDULER)
    assert await _value(kv, key) == b"100"
    assert calls > 100  # the writers did race: some reads were stale and were redone


async def test_it_gives_up_with_kv_contention_when_the_key_never_holds(bus):
    kv = await bus.kv(topology.KV_SCHEDULER)
    key = _key("busy")
    await kv.put(key, b"0")
    calls = 0

    async def meddle(value: bytes | None) -> bytes:
        nonlocal calls
        calls += 1
        await kv.put(key, f"other {calls}".encode())  # another writer gets in every time
        return b"mine"

    with pytest.raises(KvContention) as caught:
        await kv_update(kv, key, meddle, attempts=5)
    assert calls == 5
    assert (caught.value.key, caught.value.attempts) == (key, 5)
    assert isinstance(caught.value.__cause__, KeyWrongLastSequenceError)
    assert await _value(kv, key) == b"other 5"  # nothing of the loser's was written


async def test_it_creates_declines_and_gives_a_write_its_own_ttl(bus):
    kv = await bus.kv(topology.KV_JOBS)
    key = _key("ttl")

    assert await kv_update(kv, key, lambda value: None) is None  # declined: nothing created
    assert await _value(kv, key) is None

    assert await kv_update(kv, key, lambda value: b"kept", ttl_s=60) == b"kept"
    assert await kv_update(kv, key, lambda value: value + b"!") == b"kept!"
    assert await kv_update(kv, key, lambda value: None) == b"kept!"  # declined: as it is

    await kv_update(kv, key, lambda value: (b"tombstone", 30), ttl_s=60)
    stored = await bus.js.get_msg(f"KV_{topology.KV_JOBS}", subject=f"$KV.{topology.KV_JOBS}.{key}")
    assert stored.data == b"tombstone"
    assert (stored.headers or {}).get("Nats-TTL") in ("30", "30s")

    # a deleted key is absent to the change, and created again
    await kv.delete(key)
    assert await kv_update(kv, key, lambda value: b"again" if value is None else b"seen") == b"again"
