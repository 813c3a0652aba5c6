"""How the catalog waits for a caller's write (no NATS: a bucket that records what is asked)."""

from __future__ import annotations

import asyncio

from nats.js.errors import KeyNotFoundError

from services.catalog import service as catalog
from services.catalog.projection import VideoRecord


class _Bucket:
    """A KV bucket without the record yet, counting the watches asked of it."""

    def __init__(self):
        self.watches = 0

    async def get(self, key):
        raise KeyNotFoundError

    async def watch(self, key, **kw):
        self.watches += 1
        await asyncio.Event().wait()  # never brings anything: only this process's projection can


def test_a_record_this_process_projects_at_once_answers_without_a_watch():
    """A single catalog answers a caller's write from its own projection: no watch (a
    consumer the server creates and removes) per upload."""
    kv, key = _Bucket(), "alice.v1"

    async def go():
        asking = asyncio.create_task(catalog._holding(kv, key, 7))
        await asyncio.sleep(0.01)  # the projection stores the record 10 ms later
        catalog._stored(key, VideoRecord(id="v1", tenant="alice", seq=7))
        return await asking

    record = asyncio.run(go())
    assert record.seq == 7 and kv.watches == 0
    assert key not in catalog._awaited  # the waiter is gone once answered


def test_a_record_another_replica_writes_is_watched_for():
    kv, key = _Bucket(), "alice.v2"

    async def go():
        asking = asyncio.create_task(catalog._holding(kv, key, 7))
        await asyncio.sleep(catalog.LOCAL_GRACE_S + 0.1)
        watched = kv.watches
        catalog._stored(key, VideoRecord(id="v2", tenant="alice", seq=7))  # answer it anyway
        await asking
        return watched

    assert asyncio.run(go()) == 1
