"""The gateway's OpenAPI responses: what each route answers, as JSON Schema.

The routes return msgspec-encoded bytes (`Response`), so FastAPI cannot infer response
models; these are written from the msgspec Structs themselves
(`msgspec.json.schema_components`), so `/openapi.json` documents every status and body a
route can answer and a conformance fuzzer (schemathesis, tests/e2e/test_fuzz.py) can check
each answer against it. `install(app)` adds the components to the generated schema.
"""

from __future__ import annotations

import msgspec

from shared.contracts import AlertList, DeliveryPage, Video, VideoPage, Webhook, WebhookPage


class Error(msgspec.Struct, frozen=True, kw_only=True):
    """Every error: a stable code and a human message."""

    code: str
    message: str


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """A short-lived read token for media and events URLs (`?token=`)."""

    token: str
    expires_at: int
    tenant: str


class DirectUploadRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a one-time upload URL allows (every field optional)."""

    max_size: int | None = None  # bytes; default and at most VIDMESH_MAX_UPLOAD_BYTES
    expires_in: float | None = None  # seconds; default VIDMESH_DIRECT_UPLOAD_EXPIRY_S
    filename: str | None = None  # the video's filename unless the upload's metadata names one


class DirectUploadCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A one-time tus endpoint for a browser: no API key, one upload, until `expires_at`."""

    id: str
    url: str
    expires_at: float
    max_size: int


_REF = "#/components/schemas/{name}"
_, COMPONENTS = msgspec.json.schema_components(
    [
        Video,
        VideoPage,
        Webhook,
        WebhookPage,
        DeliveryPage,
        AlertList,
        Error,
        Token,
        DirectUploadRequest,
        DirectUploadCreated,
    ],
    ref_template=_REF,
)

ERROR_TEXT = {
    400: "Invalid request (`invalid_request`, `empty_body`, `bad_multipart`, ...)",
    401: "Missing or invalid API key (`unauthorized`; `WWW-Authenticate: Bearer`)",
    403: "Storage quota used up (`quota_storage`); a one-time upload URL used already (`already_used`)",
    404: "Not found, or another tenant's (`not_found`)",
    408: "The upload's body stopped coming (`request_timeout`; what arrived is kept)",
    409: "Conflict (`upload_in_progress`, `too_many_webhooks`, `offset_mismatch`)",
    410: "An upload terminated or expired, a direct-upload URL expired (`upload_terminated`, `upload_expired`, `expired`)",
    412: "Tus-Resumable missing or not 1.0.0 (`unsupported_version`; `Tus-Version`)",
    413: "Body too large (`too_large`)",
    414: "Path or query too long (`uri_too_long`)",
    415: "Not a video content type (`unsupported_media_type`)",
    416: "Range not satisfiable",
    422: "Refused content (probe: `not_media`, `too_large`, ...; webhooks: `invalid_url`, `private_address`)",
    423: "Another request is writing this upload and did not let go (`upload_locked`; `Retry-After`)",
    429: "Backpressure or processing quota (`overloaded`, `quota_processing`; `Retry-After`)",
    431: "Too many request headers (`headers_too_large`)",
    503: "Not connected to NATS yet, or a service is missing (`not_ready`, `unavailable`; `Retry-After`)",
    504: "A service did not answer in time (`timeout`)",
    460: "The PATCH body does not match Upload-Checksum (`checksum_mismatch`; nothing of it kept)",
}
COMMON = (400, 401, 413, 414, 431, 503, 504)  # any route: limits, auth, the mesh being away


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}}


