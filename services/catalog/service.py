"""catalog: the state of every video, projected from the events into the `videos` KV bucket.

It answers get/list/delete over request-reply; the gateway never reads the bucket itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError

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
    VideoUploaded,
    decoder,
    encode,
)
from shared.kvscan import entries
from shared.service import Service

from . import declaration

from .projection import Incomplete, VideoRecord, apply, record_decoder, record_encoder, to_playlist, to_view

service = Service(declaration.DECLARATION)

CAS_ATTEMPTS = 20


@service.consumer(declaration.EVENTS, Event)
async def on_event(event, delivery: Delivery) -> None:
    await project(delivery.bus, event)


async def project(bus: Bus, event) -> VideoRecord | None:
    """Fold one event into the video's record with compare-and-set; safe under redelivery.

    A video's events are applied one at a time in this process, in the order they were
    delivered (stream order): with 16 in flight, `video_ready` would otherwise often be
    read against the record before its `rendition_stitched` was written, and wait 2 s for
    a redelivery (measured: the last videos of a load run ready 1.5-2 s late). Across
    catalog replicas the compare-and-set and that redelivery still keep it right."""
    key = topology.state_key(event.tenant, event.video_id)
    async with _in_turn(key):
        return await _project(bus, key, event)


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


async def _project(bus: Bus, key: str, event) -> VideoRecord | None:
    kv = await bus.kv(topology.KV_VIDEOS)
    projected: VideoRecord | None = None

    def fold(value: bytes | None):
        nonlocal projected
        current = record_decoder.decode(value) if value is not None else None
        try:
            new = apply(current, event, time.time())
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


@service.endpoint(topology.RPC_CATALOG_GET)
async def get_video(req: GetVideo, bus: Bus) -> Video:
    return to_view(await _record(bus, req.tenant, req.video_id))


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
        # The event is the fact; the pipeline stops the video's tasks when it sees it.
        await bus.publish(deleted, msg_id=f"{req.video_id}:deleted")
        record = await project(bus, deleted) or record
    for name in record.objects():
        await bus.media.delete(name)
    return to_view(record)


@service.endpoint(topology.RPC_CATALOG_PLAYLIST)
async def get_playlist(req: GetPlaylist, bus: Bus) -> Playlist:
    """The stored segments of a video, for its HLS playlists (not_found as for get)."""
    return to_playlist(await _record(bus, req.tenant, req.video_id))


@service.endpoint(topology.RPC_CATALOG_USAGE)
async def usage(req: GetUsage, bus: Bus) -> Usage:
    """A tenant's videos processing and bytes stored, for the gateway's quotas.

    It first waits (bounded) until the projection has applied every event stored before the
    question, so an upload the gateway just accepted counts. Then a complete scan of the
    tenant's records (shared/kvscan.py): cost grows with the tenant's video count, fine for
    thousands. TODO: beyond that, keep a per-tenant usage key the projection maintains
    (CAS), reconciled by this scan.
    """
    await _caught_up(bus)
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


async def _caught_up(bus: Bus, timeout: float = 5.0) -> None:
    """Wait until the catalog consumer has acknowledged every event stored up to now."""
    spec = declaration.EVENTS
    target = (await bus.js.stream_info(spec.stream)).state.last_seq
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
        if info.ack_floor.stream_seq >= target:
            return
        await asyncio.sleep(0.05)


async def _record(bus: Bus, tenant: str, video_id: str) -> VideoRecord:
    kv = await bus.kv(topology.KV_VIDEOS)
    entry = await _get(kv, topology.state_key(tenant, video_id))
    if entry is not None:
        return record_decoder.decode(entry.value)
    # Read-your-writes: the gateway answers 202 as soon as the upload event is stored, so
    # a GET can arrive before this projection caught up; fold the stored event directly.
    subject = f"{topology.SUBJECTS[VideoUploaded]}.{tenant}.{video_id}"
    try:
        raw = await bus.js.get_last_msg(topology.EVENTS, subject)
    except NotFoundError:
        raise RpcError("not_found", f"no video {video_id}") from None
    try:
        event = decoder(Event).decode(raw.data)
    except msgspec.DecodeError:
        raise RpcError("not_found", f"no video {video_id}") from None
    return apply(None, event, time.time())


async def _get(kv, key: str):
    try:
        return await kv.get(key)
    except KeyNotFoundError:
        return None
