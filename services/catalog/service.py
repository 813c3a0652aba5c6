"""catalog: the state of every video, projected from the events into the `videos` KV bucket.

It answers get/list/delete over request-reply; the gateway never reads the bucket itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js.errors import KeyNotFoundError

from shared import topology
from shared.bus import Bus, KvContention, RpcError, kv_update
from shared.consumer import Delivery, Retry
from shared.contracts import (
    DeleteVideo,
    Event,
    GetPlaylist,
    GetUsage,
    GetVideo,
    ListVideos,
    Playlist,
    Usage,
    Video,
    VideoDeleted,
    VideoPage,
    encode,
)
from shared.kvscan import entries
from shared.service import Service

from . import declaration
from .projection import Incomplete, VideoRecord, apply, record_decoder, record_encoder, to_playlist, to_view

service = Service(declaration.DECLARATION)
log = logging.getLogger("vidmesh.catalog")

CAS_ATTEMPTS = 20
WAIT_S = 5.0  # how long a request with `after_seq` waits for the record to hold it (seconds)
LOCAL_GRACE_S = 0.05  # seconds waited on this process's own projection before watching the key
# An ordered consumer of a watch whose request is over is removed by the server after this
# long (seconds): nats-py's unsubscribe leaves it behind.
WATCH_IDLE_S = 2.0


@service.consumer(declaration.EVENTS, Event)
async def on_event(event, delivery: Delivery) -> None:
    await project(delivery.bus, event, delivery.seq)


async def project(bus: Bus, event, seq: int = 0) -> VideoRecord | None:
    """Fold one event, stored at stream sequence `seq` (0: unknown), into the video's record
    with compare-and-set; safe under redelivery. The requests of this process waiting for
    the record to hold that sequence are answered at once.

    A video's events are applied one at a time in this process, in the order they were
    delivered (stream order): with 16 in flight, `video_ready` would otherwise often be
    read against the record before its `rendition_stitched` was written, and wait 2 s for
    a redelivery (measured: the last videos of a load run ready 1.5-2 s late). Across
    catalog replicas the compare-and-set and that redelivery still keep it right."""
    key = topology.state_key(event.tenant, event.video_id)
    async with _in_turn(key):
        record = await _project(bus, key, event, seq)
    if record is not None:
        _stored(key, record)
    return record


_turns: dict[str, list] = {}  # key -> [lock, holders and waiters]


@contextlib.asynccontextmanager
async def _in_turn(key: str):
    """One holder at a time per key, first come first served (asyncio.Lock is FIFO)."""
    turn = _turns.setdefault(key, [asyncio.Lock(), 0])
    turn[1] += 1
    try:
        async with turn[0]:
            yield
    finally:
        turn[1] -= 1
        if not turn[1]:
            del _turns[key]


async def _project(bus: Bus, key: str, event, seq: int) -> VideoRecord | None:
    kv = await bus.kv(topology.KV_VIDEOS)
    projected: VideoRecord | None = None

    def fold(value: bytes | None):
        nonlocal projected
        current = record_decoder.decode(value) if value is not None else None
        try:
            new = apply(current, event, time.time(), seq)
        except Incomplete as exc:
            raise Retry(str(exc), delay=2.0) from None  # the missing result comes back first
        if new is None:
            projected = current
            return None
        projected = new
        ttl = bus.settings.tombstone_ttl_s if new.status == "deleted" else None
        return record_encoder.encode(new), ttl

    try:
        # a lost race means another event of this video was projected first: fold again
        await kv_update(kv, key, fold, attempts=CAS_ATTEMPTS)
    except KvContention:
        raise Retry(f"contention on {key}") from None
    return projected


# A request with `after_seq` may wait (up to WAIT_S) in its handler, holding one of the
# endpoint's subscriptions: more of them, so plain reads do not queue behind waiting ones.
WAITING_CONCURRENCY = 32


@service.endpoint(topology.RPC_CATALOG_GET, concurrency=WAITING_CONCURRENCY)
async def get_video(req: GetVideo, bus: Bus) -> Video:
    return to_view(await _record(bus, req.tenant, req.video_id, req.after_seq))


@service.endpoint(topology.RPC_CATALOG_LIST)
async def list_videos(req: ListVideos, bus: Bus) -> VideoPage:
    """Newest first: video ids sort by creation time, so the key order is the page order."""
    kv = await bus.kv(topology.KV_VIDEOS)
    # a complete scan of the tenant's keys (nats-py's kv.keys()/watch can end early)
    keys = [e.key async for e in entries(bus.js, topology.KV_VIDEOS, f"{req.tenant}.>", meta_only=True)]
    ids = sorted((k.split(".", 1)[1] for k in keys), reverse=True)
    if req.cursor:
        ids = [i for i in ids if i < req.cursor]
    items: list[Video] = []
    limit = max(1, min(req.limit, 100))
    for index, video_id in enumerate(ids):
        entry = await _get(kv, topology.state_key(req.tenant, video_id))
        if entry is None:
            continue
        record = record_decoder.decode(entry.value)
        if record.status == "deleted" or not record.uploaded:
            continue
        items.append(to_view(record))
        if len(items) == limit:
            more = index + 1 < len(ids)
            return VideoPage(items=items, next_cursor=video_id if more else None)
    return VideoPage(items=items, next_cursor=None)


@service.endpoint(topology.RPC_CATALOG_DELETE)
async def delete_video(req: DeleteVideo, bus: Bus) -> Video:
    record = await _record(bus, req.tenant, req.video_id)
    deleted = VideoDeleted(video_id=req.video_id, tenant=req.tenant)
    if record.status != "deleted":
        # The event is the fact; the pipeline stops the video's tasks when it sees it. This
        # request made the write, so it folds it in before answering: a GET that follows,
        # through any replica, reads the video deleted.
        seq = await bus.publish(deleted, msg_id=f"{req.video_id}:deleted")
        record = await project(bus, deleted, seq) or record
    for name in record.objects():
        await bus.media.delete(name)
    return to_view(record)


@service.endpoint(topology.RPC_CATALOG_PLAYLIST, concurrency=WAITING_CONCURRENCY)
async def get_playlist(req: GetPlaylist, bus: Bus) -> Playlist:
    """The stored segments of a video, for its HLS playlists (not_found as for get)."""
    return to_playlist(await _record(bus, req.tenant, req.video_id, req.after_seq))


@service.endpoint(topology.RPC_CATALOG_USAGE)
async def usage(req: GetUsage, bus: Bus) -> Usage:
    """A tenant's videos processing and bytes stored, for the gateway's quotas.

    An upload counts from its record: the gateway leaves an upload's quota admission only
    once the catalog's record holds it (GetVideo.after_seq), so an accepted upload goes
    uncounted in between only when the catalog did not confirm it in time (logged there). A complete scan of the tenant's records (shared/kvscan.py): cost
    grows with the tenant's video count, fine for thousands. TODO: beyond that, keep a
    per-tenant usage key the projection maintains (CAS), reconciled by this scan.
    """
    processing = stored = videos = 0
    async for entry in entries(bus.js, topology.KV_VIDEOS, f"{req.tenant}.>"):  # a complete scan
        if not entry.value:
            continue
        record = record_decoder.decode(entry.value)
        if record.status == "deleted":
            continue
        videos += 1
        processing += record.status == "processing"
        stored += record.stored_bytes()
    return Usage(tenant=req.tenant, processing=processing, stored_bytes=stored, videos=videos)


@service.http.get("/internal/videos/{tenant}/{video_id}", include_in_schema=False)
async def get_video_http(tenant: str, video_id: str):
    """The same answer as catalog.rpc.get over plain HTTP: the baseline `make bench` compares
    request-reply against. Not exposed outside the mesh (the gateway is the only door)."""
    from fastapi.responses import JSONResponse, Response

    try:
        video = await get_video(GetVideo(tenant=tenant, video_id=video_id), service.bus)
    except RpcError as exc:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=404)
    return Response(encode(video), media_type="application/json")


async def _record(bus: Bus, tenant: str, video_id: str, after_seq: int = 0) -> VideoRecord:
    """The video's record (RpcError not_found); with `after_seq`, once it holds the event at
    that stream sequence (RpcError not_yet after WAIT_S)."""
    kv = await bus.kv(topology.KV_VIDEOS)
    key = topology.state_key(tenant, video_id)
    if after_seq > 0:
        return await _holding(kv, key, after_seq)
    entry = await _get(kv, key)
    if entry is None:
        raise RpcError("not_found", f"no video {video_id}")
    return record_decoder.decode(entry.value)


# key -> (stream sequence, future) of each request in this process waiting for the record to
# hold that sequence; `project` resolves them with the record it stored.
_awaited: dict[str, list[tuple[int, asyncio.Future]]] = {}


def _stored(key: str, record: VideoRecord) -> None:
    for seq, waiter in _awaited.get(key, ()):
        if record.holds(seq) and not waiter.done():
            waiter.set_result(record)


async def _holding(kv, key: str, seq: int) -> VideoRecord:
    """The record once it holds stream sequence `seq`. This process's projection hands it
    over as it stores it; a watch on the key brings what another catalog replica stored
    (the record carries its sequence, so any replica can tell). RpcError not_yet after
    WAIT_S seconds."""
    here: asyncio.Future = asyncio.get_running_loop().create_future()
    waiting = _awaited.setdefault(key, [])
    waiting.append((seq, here))  # before the read: a record stored in between still comes
    elsewhere = None
    try:
        entry = await _get(kv, key)
        record = record_decoder.decode(entry.value) if entry is not None else None
        if record is not None and record.holds(seq):
            return record
        # This process usually projects the event within milliseconds; a watch (a consumer
        # the server creates and removes) is started only for a record another replica writes.
        try:
            return await asyncio.wait_for(asyncio.shield(here), LOCAL_GRACE_S)
        except TimeoutError:
            pass
        elsewhere = asyncio.ensure_future(_watch(kv, key, seq))
        elsewhere.add_done_callback(lambda task: task.cancelled() or task.exception())  # seen, if it ends late
        pending: set[asyncio.Future] = {here, elsewhere}
        deadline = time.monotonic() + WAIT_S
        while pending and (left := deadline - time.monotonic()) > 0:
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for found in done:
                if found.exception() is None:
                    return found.result()
                # the watch could not start: this process's projection may still answer
                log.warning("watching %s for sequence %d failed: %s", key, seq, found.exception())
        has = f"up to sequence {record.seq}" if record is not None else "nothing"
        raise RpcError("not_yet", f"the catalog holds {has} of this video, not yet sequence {seq}; retry")
    finally:
        waiting.remove((seq, here))
        if not waiting:
            del _awaited[key]
        if elsewhere is not None:
            elsewhere.cancel()


async def _watch(kv, key: str, seq: int) -> VideoRecord:
    """The key's value once a stored one holds `seq` (its current value first, then each
    write as the bucket stores it)."""
    starting = asyncio.ensure_future(kv.watch(key, inactive_threshold=WATCH_IDLE_S))
    try:
        watcher = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # cancelled while the watch was being set up: stop it once it exists, or its
        # subscription would stay on the connection
        starting.add_done_callback(_stop_started_watch)
        raise
    try:
        async for entry in watcher:
            if entry is None or not entry.value:  # no value yet, or a delete
                continue
            record = record_decoder.decode(entry.value)
            if record.holds(seq):
                return record
    finally:
        await watcher.stop()
    raise RuntimeError("the watch ended")


def _stop_started_watch(starting: asyncio.Future) -> None:
    if not starting.cancelled() and starting.exception() is None:
        asyncio.ensure_future(starting.result().stop())


async def _get(kv, key: str):
    try:
        return await kv.get(key)
    except KeyNotFoundError:
        return None
