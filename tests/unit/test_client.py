"""The CLI's HTTP client without a mesh: SSE framing, upload retries, resumable downloads."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from services import client as cl


def test_parse_sse_frames_events_and_skips_keep_alives():
    lines = [
        ": keep-alive", "",
        "event: rendition_progress", "id: 7", 'data: {"rendition": "360p",', 'data: "percent": 50}', "",
        "event: video_ready", "data: {}", "",
        "data: not json", "",
    ]
    assert list(cl.parse_sse(iter(lines))) == [
        ("rendition_progress", {"rendition": "360p", "percent": 50}, "7"),
        ("video_ready", {}, None),
        ("message", {"raw": "not json"}, None),
    ]


def test_errors_carry_the_servers_code_and_message():
    transport = httpx.MockTransport(
        lambda r: httpx.Response(404, json={"code": "not_found", "message": "no video x"})
    )
    with cl.Client("http://gw", "k", transport=transport) as c, pytest.raises(cl.ApiError) as caught:
        c.video("x")
    assert (caught.value.code, caught.value.message, caught.value.status) == ("not_found", "no video x", 404)

    html = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with cl.Client("http://gw", "k", transport=html) as c, pytest.raises(cl.ApiError) as caught:
        c.videos()
    assert caught.value.code == "http_502"


def test_upload_retries_a_shed_request_with_the_same_idempotency_key(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(cl.time, "sleep", slept.append)
    seen = []

    def handler(request: httpx.Request):
        seen.append((request.headers.get("idempotency-key"), len(request.read())))
        if len(seen) == 1:
            return httpx.Response(429, json={"code": "overloaded", "message": "busy"}, headers={"Retry-After": "3"})
        return httpx.Response(202, json={"id": "v1", "status": "processing", "source": {"size": 5}})

    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 5000)
    with cl.Client("http://gw", "k", transport=httpx.MockTransport(handler)) as c:
        assert cl._upload_one(c, path, as_json=True)["id"] == "v1"
    assert slept == [3.0]
    assert seen[0][0] and seen[0] == seen[1]  # same key, whole body both times
    assert seen[0][1] > 5000


class Rendition:
    """A rendition served with ETag and Range, like the gateway's media route."""

    def __init__(self, body: bytes):
        self.body, self.requests = body, []

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        headers = {"ETag": self.etag, "Accept-Ranges": "bytes"}
        rng, if_range = request.headers.get("range"), request.headers.get("if-range")
        if rng and (if_range is None or if_range == self.etag):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            part = self.body[start:]
            headers["Content-Range"] = f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
            return httpx.Response(206, content=b"" if request.method == "HEAD" else part, headers=headers)
        headers["Content-Length"] = str(len(self.body))
        return httpx.Response(200, content=b"" if request.method == "HEAD" else self.body, headers=headers)


def test_download_resumes_from_a_part_of_the_same_content(tmp_path):
    server = Rendition(bytes(range(256)) * 100)
    target = tmp_path / "v.mp4"
    cl.part_path(target, server.etag).write_bytes(server.body[:1000])
    with cl.Client("http://gw", "k", transport=httpx.MockTransport(server)) as c:
        result = cl.download(c, "v", "360p", target)
    assert result["resumed_from"] == 1000 and target.read_bytes() == server.body
    assert server.requests[-1].headers["range"] == "bytes=1000-"
    assert server.requests[-1].headers["if-range"] == server.etag
    assert not list(tmp_path.glob("*.part"))


def test_download_starts_over_when_the_content_changed(tmp_path):
    server = Rendition(b"old" * 1000)
    target = tmp_path / "v.mp4"
    cl.part_path(target, '"an-older-etag"').write_bytes(b"older")  # a stale part: removed
    cl.part_path(target, server.etag).write_bytes(server.body[:500])
    respond = server.__call__

    def changes_after_head(request):  # re-encoded between the HEAD and the GET
        response = respond(request)
        if request.method == "HEAD":
            server.body = b"new" * 1200
        return response

    with cl.Client("http://gw", "k", transport=httpx.MockTransport(changes_after_head)) as c:
        result = cl.download(c, "v", "360p", target)
    assert server.requests[-1].headers["range"] == "bytes=500-"  # asked to resume ...
    assert result["resumed_from"] == 0 and target.read_bytes() == b"new" * 1200  # ... got it whole
    assert not list(tmp_path.glob("*.part"))
