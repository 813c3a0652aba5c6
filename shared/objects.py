"""Streaming access to the JetStream Object Store, in the store's own wire format.

nats-py's ObjectStore.get() concatenates bytes (quadratic) and put() wants a blocking
reader, so media goes through here instead: writes pipeline chunk publishes from an
async iterator, reads pull one chunk at a time with Direct Get. Objects stay readable by
any NATS client (`nats object get`), since layout and metadata are the standard ones.

Seeking: chunk messages of concurrent uploads interleave in the stream, so the n-th chunk's
sequence is not computable. The writer records the sequence of every `stride`-th chunk in
the object's standard `metadata` map (at most MAX_CHECKPOINTS of them), and a read from
offset X starts at the checkpoint before X instead of at the first chunk: a Range request
near the end of a 1 GiB object fetches a few chunks, not all of them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_META_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE
from prometheus_client import Counter

if TYPE_CHECKING:  # names that exist in the type stubs only
    from _hashlib import HASH

    from _typeshed import StrPath, WriteableBuffer

log = logging.getLogger("vidmesh.objects")

MEDIA_BYTES = Counter("vidmesh_media_bytes_total", "Bytes written to and read from the object store", ["direction"])

CHUNK_SIZE = 256 * 1024
PUBLISH_WINDOW = 32  # chunks in flight while writing: ~8 MiB bounded
# nats-py's publish_async future has no timeout: a chunk whose ack was lost with the
# connection (the server restarted mid-write) would hang the writer, and a task handler
# holding its message with heartbeats would hang with it. Bounded, it fails and is retried.
# Generous, because in a cluster an ack is only late while the stream elects a new leader,
# and a write given up too early may see its last chunks land after its purge. When the
# connection itself dropped during the write, an ack may never come: fail at once.
ACK_TIMEOUT_S = 30.0
ACK_POLL_S = 0.25
RECONNECT_WAIT_S = 60.0  # how long an abandoned write waits for the server to come back
# A purge asked while the stream elects a leader, or while the server restarts, fails: ask
# again, 1 s then doubling (about 30 s in all).
PURGE_ATTEMPTS = 5
MAX_CHECKPOINTS = 1024  # seek index entries per object: ~8 KB of metadata at most
CHECKPOINTS_KEY = "vidmesh-chunk-seqs"  # "<stride>:<seq>,<seq>,..."
_ABANDONING: set[asyncio.Task[None]] = set()  # purges of failed writes still running


@dataclass
class StoredObject(api.ObjectInfo):
    """ObjectInfo plus the object-store `metadata` map, which the Go client and the nats CLI
    know but nats-py does not model (its parser would drop it)."""

    # A stored object's meta always has both (nats-py's ObjectInfo leaves them optional).
    size: int = 0
    chunks: int = 0
    metadata: dict[str, str] | None = None

    def checkpoint_before(self, offset: int) -> tuple[int, int]:
        """(chunk index, stream sequence) of the recorded chunk at or before `offset`;
        (0, 1) when the object has no index (written by another client)."""
        stride, seqs = self._index
        if not seqs:
            return 0, 1
        k = min((offset // _chunk_size(self)) // stride, len(seqs) - 1)
        return k * stride, seqs[k]

    @functools.cached_property
    def _index(self) -> tuple[int, list[int]]:
        """The checkpoints parsed once per object info (a reader asks on every chunk)."""
        raw = (self.metadata or {}).get(CHECKPOINTS_KEY)
        if not raw:
            return 1, []
        stride, seqs = raw.split(":", 1)
        return int(stride), [int(q) for q in seqs.split(",")]


def _chunk_size(info: api.ObjectInfo) -> int:
    return (info.options and info.options.max_chunk_size) or CHUNK_SIZE


def _checkpoints(seqs: list[int]) -> dict[str, str]:
    """The seek index of an object whose every chunk sequence is `seqs`."""
    stride = max(1, math.ceil(len(seqs) / MAX_CHECKPOINTS))
    return _index_metadata(stride, seqs[::stride])


def _index_metadata(stride: int, seqs: list[int]) -> dict[str, str]:
    """The `metadata` entry of a seek index: the sequence of every `stride`-th chunk."""
    return {CHECKPOINTS_KEY: f"{stride}:" + ",".join(map(str, seqs))} if seqs else {}


class TooLarge(Exception):
    """The stream passed `max_bytes`; nothing was stored."""


class MediaStore:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)

    def _meta_subject(self, name: str) -> str:
        return OBJ_META_PRE_TEMPLATE.format(bucket=self.bucket, obj=base64.urlsafe_b64encode(name.encode()).decode())

    async def info(self, name: str) -> StoredObject | None:
        try:
            msg = await self.js.get_last_msg(self.stream, self._meta_subject(name))
        except NotFoundError:
            return None
        assert msg.data is not None  # a meta message always has its JSON body
        info = StoredObject.from_response(json.loads(msg.data))
        return None if info.deleted else info

    async def put_stream(
        self,
        name: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> StoredObject:
        """Store an object from an async byte iterator with bounded memory."""
        nuid = self.js._nc._nuid.next().decode()
        chunk_subject = self.chunk_subject(nuid)
        digest = hashlib.sha256()
        pending: list[asyncio.Future[api.PubAck]] = []
        seqs: list[int] = []  # stream sequence of each chunk, in order (the seek index)
        buf = bytearray()
        total = 0
        nc = self.js._nc
        epoch = nc.stats["reconnects"]  # a reconnect during the write: acks may be lost

        async def flush(data: bytes) -> None:
            pending.append(await self.js.publish_async(chunk_subject, data))
            if len(pending) >= PUBLISH_WINDOW:
                seqs.append((await _acked(pending.pop(0), nc, epoch)).seq)

        try:
            async for piece in chunks:
                total += len(piece)
                if max_bytes is not None and total > max_bytes:
                    raise TooLarge(f"larger than {max_bytes} bytes")
                digest.update(piece)
                buf += piece
                while len(buf) >= CHUNK_SIZE:
                    await flush(bytes(buf[:CHUNK_SIZE]))
                    del buf[:CHUNK_SIZE]
            if buf:
                await flush(bytes(buf))
            for fut in pending:
                seqs.append((await _acked(fut, nc, epoch)).seq)
            MEDIA_BYTES.labels("in").inc(total)
            return await self._commit(name, nuid, total, seqs, digest, headers)
        except BaseException:
            # Let the chunks already sent land before purging, or they would outlive the purge.
            abandon = self._abandon(pending, chunk_subject, nc, epoch)
            if nc.is_connected and nc.stats["reconnects"] == epoch:
                await asyncio.shield(abandon)
            else:
                # The server is away: purge once it is back, in the background, so the caller
                # learns of the failure now (an upload's 503, a task's retry).
                task = asyncio.get_running_loop().create_task(abandon)
                _ABANDONING.add(task)
                task.add_done_callback(_ABANDONING.discard)
            raise

    async def put_file(self, name: str, path: StrPath, *, headers: dict[str, str] | None = None) -> StoredObject:
        return await self.put_stream(name, _read_file(path), headers=headers)

    def chunk_subject(self, nuid: str) -> str:
        return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=nuid)

    async def commit_chunks(
        self,
        name: str,
        nuid: str,
        size: int,
        chunks: int,
        digest: HASH,
        stride: int,
        seqs: list[int],
        *,
        headers: dict[str, str] | None = None,
    ) -> StoredObject:
        """Make `name` the object whose CHUNK_SIZE chunks someone wrote under `nuid` (a
        resumable upload, PATCH by PATCH): only the meta message is written, no byte is
        copied. `digest`: a hashlib sha256 of the whole content; `seqs`: the stream sequence
        of every `stride`-th chunk (the seek index)."""
        return await self._commit(
            name, nuid, size, seqs, digest, headers, chunks=chunks, metadata=_index_metadata(stride, seqs)
        )

    async def purge_chunks(self, nuid: str) -> None:
        """Drop chunks that belong to no object (an abandoned resumable upload)."""
        await self._purge(self.chunk_subject(nuid))

    async def _commit(
        self,
        name: str,
        nuid: str,
        size: int,
        seqs: list[int],
        digest: HASH,
        headers: dict[str, str] | None,
        chunks: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        previous = await self.info(name)
        info = StoredObject(
            name=name,
            bucket=self.bucket,
            nuid=nuid,
            size=size,
            chunks=len(seqs) if chunks is None else chunks,
            mtime=datetime.now(UTC).isoformat(),
            digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
            headers=headers,
            options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
            metadata=_checkpoints(seqs) if metadata is None else metadata,
        )
        await self.js.publish(
            self._meta_subject(name), json.dumps(info.as_dict()).encode(), headers={api.Header.ROLLUP: "sub"}
        )
        if previous is not None and previous.nuid != nuid:
            # A redelivered task overwrote the object: drop the old chunks.
            await self._purge(self.chunk_subject(previous.nuid))
        return info

    async def _abandon(
        self, pending: list[asyncio.Future[api.PubAck]], chunk_subject: str, nc: Client, epoch: int
    ) -> None:
        for fut in pending:
            try:
                await _acked(fut, nc, epoch)
            except ConnectionError:
                break  # the rest will not be acknowledged either
        if nc.is_connected and nc.stats["reconnects"] == epoch:
            await self._purge(chunk_subject)
            return
        # The connection dropped: the client re-sends what it had buffered once it is back,
        # so chunks may land after a purge asked at once. Purge when everything sent before
        # has reached the server (a PING round trip), and once more a moment later.
        for _ in range(2):
            await _reconnected(nc, RECONNECT_WAIT_S)
            try:
                await nc.flush(timeout=5)
            except Exception:
                pass
            await self._purge(chunk_subject)
            await asyncio.sleep(2.0)

    async def _purge(self, chunk_subject: str) -> None:
        for attempt in range(PURGE_ATTEMPTS):
            try:
                await self.js.purge_stream(self.stream, subject=chunk_subject)
                return
            except Exception as exc:
                if attempt + 1 < PURGE_ATTEMPTS:
                    await asyncio.sleep(2.0**attempt)
                else:
                    # best effort: an orphaned chunk subject wastes space, not correctness
                    log.warning(
                        "left %s in %s after %d purges failed: %r", chunk_subject, self.stream, PURGE_ATTEMPTS, exc
                    )

    async def read(self, info: StoredObject, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield bytes [start, end] (inclusive end, as in HTTP Range) one chunk at a time."""
        end = info.size - 1 if end is None else min(end, info.size - 1)
        chunk_size = _chunk_size(info)
        async for index, _, data in self.chunks(info, *info.checkpoint_before(start), last=end // chunk_size):
            lo = index * chunk_size
            if lo + len(data) <= start:
                continue
            yield data[max(0, start - lo) : min(len(data), end + 1 - lo)]

    async def chunks(
        self, info: StoredObject, index: int = 0, seq: int = 1, *, last: int | None = None
    ) -> AsyncIterator[tuple[int, int, bytes]]:
        """(chunk index, stream sequence, bytes) of the chunks from `index` to `last`; chunk
        `index` is stored at sequence `seq` or later (a checkpoint, or a chunk read before)."""
        subject = self.chunk_subject(info.nuid)
        stop = info.chunks if last is None else min(info.chunks, last + 1)
        for i in range(index, stop):
            msg = await self.js._nc.request(
                f"$JS.API.DIRECT.GET.{self.stream}",
                json.dumps({"seq": seq, "next_by_subj": subject}).encode(),
                timeout=10,
            )
            headers = msg.headers or {}
            if headers.get("Status"):
                # Direct Get may be answered by an R3 follower that has not caught up with a
                # chunk written a moment ago: ask the stream leader instead.
                raw = await self.js.get_msg(self.stream, seq=seq, subject=subject, next=True)
                assert raw.seq is not None  # a stored message always has its sequence
                seq, data = raw.seq, raw.data or b""
            else:
                seq, data = int(headers["Nats-Sequence"]), msg.data
            MEDIA_BYTES.labels("out").inc(len(data))
            yield i, seq, data
            seq += 1

    async def download(self, name: str, path: StrPath, *, ends: int | None = None) -> StoredObject:
        """Write the object to `path`. With `ends`, only its first and last `ends` bytes, at
        their offsets in a sparse file of the object's size: what a demuxer reads to find the
        streams and an index stored at the end, without fetching the middle."""
        info = await self.info(name)
        if info is None:
            raise FileNotFoundError(name)
        ranges: list[tuple[int, int | None]]  # (start, inclusive end; None: to the end)
        if ends is None or info.size <= 2 * ends:
            ranges = [(0, None)]
        else:
            ranges = [(0, ends - 1), (info.size - ends, None)]
        loop = asyncio.get_running_loop()
        with open(path, "wb") as fh:
            fh.truncate(info.size)
            for start, end in ranges:
                fh.seek(start)
                async for data in self.read(info, start, end):
                    await loop.run_in_executor(None, fh.write, data)
        return info

    async def delete(self, name: str) -> bool:
        info = await self.info(name)
        if info is None:
            return False
        gone = api.ObjectInfo(name=name, bucket=self.bucket, nuid=info.nuid, size=0, chunks=0, deleted=True, digest="")
        await self.js.publish(
            self._meta_subject(name), json.dumps(gone.as_dict()).encode(), headers={api.Header.ROLLUP: "sub"}
        )
        await self._purge(self.chunk_subject(info.nuid))
        return True


class ObjectReader(io.RawIOBase):
    """A stored object as a read-only, seekable file, for code that runs in a worker thread
    and wants a file (PyAV's `av.open` takes one): a demuxer reads its header, index and
    first packets, not the whole object. Chunks are fetched on `loop` (the service's event
    loop) and the last CACHED of them kept; a seek starts from the nearest chunk whose
    position is known (a checkpoint or a chunk read before)."""

    CACHED = 16  # 4 MiB

    def __init__(self, store: MediaStore, info: StoredObject, loop: asyncio.AbstractEventLoop, timeout: float = 30.0):
        super().__init__()
        self.store, self.info, self.loop, self.timeout = store, info, loop, timeout
        self.pos = 0
        self._chunk_size = _chunk_size(info)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._seqs: dict[int, int] = {}  # chunk index -> stream sequence, learned while reading

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.info.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self.pos < self.info.size:
            index, skip = divmod(self.pos, self._chunk_size)
            data = self._chunk(index)
            n = min(len(view) - done, len(data) - skip)
            if n <= 0:
                break  # a chunk shorter than the object's chunk size: not our layout, stop
            view[done : done + n] = data[skip : skip + n]
            done += n
            self.pos += n
        return done

    def _chunk(self, index: int) -> bytes:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        data = asyncio.run_coroutine_threadsafe(self._fetch(index), self.loop).result(self.timeout)
        self._cache[index] = data
        while len(self._cache) > self.CACHED:
            self._cache.popitem(last=False)
        return data

    async def _fetch(self, index: int) -> bytes:
        start, seq = self.info.checkpoint_before(index * self._chunk_size)
        known = max((i for i in self._seqs if start <= i <= index), default=None)
        if known is not None:
            start, seq = known, self._seqs[known]
        data = b""
        async for i, at, data in self.store.chunks(self.info, start, seq, last=index):  # noqa: B007 (the last is the chunk asked for)
            self._seqs[i] = at
        return data


async def _reconnected(nc: Client, timeout: float) -> None:
    """Until the client is connected again (or `timeout` seconds pass)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not nc.is_connected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)


async def _acked(future: asyncio.Future[api.PubAck], nc: Client, epoch: int) -> api.PubAck:
    """The chunk's PubAck; ConnectionError when it does not come within ACK_TIMEOUT_S, or
    the connection dropped since the write began (what was sent before may be lost)."""
    deadline = asyncio.get_running_loop().time() + ACK_TIMEOUT_S
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(future), ACK_POLL_S)
        except TimeoutError:
            pass
        if not nc.is_connected or nc.stats["reconnects"] != epoch:
            raise ConnectionError("the connection to NATS dropped during the write")
        if asyncio.get_running_loop().time() >= deadline:
            raise ConnectionError(f"no acknowledgement of a chunk within {ACK_TIMEOUT_S:g} s (connection lost?)")


async def _read_file(path: StrPath) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    with open(path, "rb") as fh:
        while True:
            data = await loop.run_in_executor(None, fh.read, CHUNK_SIZE)
            if not data:
                return
            yield data
