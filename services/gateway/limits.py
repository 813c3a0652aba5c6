"""Request limits for every route of the gateway (pure ASGI: no fastapi import).

Checked before a route runs, answered with the API's JSON errors:
- `431 headers_too_large`: more than VIDMESH_MAX_HEADER_COUNT headers, or more than
  VIDMESH_MAX_HEADER_BYTES of them (uvicorn's `h11_max_incomplete_event_size`, set to the
  same, bounds what it buffers of a head still arriving);
- `414 uri_too_long`: a path over 2 KiB or a query over VIDMESH_MAX_QUERY_BYTES;
- `413 too_large`: a body over VIDMESH_MAX_JSON_BYTES on any route but the upload (which
  streams up to VIDMESH_MAX_UPLOAD_BYTES and checks it itself). Such a body is read here,
  bounded, and handed on; a longer one is refused as soon as it passes the limit, and one
  that does not arrive within BODY_TIMEOUT_S is `408 request_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

MAX_PATH_BYTES = 2048
BODY_TIMEOUT_S = 30.0
UPLOAD = ("POST", "/v1/videos")
# The bytes of a resumable upload (tus PATCH, creation with upload, a POST with
# X-HTTP-Method-Override) stream to the store, bounded by the upload's Upload-Length.
STREAMED = re.compile(r"^/v1/(uploads(/[^/]+)?|direct-uploads/[^/]+)/?$")


def streams_body(method: str, path: str) -> bool:
    if (method, path.rstrip("/")) == UPLOAD:
        return True
    return method in ("PATCH", "POST") and bool(STREAMED.match(path))


def _error(status: int, code: str, message: str) -> tuple[dict, dict]:
    body = json.dumps({"code": code, "message": message}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class RequestLimits:
    def __init__(self, app, settings: Callable[[], object]):
        self.app = app
        self.settings = settings  # read per request: the settings are loaded in the lifespan

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s = self.settings()
        refusal = None
        if s is not None:
            headers = scope.get("headers", ())
            if len(headers) > s.max_header_count:
                refusal = (431, "headers_too_large", f"at most {s.max_header_count} request headers")
            elif sum(len(k) + len(v) for k, v in headers) > s.max_header_bytes:
                refusal = (431, "headers_too_large", f"request headers are limited to {s.max_header_bytes} bytes")
            elif len(scope.get("raw_path") or scope["path"].encode()) > MAX_PATH_BYTES:
                refusal = (414, "uri_too_long", f"the path is limited to {MAX_PATH_BYTES} bytes")
            elif len(scope.get("query_string", b"")) > s.max_query_bytes:
                refusal = (414, "uri_too_long", f"the query string is limited to {s.max_query_bytes} bytes")
        if refusal is None and s is not None and not streams_body(scope["method"], scope["path"]):
            receive, refusal = await self._bounded_body(scope, receive, s.max_json_bytes)
        if refusal is not None:
            start, body = _error(*refusal)
            await send(start)
            await send(body)
            return
        return await self.app(scope, receive, send)

    async def _bounded_body(self, scope, receive, limit: int):
        """Read the body (at most `limit` bytes) before the route does; replay it."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return receive, (413, "too_large", f"request bodies are limited to {limit} bytes here")
                except ValueError:
                    return receive, (400, "invalid_request", "Content-Length is not a number")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        chunks.append(message)  # http.disconnect: pass it on
                        break
                    size += len(message.get("body", b""))
                    if size > limit:
                        return receive, (413, "too_large", f"request bodies are limited to {limit} bytes here")
                    chunks.append(message)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            return receive, (408, "request_timeout", f"the request body did not arrive within {BODY_TIMEOUT_S:g} s")
        body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            if replay:
                return replay.pop()
            return await receive()  # after the body: wait for the disconnect, as usual

        return replayed, None
