"""The CLI's HTTP client without a mesh: SSE framing, upload retries, resumable downloads."""

from __future__ import annotations

import functools
import hashlib
import json

import httpx
import pytest

from services import client as cl


def test_parse_sse_frames_events_and_skips_keep_alives():
    lines = [
        ": keep-alive",
        "",
        "event: chunk_progress",
        "id: 7",
        'data: {"chunk": 2,',
        'data: "segments": 3}',
        "",
        "event: video_ready",
        "data: {}",
        "",
        "data: not json",
        "",
    ]
    assert list(cl.parse_sse(iter(lines))) == [
        ("chunk_progress", {"chunk": 2, "segments": 3}, "7"),
        ("video_ready", {}, None),
        ("message", {"raw": "not json"}, None),
    ]


# --- per-rendition progress from the chunked pipeline's events -------------------------------

V = "01m8testvideo0000000000abc"
PLANNED = {
    "renditions": [{"name": "720p", "width": 1280, "height": 720}, {"name": "360p", "width": 640, "height": 360}],
    "thumbnail": True,
    "chunks": 3,
    "segments": 6,
    "segment_s": 2.0,
    "audio": True,
}


def seg(index: int, size: int = 1000) -> dict:
    return {"index": index, "start": 2.0 * index, "duration": 2.0, "sizes": {"720p": 3 * size, "360p": size}}


def chunk_encoded(chunk: int, *indices: int) -> dict:
    return {"chunk": chunk, "segments": [seg(i) for i in indices], "inits": {}, "codecs": {"720p": "avc1.64001f"}}


def stitched(rendition: str, size: int) -> dict:
    w, h = (1280, 720) if rendition == "720p" else (640, 360)
    return {
        "rendition": rendition,
        "object": "x",
        "width": w,
        "height": h,
        "size": size,
        "duration": 12.0,
        "has_audio": True,
    }


def test_renditions_advance_together_by_segments_encoded_and_finish_when_stitched():
    p = cl.VideoProgress()
    p.apply("video_planned", PLANNED)
    assert p.tracks == ["720p", "360p", "audio", "thumbnail"]
    assert [p.state(t) for t in p.tracks] == ["queued"] * 4 and p.percent("720p") == 0

    p.apply("chunk_progress", {"chunk": 0, "segments": 1})
    p.apply("chunk_progress", {"chunk": 2, "segments": 1})
    assert p.percent("720p") == p.percent("360p") == pytest.approx(100 * 2 / 6)
    assert p.state("360p") == "encoding 2/6 segments"

    p.apply("chunk_encoded", chunk_encoded(0, 0, 1))
    p.apply("chunk_progress", {"chunk": 0, "segments": 1})  # a replayed sample: the final count holds
    p.apply("chunk_progress", {"chunk": 2, "segments": 0})  # an older sample: never backwards
    assert p.percent("720p") == pytest.approx(100 * 3 / 6)

    p.apply("chunk_encoded", chunk_encoded(2, 4))  # the plan expected one segment more than there is
    p.apply("chunk_encoded", chunk_encoded(1, 2, 3))
    # every chunk is in: all that is left is the stitch, never 100 % before it
    assert (p.percent("720p"), p.state("720p")) == (99.0, "stitching")

    p.apply("audio_encoded", {"segments": [seg(i) for i in range(5)], "codec": "mp4a.40.2", "priming": 1024})
    p.apply("thumbnail_extracted", {"object": "t", "width": 640, "height": 360})
    p.apply("rendition_stitched", stitched("720p", 3 * 1024 * 1024))
    assert (p.percent("720p"), p.state("720p")) == (100.0, "done 3.0 MiB")
    assert (p.percent("360p"), p.state("360p")) == (99.0, "stitching")
    assert [p.state(t) for t in ("audio", "thumbnail")] == ["done", "done"]


def test_one_chunk_without_progress_samples_goes_from_queued_to_done():
    # a short or uncuttable video: one chunk, and it may finish before its first sample
    p = cl.VideoProgress()
    p.apply("video_planned", {**PLANNED, "chunks": 1, "segments": 1, "audio": False})
    assert p.tracks == ["720p", "360p", "thumbnail"]
    p.apply("chunk_encoded", chunk_encoded(0, 0))
    assert p.state("360p") == "stitching"
    p.apply("rendition_stitched", stitched("360p", 2048))
    assert (p.percent("360p"), p.state("360p")) == (100.0, "done 2.0 KiB")


def test_a_failed_task_marks_what_it_holds_back():
    p = cl.VideoProgress()
    p.apply("video_planned", PLANNED)
    p.apply("chunk_encoded", chunk_encoded(0, 0, 1))
    error = {"code": "bad_media", "message": "chunk:1: bad_media: the video stops at 2.50 s of 12.00 s"}
    p.apply("task_failed", {"task": "chunk:1", "error": error})
    assert p.state("720p") == p.state("360p") == "failed: chunk:1 bad_media"
    assert p.state("audio") == "queued"
    p.apply("task_failed", {"task": "audio", "error": {"code": "bad_media", "message": "audio: bad_media: x"}})
    assert p.state("audio") == "failed: audio bad_media"
    assert p.percent("720p") == pytest.approx(100 * 2 / 6)  # what was encoded stays shown


