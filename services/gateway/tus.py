"""Resumable uploads: tus 1.0.0 at /v1/uploads (API key), and one-time direct-upload URLs
for a viewer's browser (/v1/direct-uploads/{token}, no key).

The core protocol (OPTIONS, HEAD, PATCH with `application/offset+octet-stream`,
`Tus-Resumable` on every request and response) and the creation, creation-with-upload,
termination, expiration and checksum (sha256) extensions. Bytes and state are kept by
resumable.py; this module speaks HTTP. When the last byte arrives the upload becomes a
video exactly as POST /v1/videos makes one (`announce`: probe, refusals as 422 with the
probe's code, `video_uploaded`), and the answer names it: `Vidmesh-Video-Id`, and on a
PATCH `Location: /v1/videos/<id>`.

A direct upload: POST /v1/direct-uploads (API key) returns a URL holding a random secret.
That URL is a tus endpoint a browser on any origin uses without a key (CORS open, no
credentials): one creation (POST), then HEAD/PATCH/DELETE of the upload it created. It
cannot create a second upload (403 already_used), reads nothing (GET is not a route),
and answers 410 expired for everything once its expiry has passed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import time
from email.utils import formatdate

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from shared.bus import Bus, RpcError

from . import quotas, schemas
from .app import ApiError, ConnectedBus, Tenant, announce, fetch_video, json_response, service
from .headers import ResponseHeaders
from .resumable import DirectUpload, Held, StoreFailed, UploadProblem, Uploads, UploadState
from .schemas import DirectUploadCreated, DirectUploadRequest
from .uploads import new_video_id

log = logging.getLogger("vidmesh.gateway.tus")

router = APIRouter()

# A tus operation is declared alike on an upload (API key) and on a direct-upload URL (no
# key): the same status, request body and answers; the summaries (and a creation's answers,
# which through a URL add 404) are each route's own.
CREATION = {"status_code": 201, "openapi_extra": schemas.TUS_CREATE_BODY}
OFFSET = {"responses": schemas.TUS_HEAD}
APPEND = {"status_code": 204, "openapi_extra": schemas.TUS_PATCH_BODY, "responses": schemas.TUS_PATCH}
TERMINATION = {"status_code": 204, "responses": schemas.TUS_DELETE}

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
OFFSET_TYPE = "application/offset+octet-stream"
CHECKSUMS = ("sha256",)
MAX_METADATA_BYTES = 4096
DIRECT_PATH = re.compile(r"^/v1/direct-uploads/[A-Za-z0-9_-]+/?$")
UPLOAD_PATH = re.compile(r"^/v1/uploads(/[A-Za-z0-9]+)?/?$")
FINISH_WAIT_S = 150.0  # HEAD of an upload another request is turning into a video

# A direct-upload URL is used from a viewer's browser on the customer's page (any origin).
# Its secret is in the URL, so no credentials are involved.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Upload-Offset, Upload-Length, Upload-Expires, Upload-Metadata, "
    "Tus-Resumable, Tus-Version, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm, Vidmesh-Video-Id, "
    "Vidmesh-Upload-Error, Retry-After",
}
PREFLIGHT = {
    "Access-Control-Allow-Methods": "POST, HEAD, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, Upload-Checksum, "
    "Upload-Defer-Length, Upload-Concat, Content-Type, X-HTTP-Method-Override, X-Requested-With",
    "Access-Control-Max-Age": "86400",
}

_uploads: Uploads | None = None


def uploads() -> Uploads:
    if _uploads is None:
        raise ApiError(503, "not_ready", "the gateway is not connected to NATS yet", {"Retry-After": "1"})
    return _uploads


@service.on_startup
async def _start_uploads(bus: Bus) -> None:
    global _uploads
    _uploads = Uploads(bus)
    await _uploads.start()


def tus_headers(scope) -> dict | None:
    """Every answer of the tus routes says the protocol version (errors too); a direct-upload
    URL's answers are open to any origin."""
    path = scope["path"]
    if DIRECT_PATH.match(path):
        return {"Tus-Resumable": TUS_VERSION, **CORS}
    return {"Tus-Resumable": TUS_VERSION} if UPLOAD_PATH.match(path) else None


