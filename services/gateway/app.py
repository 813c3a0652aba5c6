"""The gateway's Service and what its route modules share: the error type and its JSON body,
the API-key and read-token dependencies (as route parameter types), the connected bus, the
router of media routes, and one video from the catalog. Imported by service.py and the route
modules; it imports none of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from shared import topology
from shared.bus import Bus, RpcError
from shared.contracts import GetVideo, Probed, ProbeSource, Video, VideoUploaded, encode
from shared.service import Service

from . import declaration, tokens
from .auth import ApiKeys
from .settings import GatewaySettings

service = Service(declaration.DECLARATION, settings=GatewaySettings)
api = service.http
log = logging.getLogger("vidmesh.gateway")

_keys: ApiKeys | None = None


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


RPC_STATUS = {"not_found": 404, "unavailable": 503, "timeout": 504, "bad_request": 400}


# The dependencies are coroutines although they do no I/O: FastAPI runs a plain `def`
# dependency on its thread pool, a hand-off per request that cost the gateway about a
# tenth of its CPU under load (bench/README.md, "overhead").


async def authenticate(request: Request) -> str:
    return _tenant_of_key(request)


def _tenant_of_key(request: Request) -> str:
    global _keys
    if _keys is None:
        _keys = ApiKeys(service.settings.api_keys)
    found = _keys.tenant_for(request.headers.get("authorization"))
    if found is None:
        raise ApiError(
            401, "unauthorized", "missing or invalid API key", {"WWW-Authenticate": 'Bearer realm="vidmesh"'}
        )
    return found


async def authenticate_read(request: Request) -> str:
    """`authenticate`, or for GET/HEAD only a `?token=` from POST /v1/tokens.

    Used on the media and events routes only: a browser's <video>, <img> and EventSource
    cannot send headers. Uploads, lists and deletes still need the header.
    """
    token = request.query_params.get("token")
    if token and request.method in ("GET", "HEAD") and "authorization" not in request.headers:
        tenant = tokens.verify(service.settings.api_keys, token)
        if tenant is None:
            raise ApiError(
                401, "unauthorized", "invalid or expired token", {"WWW-Authenticate": 'Bearer realm="vidmesh"'}
            )
        return tenant
    return _tenant_of_key(request)


async def connected_bus() -> Bus:
    if not service.ready or service.bus is None:
        raise ApiError(503, "not_ready", "the gateway is not connected to NATS yet", {"Retry-After": "1"})
    if not service.bus.nc.is_connected:
        # Fail fast while the server is away (restarting): a request would only time out.
        retry = {"Retry-After": str(service.settings.retry_after_s)}
        raise ApiError(503, "unavailable", "NATS is not connected (reconnecting); nothing was accepted, retry", retry)
    return service.bus


# What a route declares to take the caller's tenant and the bus: the dependencies above,
# named once for every route module.
Tenant = Annotated[str, Depends(authenticate)]
ReadTenant = Annotated[str, Depends(authenticate_read)]
ConnectedBus = Annotated[Bus, Depends(connected_bus)]


class MediaRouter(APIRouter):
    """The router of routes that serve media, which a player may ask for as HEAD too."""

    def get_and_head(self, path: str, **route) -> Callable:
        """Register one endpoint as GET and HEAD of `path` (two routes, each with its own
        operation): HEAD answers the same headers without the body."""

        def register(endpoint: Callable) -> Callable:
            return self.get(path, **route)(self.head(path, **route)(endpoint))

        return register


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json", headers=headers)


async def fetch_video(bus: Bus, tenant: str, video_id: str, after_seq: int = 0) -> Video:
    """The catalog's view of a video; with `after_seq` (the EVENTS sequence of a write this
    gateway made), once the catalog's record holds that write (RpcError not_yet if it does
    not within a few seconds)."""
    check_video_id(video_id)
    ask = GetVideo(tenant=tenant, video_id=video_id, after_seq=after_seq)
    return await bus.request(topology.RPC_CATALOG_GET, ask, Video)


def check_video_id(video_id: str) -> None:
    if not (0 < len(video_id) <= 64 and video_id.isascii() and video_id.isalnum()):  # KV keys: ASCII only
        raise ApiError(404, "not_found", f"no video {video_id}")


PROBE_TIMEOUT_S = 120.0


async def announce(bus: Bus, tenant: str, video_id: str, key: str, filename: str | None, ctype: str | None) -> Video:
    """A stored upload becomes a video: probed (a refusal deletes it: 422 with the probe's
    code), then announced with `video_uploaded` (its msg-id makes a repeat no second event).
    The answer is the catalog's view once its record holds the upload, so a GET or a list
    that follows, through any gateway, shows the video, and the quota admission the caller
    leaves next is already counted in the catalog's usage (unless the catalog does not
    confirm within its wait: then the upload is accepted all the same, logged, and may
    go uncounted for a moment). POST /v1/videos and a completed resumable upload both end
    here."""
    probed = await bus.request(
        topology.RPC_PIPELINE_PROBE,
        ProbeSource(tenant=tenant, video_id=video_id, object=key),
        Probed,
        timeout=PROBE_TIMEOUT_S,
    )
    if probed.error is not None:
        await bus.media.delete(key)
        raise ApiError(422, probed.error.code, probed.error.message)

    event = VideoUploaded(
        video_id=video_id,
        tenant=tenant,
        object=key,
        created_at=time.time(),
        source=probed.source,
        filename=filename,
        content_type=ctype,
    )
    seq = await bus.publish(event, msg_id=f"{video_id}:uploaded")
    try:
        return await fetch_video(bus, tenant, video_id, after_seq=seq)
    except RpcError as exc:  # the upload is stored and announced all the same: accept it
        log.warning("the catalog did not confirm upload %s (sequence %d): %s", video_id, seq, exc)
        # the announced upload as the catalog first shows it
        at = event.created_at
        return Video(
            id=video_id, status="processing", created_at=at, updated_at=at, source=event.source, filename=filename
        )
