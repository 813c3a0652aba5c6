"""Response headers set by route family, as pure ASGI middleware.

Starlette's `@app.middleware("http")` runs every request through a task group and memory
streams; four such layers and a thread-pool hop per request cost the gateway about a
quarter of its CPU under load (bench/README.md, "overhead"). These wrap `send` instead and
touch only the response start.
"""

from __future__ import annotations

from collections.abc import Callable

Headers = dict[str, str]


def _encoded(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class ResponseHeaders:
    """Sets the headers `rule(scope)` returns (None: none) on the response, replacing any of
    the same names the route set. With `preflight`, an OPTIONS request the rule matches is
    answered `204` with the rule's headers plus `preflight`, before authentication (browsers
    send CORS preflights without credentials)."""

    def __init__(self, app, rule: Callable[[dict], Headers | None], preflight: Headers | None = None):
        self.app, self.rule, self.preflight = app, rule, preflight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not (headers := self.rule(scope)):
            return await self.app(scope, receive, send)
        if self.preflight is not None and scope["method"] == "OPTIONS":
            await send(
                {"type": "http.response.start", "status": 204, "headers": _encoded({**headers, **self.preflight})}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        extra = _encoded(headers)
        names = {k for k, _ in extra}

        async def sending(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, sending)