@service.configure_app
def _tus_middleware(app) -> None:
    app.add_middleware(ResponseHeaders, rule=tus_headers)


# --- parsing ---------------------------------------------------------------------------------


def check_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise ApiError(
            412,
            "unsupported_version",
            f"Tus-Resumable must be {TUS_VERSION} (got {version!r})"
            if version
            else f"Tus-Resumable: {TUS_VERSION} is required",
            {"Tus-Version": TUS_VERSION},
        )


def parse_metadata(raw: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent)."""
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_METADATA_BYTES:
        raise ApiError(400, "invalid_metadata", f"Upload-Metadata is limited to {MAX_METADATA_BYTES} bytes")
    found: dict[str, str] = {}
    for pair in raw.split(","):
        key, _, value = pair.strip().partition(" ")
        value = value.strip()
        if not key or not key.isascii() or any(c.isspace() for c in key) or key in found or " " in value:
            raise ApiError(400, "invalid_metadata", f"Upload-Metadata: bad pair {pair.strip()[:60]!r}")
        try:
            found[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(
                400, "invalid_metadata", f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8"
            ) from None
    return found


def parse_checksum(raw: str | None) -> bytes | None:
    """`Upload-Checksum: sha256 <base64>` -> the digest."""
    if raw is None:
        return None
    algorithm, _, value = raw.strip().partition(" ")
    if algorithm.lower() not in CHECKSUMS:
        raise ApiError(400, "unsupported_checksum", f"checksum algorithm {algorithm!r} is not supported: use sha256")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise ApiError(400, "invalid_checksum", "Upload-Checksum: sha256 needs the base64 of a 32-byte digest")
    return digest


def _int_header(request: Request, name: str, *, required: bool = True) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        if required:
            raise ApiError(400, "invalid_request", f"{name} is required")
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19:
        raise ApiError(400, "invalid_request", f"{name} must be a non-negative integer")
    return int(raw)


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def _has_body(request: Request) -> bool:
    length = _content_length(request)
    return bool(length) or (length is None and "chunked" in request.headers.get("transfer-encoding", "").lower())


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


# --- answers ---------------------------------------------------------------------------------


def upload_headers(state: UploadState, *, completed_by_patch: bool = False) -> dict:
    headers = {"Upload-Offset": str(state.offset), "Cache-Control": "no-store"}
    if state.status == "uploading":
        headers["Upload-Expires"] = http_date(state.expires_at)
    if state.status == "done":
        headers["Vidmesh-Video-Id"] = state.id
        if completed_by_patch:
            headers["Location"] = f"/v1/videos/{state.id}"
    if state.status == "refused" and state.error is not None:
        headers["Vidmesh-Upload-Error"] = state.error.code
    return headers


def _problem(exc: UploadProblem) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.headers)


def _gone(state: UploadState, direct: DirectUpload | None = None) -> None:
    """410 for a terminated or expired upload (or an expired direct-upload URL)."""
    if state.status == "terminated":
        raise ApiError(410, "upload_terminated", f"upload {state.id} was terminated")
    if direct is not None and direct.expires_at <= time.time():
        raise ApiError(410, "expired", "this direct-upload URL has expired")
    if state.status == "uploading" and state.expires_at <= time.time():
        raise ApiError(410, "upload_expired", f"upload {state.id} expired at {http_date(state.expires_at)}")


# --- the routes: API key ---------------------------------------------------------------------


def options_response(direct: bool = False) -> Response:
    settings = service.settings
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        "Tus-Max-Size": str(settings.max_upload_bytes if settings else 0),
    }
    if direct:
        headers.update(PREFLIGHT)
    return Response(status_code=204, headers=headers)


@router.options("/v1/uploads", responses=schemas.TUS_OPTIONS, summary="tus discovery: version, extensions, max size")
async def options_collection():
    return options_response()


@router.options("/v1/uploads/{upload_id}", responses=schemas.TUS_OPTIONS, summary="tus discovery")
async def options_upload(upload_id: str):
    return options_response()


@router.post(
    "/v1/uploads",
    **CREATION,
    responses=schemas.TUS_CREATE,
    summary="Create a resumable upload (tus creation, creation-with-upload)",
)
async def create_upload(request: Request, tenant: Tenant, bus: ConnectedBus):
    return await _create(request, bus, tenant)


@router.head("/v1/uploads/{upload_id}", **OFFSET, summary="An upload's offset (tus HEAD)")
async def head_upload(upload_id: str, request: Request, tenant: Tenant, bus: ConnectedBus):
    check_version(request)
    return await _head(tenant, upload_id)


@router.patch("/v1/uploads/{upload_id}", **APPEND, summary="Append bytes at Upload-Offset (tus PATCH)")
async def patch_upload(upload_id: str, request: Request, tenant: Tenant, bus: ConnectedBus):
    return await _patch(request, bus, tenant, upload_id)


@router.delete("/v1/uploads/{upload_id}", **TERMINATION, summary="Terminate an upload (tus termination)")
async def delete_upload(upload_id: str, request: Request, tenant: Tenant, bus: ConnectedBus):
    check_version(request)
    return await _terminate(bus, tenant, upload_id)


@router.post("/v1/uploads/{upload_id}", include_in_schema=False)
async def override_upload(upload_id: str, request: Request, tenant: Tenant, bus: ConnectedBus):
    """X-HTTP-Method-Override: PATCH/DELETE/HEAD through a POST (clients behind proxies
    that allow only GET and POST)."""
    return await _override(request, bus, tenant, upload_id)


async def _override(request: Request, bus: Bus, tenant: str, upload_id: str, direct: DirectUpload | None = None):
    method = (request.headers.get("x-http-method-override") or "").upper()
    if method == "PATCH":
        return await _patch(request, bus, tenant, upload_id, direct)
    check_version(request)
    if method == "HEAD":
        return await _head(tenant, upload_id, direct)
    if method == "DELETE":
        return await _terminate(bus, tenant, upload_id, direct)
    raise ApiError(405, "method_not_allowed", "POST to an upload needs X-HTTP-Method-Override: PATCH, HEAD or DELETE")


# --- creation ----------------------------------------------------------------------------------


async def _create(request: Request, bus: Bus, tenant: str, direct: tuple[str, DirectUpload, int] | None = None):
    settings = bus.settings
    check_version(request)
    if request.headers.get("upload-defer-length") is not None:
        raise ApiError(400, "invalid_request", "Upload-Defer-Length is not supported: send Upload-Length")
    if request.headers.get("upload-concat") is not None:
        raise ApiError(400, "invalid_request", "Upload-Concat (the concatenation extension) is not supported")
    length = _int_header(request, "upload-length")
    record = direct[1] if direct else None
    limit = settings.max_upload_bytes if record is None else min(settings.max_upload_bytes, record.max_size)
    if length == 0:
        raise ApiError(400, "empty_body", "an upload of 0 bytes cannot be a video")
    if length > limit:
        raise ApiError(413, "too_large", f"uploads are limited to {limit} bytes", {"Tus-Max-Size": str(limit)})
    raw_metadata = request.headers.get("upload-metadata")
    metadata = {**(record.metadata if record else {}), **parse_metadata(raw_metadata)}
    body = _has_body(request)
    if body:
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype != OFFSET_TYPE:
            raise ApiError(415, "unsupported_media_type", f"an upload's bytes are sent as {OFFSET_TYPE}")
    checksum = parse_checksum(request.headers.get("upload-checksum")) if body else None
    from .service import _shed_load  # POST /v1/videos's backpressure (service.py imports this module)

    _shed_load(settings)
    upload_id = new_video_id()
    now = time.time()
    expires_at = now + settings.upload_expiry_s
    if record is not None:
        expires_at = min(expires_at, record.expires_at)
    try:
        await quotas.reserve(bus, tenant, upload_id, length, until=expires_at)
    except quotas.QuotaExceeded as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.headers) from None
    u = uploads()
    try:
        if direct is not None:
            token, record, revision = direct
            if not await u.claim_direct(token, record, revision, upload_id):
                raise ApiError(403, "already_used", "this one-time upload URL has been used already")
        token = secrets.token_hex(8)
        created = await u.create(
            tenant,
            upload_id,
            length,
            metadata=metadata,
            raw_metadata=raw_metadata,
            expires_at=expires_at,
            direct=record.id if record else None,
            lock_token=token if body else None,
        )
    except BaseException:
        await quotas.release(bus, tenant, upload_id)
        raise
    location = request.url.path.rstrip("/") if direct else f"/v1/uploads/{upload_id}"
    headers = {"Location": location, "Upload-Expires": http_date(expires_at)}
    if not body:
        return Response(status_code=201, headers=headers)
    async with u.hold(tenant, upload_id, token, created=created) as held:
        try:
            answer = await _write(request, bus, held, checksum)
        except ApiError as exc:
            # The upload exists: with its URL the client resumes it (or reads why it failed).
            exc.headers = {**(exc.headers or {}), **headers}
            raise
    for name in ("Upload-Offset", "Vidmesh-Video-Id"):
        if name in answer.headers:
            headers[name] = answer.headers[name]
    return Response(status_code=201, headers=headers)


# --- HEAD, PATCH, DELETE ---------------------------------------------------------------------


async def _state(tenant: str, upload_id: str, direct: DirectUpload | None = None) -> tuple[UploadState, int]:
    found = await uploads().load(tenant, upload_id)
    if found is None:
        raise ApiError(404, "not_found", f"no upload {upload_id}")
    _gone(found[0], direct)
    return found


async def _head(tenant: str, upload_id: str, direct: DirectUpload | None = None):
    state, _ = await _state(tenant, upload_id, direct)
    if state.status == "complete":
        state = await _finished(service.bus, tenant, upload_id)
    headers = {**upload_headers(state), "Upload-Length": str(state.length)}
    if state.raw_metadata:
        headers["Upload-Metadata"] = state.raw_metadata
    return Response(status_code=200, headers=headers)


async def _finished(bus: Bus, tenant: str, upload_id: str) -> UploadState:
    """An upload whose bytes are all in but which is no video yet (its final request died
    after the last byte, or is still probing): finish it here, or wait for the request that
    does. HEAD answers only once the outcome is known, so a client that resumes with HEAD
    learns the video (or the refusal) as the final PATCH would have told it."""
    deadline = time.monotonic() + FINISH_WAIT_S
    while True:
        try:
            async with uploads().hold(tenant, upload_id) as held:
                if held.state.status == "complete":
                    await _finish(bus, held)
                return held.state
        except ApiError as exc:
            if exc.status != 422:
                raise
            found = await uploads().load(tenant, upload_id)
            return found[0]
        except UploadProblem as exc:
            if exc.status != 423 or time.monotonic() > deadline:
                raise _problem(exc) from None
        found = await uploads().load(tenant, upload_id)
        if found is None or found[0].status != "complete":
            return found[0] if found else (await _state(tenant, upload_id))[0]


async def _patch(request: Request, bus: Bus, tenant: str, upload_id: str, direct: DirectUpload | None = None):
    check_version(request)
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != OFFSET_TYPE:
        raise ApiError(415, "unsupported_media_type", f"PATCH bodies are {OFFSET_TYPE}, not {ctype or 'nothing'}")
    offset = _int_header(request, "upload-offset")
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    try:
        async with uploads().hold(tenant, upload_id) as held:
            _gone(held.state, direct)
            _check_offset(held.state, offset, _content_length(request))
            return await _write(request, bus, held, checksum)
    except UploadProblem as exc:
        raise _problem(exc) from None


def _check_offset(state: UploadState, offset: int, content_length: int | None) -> None:
    if state.status in ("done", "refused"):
        if offset == state.length and not content_length:
            return  # a repeat of the final PATCH: answered with its outcome, nothing redone
        raise ApiError(
            409, "offset_mismatch", f"upload {state.id} is complete ({state.length} bytes)", upload_headers(state)
        )
    if offset != state.offset:
        raise ApiError(
            409,
            "offset_mismatch",
            f"Upload-Offset is {offset}, the upload is at {state.offset}",
            {"Upload-Offset": str(state.offset)},
        )
    if content_length is not None and offset + content_length > state.length:
        raise ApiError(413, "too_large", f"the body passes Upload-Length ({state.length} bytes)")


async def _write(request: Request, bus: Bus, held: Held, checksum: bytes | None) -> Response:
    """Take the body (the lock is held and the offset checked), then finish the upload if it
    is complete. The answer of the PATCH (or of a creation with upload)."""
    state = held.state
    if state.status in ("done", "refused"):
        return _outcome(state, completed_by_patch=True)  # the final PATCH again: its answer again
    if state.status == "uploading":
        try:
            result = await uploads().patch(held, request.stream(), checksum=checksum)
        except UploadProblem as exc:
            raise _problem(exc) from None
        except StoreFailed as exc:
            log.warning("upload %s: %s", state.key, exc)
            raise ApiError(
                503,
                "unavailable",
                f"the object store did not take the bytes ({exc}); resume from HEAD's offset",
                {"Retry-After": str(bus.settings.retry_after_s)},
            ) from None
        if result.checksum_ok is False:
            if result.ended != "eof":
                raise ApiError(
                    400,
                    "incomplete_body",
                    "the body ended early; nothing of it was kept (Upload-Checksum)",
                    {"Upload-Offset": str(held.state.offset)},
                )
            raise ApiError(
                460,
                "checksum_mismatch",
                "the body does not match Upload-Checksum; nothing of it was kept",
                {"Upload-Offset": str(held.state.offset)},
            )
        if result.ended == "released":
            raise ApiError(
                423,
                "upload_locked",
                "another request took this upload over; what arrived is kept",
                {"Upload-Offset": str(held.state.offset), "Retry-After": "1"},
            )
        if result.ended in ("idle", "disconnect") and held.state.status == "uploading":
            raise ApiError(
                408,
                "request_timeout",
                "the body stopped coming; what arrived is kept",
                {"Upload-Offset": str(held.state.offset)},
            )
    if held.state.status == "complete":
        await _finish(bus, held)
    return _outcome(held.state, completed_by_patch=True)


def _outcome(state: UploadState, completed_by_patch: bool = False) -> Response:
    headers = upload_headers(state, completed_by_patch=completed_by_patch)
    if state.status == "refused" and state.error is not None:
        return JSONResponse(
            {"code": state.error.code, "message": state.error.message}, status_code=422, headers=headers
        )
    return Response(status_code=204, headers=headers)


async def _finish(bus: Bus, held: Held) -> None:
    """The last byte is in: make the video as POST /v1/videos does."""

    async def make_video(state: UploadState):
        try:
            return await fetch_video(bus, state.tenant, state.id)  # announced before a crash
        except RpcError as exc:
            if exc.code != "not_found":
                raise
        try:
            return await announce(
                bus,
                state.tenant,
                state.id,
                state.source,
                state.filename,
                state.metadata.get("filetype") or "application/octet-stream",
            )
        except ApiError as exc:
            raise UploadProblem(exc.status, exc.code, exc.message) from None

    await uploads().finish(held, make_video)
    await quotas.release(bus, held.state.tenant, held.state.id)
    if held.state.status == "refused":
        raise ApiError(422, held.state.error.code, held.state.error.message, upload_headers(held.state))


async def _terminate(bus: Bus, tenant: str, upload_id: str, direct: DirectUpload | None = None):
    await _state(tenant, upload_id, direct)  # 404 or 410 without taking the lock
    try:
        async with uploads().hold(tenant, upload_id) as held:
            _gone(held.state, direct)
            held.state, held.revision = await uploads().terminate(held.state, held.revision)
    except UploadProblem as exc:
        raise _problem(exc) from None
    await quotas.release(bus, tenant, upload_id)
    return Response(status_code=204)


# --- direct uploads --------------------------------------------------------------------------


_direct_request = msgspec.json.Decoder(DirectUploadRequest)


@router.post(
    "/v1/direct-uploads",
    status_code=201,
    openapi_extra=schemas.DIRECT_UPLOAD_BODY,
    responses=schemas.DIRECT_UPLOAD,
    summary="A one-time upload URL for a browser (no API key needed there)",
)
async def create_direct_upload(request: Request, tenant: Tenant, bus: ConnectedBus):
    settings = bus.settings
    raw = await request.body()
    try:
        asked = _direct_request.decode(raw) if raw.strip() else DirectUploadRequest()
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    max_size = settings.max_upload_bytes if asked.max_size is None else asked.max_size
    if not 0 < max_size <= settings.max_upload_bytes:
        raise ApiError(400, "invalid_request", f"max_size must be between 1 and {settings.max_upload_bytes} bytes")
    expires_in = settings.direct_upload_expiry_s if asked.expires_in is None else asked.expires_in
    if not 1 <= expires_in <= settings.upload_expiry_s:
        raise ApiError(400, "invalid_request", f"expires_in must be between 1 and {settings.upload_expiry_s:g} seconds")
    if asked.filename is not None and len(asked.filename) > 255:
        raise ApiError(400, "invalid_request", "filename is limited to 255 characters")
    metadata = {"filename": asked.filename} if asked.filename else {}
    token, record = await uploads().create_direct(
        tenant, expires_at=time.time() + expires_in, max_size=max_size, metadata=metadata
    )
    url = str(request.base_url).rstrip("/") + f"/v1/direct-uploads/{token}"
    created = DirectUploadCreated(id=record.id, url=url, expires_at=record.expires_at, max_size=max_size)
    return json_response(created, 201, {"Cache-Control": "no-store"})


async def _direct(token: str) -> tuple[DirectUpload, int]:
    found = await uploads().load_direct(token)
    if found is None:
        raise ApiError(404, "not_found", "no such direct-upload URL")
    if found[0].expires_at <= time.time():
        raise ApiError(410, "expired", "this direct-upload URL has expired")
    return found


async def _direct_upload(token: str) -> tuple[DirectUpload, str]:
    record, _ = await _direct(token)
    if record.upload_id is None:
        raise ApiError(404, "not_found", "no upload was created with this URL yet: POST to it first (tus creation)")
    return record, record.upload_id


@router.options(
    "/v1/direct-uploads/{token}",
    responses=schemas.TUS_OPTIONS,
    summary="tus discovery and CORS preflight of a direct-upload URL",
)
async def options_direct(token: str):
    return options_response(direct=True)


@router.post(
    "/v1/direct-uploads/{token}",
    **CREATION,
    responses=schemas.DIRECT_CREATE,
    summary="tus creation through a one-time URL (no API key)",
)
async def create_through_direct(token: str, request: Request, bus: ConnectedBus):
    if request.headers.get("x-http-method-override"):
        record, upload_id = await _direct_upload(token)
        return await _override(request, bus, record.tenant, upload_id, record)
    record, revision = await _direct(token)
    if record.upload_id is not None:
        raise ApiError(403, "already_used", "this one-time upload URL has been used already")
    return await _create(request, bus, record.tenant, (token, record, revision))


@router.head("/v1/direct-uploads/{token}", **OFFSET, summary="The offset of the upload a direct-upload URL created")
async def head_direct(token: str, request: Request, bus: ConnectedBus):
    record, upload_id = await _direct_upload(token)
    check_version(request)
    return await _head(record.tenant, upload_id, record)


@router.patch("/v1/direct-uploads/{token}", **APPEND, summary="Append bytes through a direct-upload URL")
async def patch_direct(token: str, request: Request, bus: ConnectedBus):
    record, upload_id = await _direct_upload(token)
    return await _patch(request, bus, record.tenant, upload_id, record)


@router.delete("/v1/direct-uploads/{token}", **TERMINATION, summary="Terminate the upload a direct-upload URL created")
async def delete_direct(token: str, request: Request, bus: ConnectedBus):
    record, upload_id = await _direct_upload(token)
    check_version(request)
    return await _terminate(bus, record.tenant, upload_id, record)