def test_error_text_names_the_task_and_the_code_once():
    error = {"code": "bad_media", "message": "chunk:1: bad_media: the video stops at 2.50 s"}
    assert cl._error_text(error) == "bad_media: chunk:1: the video stops at 2.50 s"
    assert cl._error_text(error, "chunk:1") == "bad_media: the video stops at 2.50 s"
    mismatch = {"code": "encode_mismatch", "message": "chunk:2: its 720p init segment differs from another chunk's"}
    assert cl._error_text(mismatch) == "encode_mismatch: chunk:2: its 720p init segment differs from another chunk's"


class Gateway:
    """The gateway's upload, video and events routes, with a scripted event history."""

    def __init__(self, history: list[tuple[str, dict]], final: dict):
        self.history, self.final = history, final

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/videos":
            request.read()
            return httpx.Response(202, json={"id": V, "status": "processing", "source": {"size": 5}})
        if path == f"/v1/videos/{V}/events":
            body = "".join(
                f"event: {name}\nid: {n}\ndata: {json.dumps({'video_id': V, **data})}\n\n"
                for n, (name, data) in enumerate(self.history, 1)
            )
            return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})
        if path == f"/v1/videos/{V}":
            return httpx.Response(200, json=self.final)
        return httpx.Response(404, json={"code": "not_found", "message": path})


def run_upload_wait(monkeypatch, tmp_path, gateway: Gateway):
    from typer.testing import CliRunner

    from services.cli import cli

    monkeypatch.setattr(cl, "Client", functools.partial(cl.Client, transport=httpx.MockTransport(gateway)))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x" * 5000)
    env = {"VIDMESH_URL": "http://gw", "VIDMESH_API_KEY": "k", "COLUMNS": "200"}
    return CliRunner().invoke(cli, ["upload", str(clip), "--wait"], env=env)


def test_upload_wait_shows_a_bar_per_rendition_and_why_a_task_failed(monkeypatch, tmp_path):
    error = {"code": "bad_media", "message": "chunk:1: bad_media: the video stops at 2.50 s of 12.00 s"}
    history = [
        ("video_planned", PLANNED),
        ("chunk_progress", {"chunk": 0, "segments": 1}),
        ("chunk_encoded", chunk_encoded(0, 0, 1)),
        ("audio_encoded", {"segments": [seg(i) for i in range(6)], "codec": "mp4a.40.2", "priming": 1024}),
        ("task_failed", {"task": "chunk:1", "error": error}),
        ("video_failed", {"error": error}),
    ]
    final = {"id": V, "status": "failed", "error": error, "renditions": []}
    result = run_upload_wait(monkeypatch, tmp_path, Gateway(history, final))
    assert result.exit_code == 3, result.output
    assert f"failed {V}: bad_media: chunk:1: the video stops at 2.50 s of 12.00 s" in result.stdout
    bars = {line.split()[1]: line for line in result.stderr.splitlines() if line.startswith(V[-8:])}
    assert set(bars) == {"720p", "360p", "audio", "thumbnail"}, result.stderr
    for rendition in ("720p", "360p"):  # 2 of 6 segments were encoded before chunk 1 failed
        assert "33%" in bars[rendition] and "failed: chunk:1 bad_media" in bars[rendition]
    assert "100%" in bars["audio"] and "done" in bars["audio"]
    assert "not done" in bars["thumbnail"]  # the video failed before it was extracted
    assert f"{V}: task chunk:1 failed: bad_media: the video stops at 2.50 s of 12.00 s" in result.stderr
    assert "Traceback" not in result.stderr


def test_upload_wait_ends_with_every_rendition_done(monkeypatch, tmp_path):
    history = [
        ("video_planned", {**PLANNED, "chunks": 2, "segments": 3, "audio": False}),
        ("chunk_progress", {"chunk": 1, "segments": 1}),
        ("chunk_encoded", chunk_encoded(1, 1, 2)),
        ("chunk_encoded", chunk_encoded(0, 0)),
        ("rendition_stitched", stitched("720p", 5 * 1024 * 1024)),
        ("thumbnail_extracted", {"object": "t", "width": 640, "height": 360}),
        ("rendition_stitched", stitched("360p", 1024 * 1024)),
        ("video_ready", {}),
    ]
    final = {"id": V, "status": "ready", "renditions": [{"name": "720p"}, {"name": "360p"}]}
    result = run_upload_wait(monkeypatch, tmp_path, Gateway(history, final))
    assert result.exit_code == 0, result.output
    assert f"ready {V}: 720p 360p" in result.stdout
    bars = {line.split()[1]: line for line in result.stderr.splitlines() if line.startswith(V[-8:])}
    assert "100%" in bars["720p"] and "done 5.0 MiB" in bars["720p"]
    assert "100%" in bars["360p"] and "done 1.0 MiB" in bars["360p"]
    assert "audio" not in bars and "done" in bars["thumbnail"]


