"""Read the current entries of a KV bucket whose keys match a pattern, completely.

nats-py's `kv.watch()` (and `kv.keys()`, built on it) can signal "end of the current
values" too early, so a scan returns only part of the bucket (even nothing): when
messages in flight are not counted yet at setup (nats-io/nats.py#842), and when the
per-message pending count goes to 0 and back up under concurrent writes
(nats-io/nats.py#995, open). Measured here: 1 scan in ~150 came back short while the
bucket was being written. This scan counts instead: it asks the ephemeral consumer once
how many entries it has to deliver (delivered + pending, one snapshot) and reads that
many, or until the server sends no more (entries removed meanwhile). It uses only what
the services' NATS permissions grant for KV watches (an ephemeral push consumer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from nats.errors import TimeoutError as NatsTimeout
from nats.js import api

_DELETED = ("DEL", "PURGE")


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes  # empty with meta_only
    revision: int
    created: datetime


async def entries(js, bucket: str, pattern: str = ">", *, meta_only: bool = False) -> AsyncIterator[Entry]:
    """The live (not deleted) entries of `bucket` whose keys match `pattern`."""
    prefix = f"$KV.{bucket}."
    stream = f"KV_{bucket}"
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        headers_only=meta_only or None,
        inactive_threshold=60.0,  # removed by the server if this process dies mid-scan
        mem_storage=True,
        num_replicas=1,
    )
    sub = await js.subscribe(prefix + pattern, stream=stream, config=config, manual_ack=True)
    try:
        info = await sub.consumer_info()
        expected = info.delivered.consumer_seq + info.num_pending
        seen = 0
        while seen < expected:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except (NatsTimeout, TimeoutError):
                break  # entries removed since the consumer was created
            seen += 1
            headers = msg.headers or {}
            if headers.get("KV-Operation") in _DELETED or "Nats-Marker-Reason" in headers:
                continue
            meta = msg.metadata
            yield Entry(
                key=msg.subject[len(prefix) :],
                value=msg.data or b"",
                revision=meta.sequence.stream,
                created=meta.timestamp,
            )
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(stream, sub._consumer)
        except Exception:
            pass  # inactive_threshold removes it
