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


_REF = "#/components/schemas/{name}"
_, COMPONENTS = msgspec.json.schema_components(
    [Video, VideoPage, Webhook, WebhookPage, DeliveryPage, AlertList, Error, Token], ref_template=_REF
)

ERROR_TEXT = {
    400: "Invalid request (`invalid_request`, `empty_body`, `bad_multipart`, ...)",
    401: "Missing or invalid API key (`unauthorized`; `WWW-Authenticate: Bearer`)",
    403: "Storage quota used up (`quota_storage`)",
    404: "Not found, or another tenant's (`not_found`)",
    409: "Conflict (`upload_in_progress`, `too_many_webhooks`)",
    413: "Body too large (`too_large`)",
    414: "Path or query too long (`uri_too_long`)",
    415: "Not a video content type (`unsupported_media_type`)",
    416: "Range not satisfiable",
    422: "Refused content (probe: `not_media`, `too_large`, ...; webhooks: `invalid_url`, `private_address`)",
    429: "Backpressure or processing quota (`overloaded`, `quota_processing`; `Retry-After`)",
    431: "Too many request headers (`headers_too_large`)",
    503: "Not connected to NATS yet, or a service is missing (`not_ready`, `unavailable`; `Retry-After`)",
    504: "A service did not answer in time (`timeout`)",
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
    {200: _binary("image/jpeg", "The first frame"), 206: _binary("image/jpeg", "A byte range of it"), **MEDIA_OK}, 404, 416
)
PLAYLIST = responses(
    {200: {"description": "An HLS playlist (RFC 8216)", "content": {"application/vnd.apple.mpegurl": {"schema": {"type": "string"}}}}},
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
                    for operation in operations.values():
                        operation["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