def test_events_summarise_the_chunked_pipeline():
    assert cl._event_summary("video_planned", PLANNED) == "720p 360p, 3 chunks, 6 segments of 2 s, audio, thumbnail"
    assert cl._event_summary("chunk_progress", {"chunk": 2, "segments": 1}) == "chunk 2: 1 segment encoded"
    assert (
        cl._event_summary("chunk_encoded", chunk_encoded(1, 2, 3)) == "chunk 1: segments 2-3, every rendition, 7.8 KiB"
    )
    assert cl._event_summary("rendition_stitched", stitched("360p", 2048)) == "360p 640x360 2.0 KiB, 12.0 s"
    failed = {
        "task": "stitch",
        "error": {"code": "retries_exhausted", "message": "stitch: no worker finished it in 5 attempts"},
    }
    assert cl._event_summary("task_failed", failed) == "stitch: retries_exhausted: no worker finished it in 5 attempts"


def test_errors_carry_the_servers_code_and_message():
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"code": "not_found", "message": "no video x"}))
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


# --- vidmesh url: a link any player can open ------------------------------------------------


def run_cli(monkeypatch, handler, *args: str):
    from typer.testing import CliRunner

    from services.cli import cli

    monkeypatch.setattr(cl, "Client", functools.partial(cl.Client, transport=httpx.MockTransport(handler)))
    env = {"VIDMESH_URL": "http://gw:8080/", "VIDMESH_API_KEY": "k", "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env)


def hls_gateway(playable: bool, seen: list):
    master = f"/v1/videos/{V}/hls/master.m3u8"
    video = {
        "id": V,
        "status": "processing",
        "created_at": 0,
        "updated_at": 0,
        "renditions": [],
        "playable": playable,
        "playback": {"hls": master} if playable else None,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.url.path == f"/v1/videos/{V}":
            return httpx.Response(200, json=video)
        if request.method == "POST" and request.url.path == "/v1/tokens":
            return httpx.Response(200, json={"token": "alice.99.s+g/=", "expires_at": 99, "tenant": "alice"})
        if request.url.path == master and not playable:
            return httpx.Response(404, json={"code": "not_found", "message": f"video {V} is not playable (yet)"})
        return httpx.Response(500, json={"code": "internal", "message": "unexpected"})

    return handler


def test_url_prints_the_absolute_master_playlist_url_with_a_fresh_token(monkeypatch):
    seen = []
    result = run_cli(monkeypatch, hls_gateway(True, seen), "url", V)
    assert result.exit_code == 0, result.output
    # one plain line (for `ffplay "$(vidmesh url ID)"`), the token URL-encoded
    assert result.stdout == f"http://gw:8080/v1/videos/{V}/hls/master.m3u8?token=alice.99.s%2Bg%2F%3D\n"
    assert ("POST", "/v1/tokens", "Bearer k") in seen  # minted with the key, which stays out of the URL

    result = run_cli(monkeypatch, hls_gateway(True, []), "url", V, "--json")
    assert json.loads(result.stdout) == {
        "url": f"http://gw:8080/v1/videos/{V}/hls/master.m3u8?token=alice.99.s%2Bg%2F%3D",
        "expires_at": 99,
    }


def test_url_of_a_video_not_playable_yet_fails_with_the_servers_reason(monkeypatch):
    seen = []
    result = run_cli(monkeypatch, hls_gateway(False, seen), "url", V)
    assert result.exit_code == 1 and result.stdout == ""
    assert f"not_found: video {V} is not playable (yet)" in result.stderr
    assert not any(path == "/v1/tokens" for _, path, _ in seen), "no token for a video that cannot play"
    as_json = run_cli(monkeypatch, hls_gateway(False, []), "url", V, "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stderr)["code"] == "not_found"


def test_status_shows_the_hls_url_once_playable(monkeypatch):
    shown = run_cli(monkeypatch, hls_gateway(True, []), "status", V)
    assert shown.exit_code == 0, shown.output
    assert f"http://gw:8080/v1/videos/{V}/hls/master.m3u8" in shown.stdout
    hidden = run_cli(monkeypatch, hls_gateway(False, []), "status", V)
    assert hidden.exit_code == 0 and "hls" not in hidden.stdout


def test_status_lists_the_warnings_of_a_video_made_from_a_damaged_source(monkeypatch):
    warnings = [
        {"code": "truncated", "message": "chunk:1: the video stops at 4.00 s of 8.00 s"},
        {"code": "damaged_packets", "message": "audio: 1 undecodable packet skipped"},
    ]
    video = {"id": V, "status": "ready", "created_at": 0, "updated_at": 0, "renditions": [], "warnings": warnings}
    shown = run_cli(monkeypatch, lambda request: httpx.Response(200, json=video), "status", V)
    assert shown.exit_code == 0, shown.output
    assert "ready (2 warnings)" in shown.stdout
    assert "truncated: chunk:1: the video stops at 4.00 s of 8.00 s" in shown.stdout
    assert "damaged_packets: audio: 1 undecodable packet skipped" in shown.stdout
    clean = run_cli(monkeypatch, lambda request: httpx.Response(200, json={**video, "warnings": []}), "status", V)
    assert "warning" not in clean.stdout
