"""Upload bodies as async byte streams: raw bodies pass through, multipart is parsed on
the fly (python-multipart's push parser), so no upload is ever held whole in memory or
spooled to disk by the gateway."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

ACCEPTED_TYPES = ("video/", "application/octet-stream", "multipart/form-data")

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_video_id() -> str:
    """26 characters: 48 bits of milliseconds then 80 random bits (ULID layout).

    Sorting ids sorts videos by creation time (the catalog lists newest first by key order)
    and the random part makes ids unguessable.
    """
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def accepted(content_type: str | None) -> bool:
    ctype = (content_type or "").split(";")[0].strip().lower()
    return any(ctype.startswith(prefix) for prefix in ACCEPTED_TYPES)


class MultipartFile:
    """Streams the first file part (or the part named `file`) of a multipart body."""

    def __init__(self, content_type: str):
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise ValueError("multipart body without a boundary")
        self.filename: str | None = None
        self.content_type: str | None = None
        self.found = False
        self._pieces: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._in_file = False
        self._done_file = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self):
        self._headers = {}

    def _header_field(self, data, start, end):
        self._field += data[start:end]

    def _header_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self):
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        is_file = b"filename" in params or params.get(b"name") == b"file"
        self._in_file = is_file and not self._done_file
        if self._in_file:
            self.found = True
            name = params.get(b"filename")
            self.filename = name.decode(errors="replace") if name else None
            ctype = self._headers.get(b"content-type")
            self.content_type = ctype.decode(errors="replace") if ctype else None

    def _part_data(self, data, start, end):
        if self._in_file:
            self._pieces.append(bytes(data[start:end]))

    def _part_end(self):
        if self._in_file:
            self._done_file = True
        self._in_file = False

    async def stream(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            self._parser.write(chunk)
            if self._pieces:
                pieces, self._pieces = self._pieces, []
                for piece in pieces:
                    yield piece
        self._parser.finalize()
        for piece in self._pieces:
            yield piece
        self._pieces = []
