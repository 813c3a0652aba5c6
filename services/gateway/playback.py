"""The media and progress routes: renditions and thumbnails streamed from the object store
(Range, ETag), and a video's events as Server-Sent Events. The pure parts (Range
arithmetic, SSE framing) are in media.py; wired into the gateway in service.py."""

from __future__ import annotations

import msgspec
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from nats.errors import TimeoutError as NatsTimeout

from shared import topology
from shared.bus import Bus, RpcError
from shared.contracts import Event, Video, VideoDeleted, VideoFailed, VideoReady, decoder, encode

from . import schemas
from .app import ApiError, ConnectedBus, MediaRouter, ReadTenant, fetch_video
from .media import RangeNotSatisfiable, event_name, parse_range, sse

router = MediaRouter()

TERMINAL_EVENTS = (VideoReady, VideoFailed, VideoDeleted)


@router.get_and_head(
    "/v1/videos/{video_id}/renditions/{name}", responses=schemas.RENDITION, summary="Download a rendition (Range)"
)
async def rendition(video_id: str, name: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    video = await fetch_video(bus, tenant, video_id)
    if not any(r.name == name for r in video.renditions):
        raise ApiError(404, "not_found", f"video {video_id} has no rendition {name!r} (yet)")
    return await serve(bus, request, topology.rendition_key(tenant, video_id, name), "video/mp4")


@router.get_and_head(
    "/v1/videos/{video_id}/thumbnail", responses=schemas.THUMBNAIL, summary="The first frame as a JPEG"
)
async def thumbnail(video_id: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    video = await fetch_video(bus, tenant, video_id)
    if video.thumbnail is None:
        raise ApiError(404, "not_found", f"video {video_id} has no thumbnail (yet)")
    return await serve(bus, request, topology.thumbnail_key(tenant, video_id), "image/jpeg")


async def serve(
    bus: Bus,
    request: Request,
    key: str,
    media_type: str,
    *,
    cache: str = "private, max-age=3600",
    headers: dict | None = None,
) -> Response:
    """An object from the store, with Range, ETag and If-None-Match (404 when it is gone)."""
    info = await bus.media.info(key)
    if info is None:
        raise ApiError(404, "not_found", "the media is gone")
    etag = '"' + (info.digest or info.nuid).replace("SHA-256=", "") + '"'
    headers = {**(headers or {}), "Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": cache}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        wanted = parse_range(request.headers.get("range"), info.size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{info.size}"})
    status = 200
    start, end = 0, info.size - 1
    if wanted is not None and request.headers.get("if-range", etag) == etag:
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end - start + 1 if info.size else 0)
    if request.method == "HEAD" or info.size == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        bus.media.read(info, start, end), status_code=status, headers=headers, media_type=media_type
    )


@router.get(
    "/v1/videos/{video_id}/events",
    responses=schemas.EVENTS,
    summary="Server-Sent Events: history, then live, until a terminal state",
)
async def events(video_id: str, request: Request, tenant: ReadTenant, bus: ConnectedBus):
    video = await fetch_video(bus, tenant, video_id)
    return StreamingResponse(
        _event_stream(bus, tenant, video),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _settled(bus: Bus, tenant: str, video_id: str, seq: int) -> None:
    """Return once the catalog's record holds the event at stream sequence `seq`, or once the
    catalog says it does not yet (after its bounded wait) or is away: either way the stream
    is not held any longer."""
    try:
        await fetch_video(bus, tenant, video_id, after_seq=seq)
    except RpcError:
        pass


async def _event_stream(bus: Bus, tenant: str, video: Video):
    event_decoder = decoder(Event)
    sub = await bus.js.subscribe(
        topology.video_events_filter(tenant, video.id), stream=topology.EVENTS, ordered_consumer=True
    )
    terminal_at_start = video.status in ("ready", "failed", "deleted")
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=15.0)
            except NatsTimeout:
                if terminal_at_start:  # history expired: close with the current state
                    yield sse("video", encode(await fetch_video(bus, tenant, video.id)))
                    return
                yield b": keep-alive\n\n"
                continue
            try:
                event = event_decoder.decode(msg.data)
            except msgspec.DecodeError:
                continue  # an event type newer than this gateway: skip it
            last = msg.metadata.num_pending == 0
            if isinstance(event, TERMINAL_EVENTS) and last:
                # A client that follows the stream to its end and then GETs the video must
                # read that state: the catalog answers once its record holds this event.
                await _settled(bus, tenant, video.id, msg.metadata.sequence.stream)
            yield sse(event_name(type(event).__struct_config__.tag), msg.data, str(msg.metadata.sequence.stream))
            if isinstance(event, TERMINAL_EVENTS) and last:
                return  # (a terminal event followed by more history, e.g. ready then deleted, goes on)
            if terminal_at_start and last:
                yield sse("video", encode(await fetch_video(bus, tenant, video.id)))
                return
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
