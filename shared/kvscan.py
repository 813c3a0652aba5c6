"""Read the current entries of a KV bucket whose keys match a pattern, completely.

nats-py's `kv.watch()` (and `kv.keys()`, built on it) can signal "end of the current
values" too early, so a scan returns only part of the bucket (even nothing): when
messages in flight are not counted yet at setup (nats-io/nats.py#842), and when the
per-message pending count goes to 0 and back up under concurrent writes
(nats-io/nats.py#995, open); a consumer-based count also misses a key rewritten while the
scan runs. This scan asks the stream which subjects (keys) it holds, in one request
(`subjects_filter`), then reads each key's last message: every key that
exists when the scan starts is returned, at its value when it is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from .declaration import kv_stream

_DELETED = ("DEL", "PURGE")


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes  # empty with meta_only
    revision: int
    created: datetime


async def entries(
    js: JetStreamContext, bucket: str, pattern: str = ">", *, meta_only: bool = False
) -> AsyncIterator[Entry]:
    """The live (not deleted) entries of `bucket` whose keys match `pattern`, in key order."""
    prefix = f"$KV.{bucket}."
    stream = kv_stream(bucket)
    info = await js.stream_info(stream, subjects_filter=prefix + pattern)
    for subject in sorted(info.state.subjects or {}):
        try:
            msg = await js.get_msg(stream, subject=subject)  # last by subject (buckets may lack allow_direct)
        except NotFoundError:
            continue  # purged since
        headers = msg.headers or {}
        if headers.get("KV-Operation") in _DELETED or "Nats-Marker-Reason" in headers:
            continue
        # a stored message has both; nats-py types every field of the server's reply as optional
        assert msg.seq is not None and msg.time is not None
        yield Entry(
            key=subject[len(prefix) :],
            value=b"" if meta_only else (msg.data or b""),
            revision=msg.seq,
            created=msg.time,
        )
