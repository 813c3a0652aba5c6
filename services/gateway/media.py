"""Serving media and progress: HTTP Range arithmetic and Server-Sent Events framing (pure)."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range -> (start, end inclusive); None means the whole body.

    Several ranges at once are answered with the whole body (allowed by RFC 9110), which
    is what video players never ask for anyway.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - length), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        raise RangeNotSatisfiable()
    return start, end


def sse(event: str, data: bytes, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id:
        lines.append(f"id: {event_id}")
    head = "\n".join(lines).encode()
    body = b"\n".join(b"data: " + line for line in data.split(b"\n"))
    return head + b"\n" + body + b"\n\n"


def event_name(type_tag: str) -> str:
    """`transcoder.chunk_progress.v1` -> `chunk_progress`: the event name on the SSE stream."""
    parts = type_tag.split(".")
    return parts[1] if len(parts) >= 3 else type_tag
