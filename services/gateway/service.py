"""gateway: the public HTTP API. The only door from outside; everything else is NATS.

Uploads stream into the object store, the pipeline probes them over request-reply, and
an accepted upload becomes one `video_uploaded` event; reads go to the catalog over
request-reply. This module wires the app and serves uploads, video reads and deletes,
tokens, alerts and the dashboard; media and events are in playback.py, /v1/webhooks in
webhooks.py, and what the routes share in app.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import asyncapi, mesh
from shared import telemetry, topology
from shared.bus import Bus, RpcError
from shared.contracts import (
    AlertList,
    DeleteVideo,
    GetAlerts,
    ListVideos,
    LoadState,
    Video,
    VideoPage,
    decoder,
)
from shared.objects import TooLarge

from . import declaration, idempotency, quotas, schemas, tokens
from .app import (
    PROBE_TIMEOUT_S,
    RPC_STATUS,
    ApiError,
    ConnectedBus,
    Tenant,
    announce,
    api,
    check_video_id,
    error_response,
    fetch_video,
    json_response,
    service,
)
from .headers import ResponseHeaders
from .limits import RequestLimits
from .playback import router as playback_router
from .streaming import PREFLIGHT as HLS_PREFLIGHT
from .streaming import cors as hls_cors
from .streaming import router as streaming_router
from .tus import router as tus_router
from .uploads import MultipartFile, accepted, new_video_id
from .webhooks import router as webhooks_router

log = logging.getLogger("vidmesh.gateway")

# /openapi.json lists paths in the order routes are registered: webhooks first, then this
# module's routes, then playback's (included below the video routes).
api.include_router(webhooks_router)  # /v1/webhooks: services/gateway/webhooks.py


class Load:
    """The transcode backlog as last seen; refreshed in the background, read per upload."""

    backlog = 0
    source = "none"  # monitor | direct


load = Load()
LOAD_POLL_S = 1.0
LOAD_STALE_S = 15.0


@service.on_startup
async def _watch_load(bus: Bus) -> None:
    """Follow the monitor's load state; if the monitor is silent, measure the backlog here,
    so backpressure never depends on one more service being up."""
    kv = await bus.kv(topology.KV_MONITOR)
    load_decoder = decoder(LoadState)

    async def poll():
        watched = mesh.watched(declaration.DECLARATION)  # the transcode work queue's consumers
        while True:
            try:
                try:
                    state = load_decoder.decode((await kv.get("load")).value)
                except KeyNotFoundError:
                    state = None
                if state is not None and time.time() - state.updated_at < LOAD_STALE_S:
                    load.backlog, load.source = state.backlog, "monitor"
                else:
                    infos = [await bus.js.consumer_info(s.stream, s.durable) for s in watched]
                    load.backlog, load.source = sum(i.num_pending + i.num_ack_pending for i in infos), "direct"
            except Exception:
                pass  # keep the last figure while NATS is away
            await asyncio.sleep(LOAD_POLL_S)

    service.background(poll())


def _trace_header(scope) -> dict | None:
    # the trace of this request, to find it in Jaeger (the OTel middleware wraps this one)
    trace_id = telemetry.current_trace_id()
    return {"X-Trace-Id": trace_id} if trace_id else None


@service.configure_app
def _response_headers(app: FastAPI) -> None:
    app.add_middleware(ResponseHeaders, rule=_trace_header)
    # cross-origin players of the HLS routes (streaming.py)
    app.add_middleware(ResponseHeaders, rule=hls_cors, preflight=HLS_PREFLIGHT)


@service.configure_app
def _hardening(app: FastAPI) -> None:
    # header count, path/query length, body size of every route (limits.py)
    app.add_middleware(RequestLimits, settings=lambda: service.settings)
    schemas.install(app)  # response schemas in /openapi.json (schemas.py)


@service.configure_app
def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RpcError)
    async def rpc_error(request, exc: RpcError):
        status = RPC_STATUS.get(exc.code, 502)
        # a service not answering yet (restarting, reconnecting): retrying later is the remedy
        retry = {"Retry-After": str(service.settings.retry_after_s)} if status == 503 else None
        return error_response(status, exc.code, exc.message, retry)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    # NATS did not answer (restarting, partitioned): nothing was accepted, a retry is safe
    # (with the same Idempotency-Key for uploads). Anything else is a bug: a 500, in JSON too.
    @app.exception_handler(NatsError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(asyncio.TimeoutError)
    async def bus_unavailable(request, exc: Exception):
        log.warning("%s %s: the bus did not answer: %r", request.method, request.url.path, exc)
        message = "the message bus did not answer; retry shortly"
        return error_response(503, "unavailable", message, {"Retry-After": str(service.settings.retry_after_s)})

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "an internal error; it has been logged")


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


@api.post("/v1/videos", status_code=202, openapi_extra=UPLOAD_BODY, responses=schemas.UPLOAD, summary="Upload a video")
async def upload(request: Request, tenant: Tenant, bus: ConnectedBus):
    settings = bus.settings
    ctype = request.headers.get("content-type")
    if not accepted(ctype):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {ctype!r} cannot be a video: send video/*, application/octet-stream or multipart/form-data",
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) == 0:
            raise ApiError(400, "empty_body", "the upload is empty")
        if int(length) > settings.max_upload_bytes:
            raise ApiError(413, "too_large", f"uploads are limited to {settings.max_upload_bytes} bytes")
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= idempotency.MAX_KEY_LENGTH):
        raise ApiError(
            400, "bad_idempotency_key", f"Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} characters"
        )

    video_id = new_video_id()
    if key is not None:
        try:
            first = await idempotency.claim(bus, tenant, key, video_id, wait_s=PROBE_TIMEOUT_S)
        except idempotency.StillUploading:
            raise ApiError(
                409, "upload_in_progress", "an upload with this Idempotency-Key is still in progress"
            ) from None
        if first is not None:  # a retry: answer with the first upload, start nothing
            video = await fetch_video(bus, tenant, first)
            return json_response(video, 202, {"Location": f"/v1/videos/{first}", "Idempotent-Replayed": "true"})
    try:
        _shed_load(settings)
        # per-tenant quotas (quotas.py): 429 quota_processing, 403 quota_storage; the
        # admission is held while the upload streams and left once it is announced
        incoming = int(length) if length and length.isdigit() else None
        try:
            async with quotas.admitted(bus, tenant, video_id, incoming) as budget:
                video = await _accept(request, bus, tenant, video_id, ctype, budget)
        except quotas.QuotaExceeded as exc:  # only admission raises it
            raise ApiError(exc.status, exc.code, exc.message, exc.headers) from None
    except BaseException:
        if key is not None:
            await asyncio.shield(idempotency.release(bus, tenant, key))
        raise
    if key is not None:
        await idempotency.accept(bus, tenant, key, video_id)
    return json_response(video, 202, {"Location": f"/v1/videos/{video_id}"})


def _shed_load(settings) -> None:
    """Backpressure: refuse new work while the transcode backlog is too deep."""
    if load.backlog > settings.max_backlog:
        raise ApiError(
            429,
            "overloaded",
            f"{load.backlog} transcode tasks are waiting (limit {settings.max_backlog}); retry later",
            {"Retry-After": str(settings.retry_after_s), "Vidmesh-Load-Source": load.source},
        )


async def _accept(
    request: Request, bus: Bus, tenant: str, video_id: str, ctype: str, budget: int | None = None
) -> Video:
    """Stream the body into the object store, have it probed, announce the upload.
    `budget`: the bytes the tenant may still store (None: no storage quota)."""
    settings = bus.settings
    key = topology.source_key(tenant, video_id)
    filename = (request.headers.get("x-filename") or "")[:255] or None
    limit = settings.max_upload_bytes if budget is None else min(settings.max_upload_bytes, budget)
    body = request.stream()
    multipart = ctype.lower().startswith("multipart/")
    if multipart:
        try:
            part = MultipartFile(ctype)
        except ValueError as exc:
            raise ApiError(400, "bad_multipart", str(exc)) from None
        body = part.stream(body)
    try:
        info = await bus.media.put_stream(key, body, max_bytes=limit)
    except TooLarge:
        if limit < settings.max_upload_bytes:
            raise ApiError(403, "quota_storage", "this upload would pass the tenant's storage quota") from None
        raise ApiError(413, "too_large", f"uploads are limited to {settings.max_upload_bytes} bytes") from None
    except Exception as exc:  # the multipart parser refuses malformed bodies mid-stream
        if type(exc).__module__.startswith("python_multipart"):
            raise ApiError(400, "bad_multipart", str(exc)) from None
        raise
    if multipart:
        if not part.found:
            await bus.media.delete(key)
            raise ApiError(400, "bad_multipart", "no file part in the multipart body (use -F file=@video.mp4)")
        filename = (part.filename or "")[:255] or filename
    if info.size == 0:
        await bus.media.delete(key)
        raise ApiError(400, "empty_body", "the upload is empty")

    return await announce(bus, tenant, video_id, key, filename, ctype)


@api.post("/v1/tokens", responses=schemas.TOKEN, summary="A short-lived read token for media and events URLs (?token=)")
async def mint_token(tenant: Tenant):
    token, expires = tokens.mint(service.settings.api_keys, tenant)
    return JSONResponse(
        {"token": token, "expires_at": expires, "tenant": tenant}, headers={"Cache-Control": "no-store"}
    )


@api.get("/v1/alerts", responses=schemas.ALERTS, summary="Alerts firing now, and the load state behind backpressure")
async def alerts(tenant: Tenant, bus: ConnectedBus):
    return json_response(await bus.request(topology.RPC_MONITOR_ALERTS, GetAlerts(), AlertList, timeout=5))


@api.get("/v1/videos", responses=schemas.LIST, summary="List videos, newest first")
async def list_videos(
    tenant: Tenant,
    bus: ConnectedBus,
    limit: int = Query(20, ge=1, le=100),
    cursor: str | None = Query(None, max_length=64),
):
    page = await bus.request(
        topology.RPC_CATALOG_LIST, ListVideos(tenant=tenant, limit=limit, cursor=cursor), VideoPage
    )
    return json_response(page)


@api.get(
    "/v1/videos/{video_id}", responses=schemas.GET, summary="A video's status, source facts, renditions and thumbnail"
)
async def get_video(video_id: str, tenant: Tenant, bus: ConnectedBus):
    return json_response(await fetch_video(bus, tenant, video_id))


@api.delete("/v1/videos/{video_id}", responses=schemas.DELETE, summary="Delete a video, its media and stop its tasks")
async def delete_video(video_id: str, tenant: Tenant, bus: ConnectedBus):
    check_video_id(video_id)
    video = await bus.request(topology.RPC_CATALOG_DELETE, DeleteVideo(tenant=tenant, video_id=video_id), Video)
    return json_response(video)


api.include_router(playback_router)  # renditions, thumbnail, events: services/gateway/playback.py
api.include_router(streaming_router)  # HLS playlists and CMAF fragments: services/gateway/streaming.py
api.include_router(tus_router)  # resumable uploads and direct-upload URLs: services/gateway/tus.py

# --- the bus as AsyncAPI: public like /openapi.json, built once ------------------------------

_asyncapi: bytes | None = None


@api.get("/asyncapi.json", include_in_schema=False)
async def asyncapi_document():
    global _asyncapi
    if _asyncapi is None:
        # Building it imports the modules of the services that serve requests: off the event loop.
        _asyncapi = (await asyncio.to_thread(asyncapi.render, service.settings)).encode()
    return Response(_asyncapi, media_type="application/json")


# --- the dashboard: one static page, no build step ------------------------------------------

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


@api.get("/", include_in_schema=False)
async def dashboard():
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


# The dashboard's browser packages, served from the npm packages `make install` puts in
# web/node_modules (pinned by web/package-lock.json; in an image the directory settings
# say where), never a copy in the repository. Only these files of each.
@dataclass(frozen=True)
class BrowserPackage:
    setting: str  # the Settings field of its directory
    env: str  # the variable that sets it
    files: tuple[str, ...]
    without: str  # what the dashboard does when it is missing


BROWSER_PACKAGES = {
    # the HLS player, its worker, their source maps
    "hls.js": BrowserPackage(
        "hlsjs_dir",
        "VIDMESH_HLSJS_DIR",
        ("hls.min.js", "hls.worker.js", "hls.min.js.map", "hls.worker.js.map"),
        "the dashboard plays HLS only where the browser has its own player, else the MP4 renditions",
    ),
    # the resumable uploader
    "tus-js-client": BrowserPackage(
        "tusjs_dir",
        "VIDMESH_TUSJS_DIR",
        ("tus.min.js", "tus.min.js.map"),
        "the dashboard uploads each file in one POST, without resuming",
    ),
}


@api.get("/static/{package}/{name}", include_in_schema=False)
async def browser_package(package: str, name: str):
    found = BROWSER_PACKAGES.get(package)
    if found is None or name not in found.files:
        raise ApiError(404, "not_found", f"no file {name!r} here")
    directory = getattr(service.settings, found.setting)
    if not (directory / name).is_file():
        raise ApiError(404, "not_found", f"{package} is not installed at {directory}: run `make install`")
    return FileResponse(directory / name, headers={"Cache-Control": "no-cache"})


@service.on_startup
async def _check_browser_packages(bus: Bus) -> None:
    for package, found in BROWSER_PACKAGES.items():
        directory = getattr(service.settings, found.setting)
        if not (directory / found.files[0]).is_file():
            log.warning(
                "%s is not installed at %s (`make install` runs npm ci in web/; or set %s): %s",
                package,
                directory,
                found.env,
                found.without,
            )


@service.configure_app
def _static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