def _binary(media_type: str, description: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


def responses(ok: dict[int, dict], *errors: int) -> dict:
    """`responses=` of one route: its successes, then the common and its own errors."""
    out: dict = dict(ok)
    for status in sorted(set(COMMON) | set(errors)):
        if status == 416:
            out[status] = {"description": ERROR_TEXT[416]}
        else:
            out[status] = _json("Error", ERROR_TEXT[status])
    return out


VIDEO = _json("Video", "The video")
MEDIA_OK = {304: {"description": "Not modified (`If-None-Match`)"}}

UPLOAD = responses({202: _json("Video", "Accepted: processing starts (`Location`)")}, 403, 409, 415, 422, 429)
LIST = responses({200: _json("VideoPage", "Newest first; `next_cursor` for the next page")})
GET = responses({200: VIDEO}, 404)
DELETE = responses({200: _json("Video", "The video, now `deleted`")}, 404)
RENDITION = responses(
    {200: _binary("video/mp4", "The rendition"), 206: _binary("video/mp4", "A byte range of it"), **MEDIA_OK}, 404, 416
)
THUMBNAIL = responses(
    {200: _binary("image/jpeg", "The first frame"), 206: _binary("image/jpeg", "A byte range of it"), **MEDIA_OK},
    404,
    416,
)
PLAYLIST = responses(
    {
        200: {
            "description": "An HLS playlist (RFC 8216)",
            "content": {"application/vnd.apple.mpegurl": {"schema": {"type": "string"}}},
        }
    },
    404,
)
INIT_SEGMENT = responses({200: _binary("video/mp4", "A CMAF init segment"), **MEDIA_OK}, 404, 416)
MEDIA_SEGMENT = responses({200: _binary("video/iso.segment", "A CMAF fragment"), **MEDIA_OK}, 404, 416)
EVENTS = responses(
    {200: {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}, 404
)
TOKEN = responses({200: _json("Token", "A read token")})
ALERTS = responses({200: _json("AlertList", "Alerts firing now and the load state")})
WEBHOOK_CREATE = responses({201: _json("Webhook", "Created; `secret` is shown this once")}, 409, 422)
WEBHOOK_LIST = responses({200: _json("WebhookPage", "The tenant's webhooks")})
WEBHOOK_GET = responses({200: _json("Webhook", "The webhook")}, 404)
WEBHOOK_DELETE = responses({204: {"description": "Deleted"}}, 404)
WEBHOOK_DELIVERIES = responses({200: _json("DeliveryPage", "Recent deliveries")}, 404)


def install(app) -> None:
    """Add the Structs' schemas to the app's generated OpenAPI document."""
    generate = app.openapi

    def openapi():  # called once; FastAPI caches the result in app.openapi_schema
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(COMPONENTS)
            # every /v1 route takes `Authorization: Bearer <API key>` (the docs' Authorize button)
            components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for method, operation in operations.items():
                        is_open = path in OPEN_PATHS or method in OPEN_METHODS
                        operation["security"] = [] if is_open else [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


# --- resumable uploads (tus 1.0.0, services/gateway/tus.py) ---------------------------------------


def _headers(*names: str) -> dict:
    return {name: {"schema": {"type": "string"}, "description": TUS_HEADERS[name]} for name in names}


TUS_HEADERS = {
    "Tus-Resumable": "The protocol version, 1.0.0 (every answer)",
    "Tus-Version": "Versions supported: 1.0.0",
    "Tus-Extension": "creation, creation-with-upload, termination, expiration, checksum",
    "Tus-Max-Size": "The largest Upload-Length taken",
    "Tus-Checksum-Algorithm": "sha256",
    "Location": "The upload's URL (creation); the video's (the PATCH that completed it)",
    "Upload-Offset": "Bytes stored",
    "Upload-Length": "The upload's size",
    "Upload-Expires": "When an incomplete upload expires (RFC 9110 date)",
    "Upload-Metadata": "As sent at creation",
    "Vidmesh-Video-Id": "The video the complete upload became",
    "Vidmesh-Upload-Error": "The probe's code when the complete upload was refused",
}
_OFFSET_BODY = {"schema": {"type": "string", "format": "binary"}}
TUS_CREATE_BODY = {"requestBody": {"required": False, "content": {"application/offset+octet-stream": _OFFSET_BODY}}}
TUS_PATCH_BODY = {"requestBody": {"required": True, "content": {"application/offset+octet-stream": _OFFSET_BODY}}}
DIRECT_UPLOAD_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="DirectUploadRequest")}}},
    }
}
TUS_OPTIONS = responses(
    {
        204: {
            "description": "What the server supports",
            "headers": _headers(
                "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm"
            ),
        }
    }
)
_CREATED = {
    201: {
        "description": "Created: `Location` is the upload's URL; with a body, `Upload-Offset` (and "
        "`Vidmesh-Video-Id` when the body completed it)",
        "headers": _headers("Location", "Upload-Expires", "Upload-Offset", "Vidmesh-Video-Id"),
    }
}
_WRITE_ERRORS = (403, 408, 409, 410, 412, 413, 415, 422, 423, 429, 460)
TUS_CREATE = responses(_CREATED, *_WRITE_ERRORS)
DIRECT_CREATE = responses(_CREATED, 404, *_WRITE_ERRORS)
_HEAD_OK = {
    200: {
        "description": "The upload's offset (no body); once complete, the video it became",
        "headers": _headers(
            "Upload-Offset",
            "Upload-Length",
            "Upload-Expires",
            "Upload-Metadata",
            "Vidmesh-Video-Id",
            "Vidmesh-Upload-Error",
        ),
    }
}
TUS_HEAD = responses(_HEAD_OK, 404, 410, 412, 423)
_PATCHED = {
    204: {
        "description": "Stored: `Upload-Offset`; the PATCH that completes the upload names the video "
        "(`Location`, `Vidmesh-Video-Id`)",
        "headers": _headers("Upload-Offset", "Upload-Expires", "Location", "Vidmesh-Video-Id"),
    }
}
TUS_PATCH = responses(_PATCHED, 404, 408, 409, 410, 412, 413, 415, 422, 423, 460)
TUS_DELETE = responses(
    {204: {"description": "Terminated: its bytes are gone, the URL answers 410"}}, 404, 410, 412, 423
)
DIRECT_UPLOAD = responses({201: _json("DirectUploadCreated", "A one-time upload URL (`url`) for a browser")})
# Routes a one-time URL opens (its secret is the credential) and tus discovery: no API key.
OPEN_PATHS = ("/v1/direct-uploads/{token}",)
OPEN_METHODS = ("options",)
