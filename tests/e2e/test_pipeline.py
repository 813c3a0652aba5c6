"""The video pipeline end to end through `vidmesh up`.

What a user checks: each kind of clip becomes `ready` with the right source facts; every
rendition listed downloads and decodes to H.264 (+ AAC exactly when the source has sound)
at the ladder's size, upright, as long as the source; the thumbnail is an upright JPEG
at most 640 wide; downloads honour HTTP Range, HEAD and ETags; progress can be followed
live over Server-Sent Events, and the stream closes by itself when the video is ready.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass

import av
import httpx
import pytest

from tests.clips import make_clip
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

DURATION_TOLERANCE_S = 0.2  # a rendition is within 0.2 s of its source
THUMB_MAX_WIDTH = 640


@dataclass(frozen=True)
class Clip:
    """One test clip and what the issue says must come out of it."""

    make: dict  # make_clip() keyword arguments
    ext: str
    displayed: tuple[int, int]  # width, height as a player shows the source (even)
    ladder: list[tuple[str, int, int]]  # (name, width, height), largest first
    container: str  # one of the names in PyAV's format name ("mov,mp4,..." / "matroska,webm")
    video_codec: str = "h264"
    rotation: int = 0
    corner: str = "top-left"  # where the stored frame's white marker shows once upright
    thumbnail: tuple[int, int] | None = None  # when it differs from `displayed`

    @property
    def seconds(self) -> float:
        return self.make.get("seconds", 1.0)

    @property
    def audio(self) -> bool:
        return self.make.get("audio", True)


CLIPS = {
    # 360 tall: exactly the lowest rung
    "landscape_360_audio": Clip(
        make=dict(width=640, height=360, seconds=1.0),
        ext="mp4",
        displayed=(640, 360),
        ladder=[("360p", 640, 360)],
        container="mp4",
    ),
    # 480 tall: two rungs; 2 s so the 480p rendition spans several object-store chunks
    "landscape_480_audio": Clip(
        make=dict(width=854, height=480, seconds=2.0),
        ext="mp4",
        displayed=(854, 480),
        ladder=[("480p", 854, 480), ("360p", 640, 360)],
        container="mp4",
        thumbnail=(640, 360),  # wider than 640: scaled down, aspect kept
    ),
    # every rung: 1080 tall gives the whole ladder, 16:9 kept on each
    "landscape_1080_audio": Clip(
        make=dict(width=1920, height=1080, seconds=1.0),
        ext="mp4",
        displayed=(1920, 1080),
        ladder=[("1080p", 1920, 1080), ("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)],
        container="mp4",
        thumbnail=(640, 360),
    ),
    # no sound, 4:3: the 360p rung keeps 4:3
    "no_audio_4x3": Clip(
        make=dict(width=640, height=480, seconds=1.0, audio=False),
        ext="mp4",
        displayed=(640, 480),
        ladder=[("480p", 640, 480), ("360p", 480, 360)],
        container="mp4",
    ),
    # a phone held upright: stored 320x240, "turn 90 degrees clockwise" in the display matrix
    "portrait_rotated_90": Clip(
        make=dict(width=320, height=240, seconds=1.0, rotation=90),
        ext="mp4",
        displayed=(240, 320),
        ladder=[("240p", 240, 320)],
        container="mp4",
        rotation=90,
        corner="top-right",
    ),
    # portrait on a real rung, turned the other way
    "portrait_rotated_270": Clip(
        make=dict(width=640, height=360, seconds=1.0, rotation=270),
        ext="mp4",
        displayed=(360, 640),
        ladder=[("360p", 360, 640)],
        container="mp4",
        rotation=270,
        corner="bottom-left",
    ),
    # odd size, another codec and container: even dimensions out
    "odd_333x199_mpeg4_mkv": Clip(
        make=dict(width=333, height=199, seconds=1.0, codec="mpeg4", container="matroska"),
        ext="mkv",
        displayed=(332, 198),
        ladder=[("198p", 332, 198)],
        container="matroska",
        video_codec="mpeg4",
    ),
    # long enough to be cut: three chunks (0-6, 6-12, 12-16 s), encoded apart and stitched
    # into one rendition that must play whole, every frame once (MPEG-4 Part 2 has a
    # keyframe every 12 frames, so it can be cut)
    "cut_in_chunks_mpeg4": Clip(
        make=dict(width=320, height=240, seconds=16.0, codec="mpeg4"),
        ext="mp4",
        displayed=(320, 240),
        ladder=[("240p", 320, 240)],
        container="mp4",
        video_codec="mpeg4",
    ),
    # smaller than the lowest rung: one rendition at its own size, never upscaled
    "small_256x144": Clip(
        make=dict(width=256, height=144, seconds=1.0),
        ext="mp4",
        displayed=(256, 144),
        ladder=[("144p", 256, 144)],
        container="mp4",
    ),
}


# --- helpers ---------------------------------------------------------------------------------


def upload(client: httpx.Client, data: bytes, **headers) -> httpx.Response:
    return client.post("/v1/videos", content=data, headers={"Content-Type": "video/mp4", **headers})


def wait_status(client: httpx.Client, video_id: str, statuses=("ready", "failed"), timeout=120) -> dict:
    def done():
        body = client.get(f"/v1/videos/{video_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout, 0.2, f"video {video_id} to reach {statuses}")


def bright_corner(frame: av.VideoFrame) -> tuple[str, dict[str, float]]:
    """Which corner holds the white marker: the brightest, by a clear margin."""
    y = frame.to_ndarray(format="gray")
    h, w = y.shape
    b = max(2, min(w, h) // 10)
    means = {
        "top-left": float(y[:b, :b].mean()),
        "top-right": float(y[:b, -b:].mean()),
        "bottom-left": float(y[-b:, :b].mean()),
        "bottom-right": float(y[-b:, -b:].mean()),
    }
    ranked = sorted(means, key=means.get, reverse=True)
    best, second = ranked[0], ranked[1]
    return (best if means[best] - means[second] > 40 else "none"), means


@dataclass
class Decoded:
    format: str
    duration: float | None
    video_codec: str
    width: int
    height: int
    sar: object
    frames: int
    video_end: float
    first_frame_rotation: float
    corner: str
    corner_means: dict
    audio_codecs: list[str]
    audio_end: float | None


def decode_mp4(data: bytes) -> Decoded:
    """Open a downloaded rendition with PyAV and decode all of it."""
    with av.open(io.BytesIO(data)) as c:
        assert len(c.streams.video) == 1, "one video stream"
        vs = c.streams.video[0]
        audio_codecs = [s.codec_context.name for s in c.streams.audio]
        frames, video_end, corner, means, rotation = 0, 0.0, "none", {}, 0.0
        audio_end = None
        for frame in c.decode(*c.streams.video, *c.streams.audio):
            if isinstance(frame, av.VideoFrame):
                if frames == 0:
                    corner, means = bright_corner(frame)
                    rotation = frame.rotation
                frames += 1
                step = float(frame.duration * frame.time_base) if frame.duration else 1 / float(vs.average_rate)
                video_end = max(video_end, float(frame.pts * frame.time_base) + step)
            else:
                end = float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate
                audio_end = max(audio_end or 0.0, end)
        return Decoded(
            format=c.format.name,
            duration=c.duration / av.time_base if c.duration else None,
            video_codec=vs.codec_context.name,
            width=vs.codec_context.width,
            height=vs.codec_context.height,
            sar=vs.sample_aspect_ratio,
            frames=frames,
            video_end=video_end,
            first_frame_rotation=rotation,
            corner=corner,
            corner_means=means,
            audio_codecs=audio_codecs,
            audio_end=audio_end,
        )


def read_sse(client: httpx.Client, url: str, deadline_s: float = 90.0, on_open=None):
    """Read a Server-Sent Events stream to its end: (events, response, what on_open returned).

    Each event is {"event", "id", "data"} with data parsed as JSON. The stream must be
    closed by the server: raises if it is still open after deadline_s. on_open() is called
    once the response headers arrived (the server has read the video's state by then).
    """
    events: list[dict] = []
    current: dict = {}
    deadline = time.monotonic() + deadline_s
    timeout = httpx.Timeout(10.0, read=20.0)  # the gateway sends keep-alives every 15 s
    with client.stream("GET", url, timeout=timeout) as r:
        opened = on_open() if on_open else None
        if r.status_code != 200:
            r.read()
            return events, r, opened
        for line in r.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"SSE stream still open after {deadline_s}s; got {[e['event'] for e in events]}")
            if line == "":
                if current:
                    data = "\n".join(current.get("data", []))
                    events.append(
                        {
                            "event": current.get("event"),
                            "id": current.get("id"),
                            "data": json.loads(data) if data else None,
                        }
                    )
                current = {}
                continue
            if line.startswith(":"):
                continue  # comment / keep-alive
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                current.setdefault("data", []).append(value)
            else:
                current[name] = value
        return events, r, opened


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uploads(mesh, tmp_path_factory) -> dict[str, tuple[bytes, httpx.Response]]:
    """Every clip uploaded before any is waited for, so they process in parallel on the workers."""
    folder = tmp_path_factory.mktemp("pipeline-clips")
    out = {}
    with mesh.client() as c:
        for name, clip in CLIPS.items():
            path = folder / f"{name}.{clip.ext}"
            make_clip(str(path), **clip.make)
            data = path.read_bytes()
            ctype = "video/x-matroska" if clip.ext == "mkv" else "video/mp4"
            r = c.post(
                "/v1/videos",
                content=data,
                headers={"Content-Type": ctype, "X-Filename": path.name},
            )
            out[name] = (data, r)
    return out


@pytest.fixture(scope="module")
def ready_videos(mesh, uploads) -> dict[str, dict]:
    """The final JSON of every clip that was accepted (waited for together)."""
    finals = {}
    with mesh.client() as c:
        for name, (_, r) in uploads.items():
            if r.status_code == 202:
                finals[name] = wait_status(c, r.json()["id"])
    return finals


def _final(ready_videos, uploads, name) -> dict:
    data, r = uploads[name]
    assert r.status_code == 202, r.text
    return ready_videos[name]


# --- clips become ready with the right facts ---------------------------------------------------


@pytest.mark.parametrize("name", CLIPS)
def test_clip_becomes_ready_with_its_source_facts(mesh, uploads, ready_videos, name):
    clip = CLIPS[name]
    data, r = uploads[name]
    assert r.status_code == 202, r.text
    accepted = r.json()
    final = _final(ready_videos, uploads, name)
    assert final["status"] == "ready", final
    assert final["error"] is None
    assert final["filename"] == f"{name}.{clip.ext}"

    source = final["source"]
    assert source == accepted["source"], "the facts shown at upload are the facts kept"
    assert source["size"] == len(data)
    assert (source["width"], source["height"]) == clip.displayed, "width/height as displayed, even"
    assert source["duration"] == pytest.approx(clip.seconds, abs=0.1)
    assert source["video_codec"] == clip.video_codec
    assert source["audio_codec"] == ("aac" if clip.audio else None)
    assert clip.container in source["container"].split(","), source["container"]
    assert source["fps"] == pytest.approx(30, abs=0.01)
    assert source["rotation"] == clip.rotation

    names = [n for n, _, _ in clip.ladder]
    assert final["planned"] == names
    assert [(x["name"], x["width"], x["height"]) for x in final["renditions"]] == clip.ladder
    assert final["thumbnail"] is not None
    assert final["thumbnail"]["url"] == f"/v1/videos/{final['id']}/thumbnail"


@pytest.mark.parametrize("name", CLIPS)
def test_every_rendition_downloads_and_decodes(mesh, uploads, ready_videos, name):
    clip = CLIPS[name]
    final = _final(ready_videos, uploads, name)
    source = final["source"]
    assert final["renditions"], final
    with mesh.client() as c:
        for rendition in final["renditions"]:
            label = f"{name}/{rendition['name']}"
            assert rendition["url"] == f"/v1/videos/{final['id']}/renditions/{rendition['name']}"
            r = c.get(rendition["url"])
            assert r.status_code == 200, (label, r.text[:200])
            assert r.headers["content-type"] == "video/mp4"
            assert int(r.headers["content-length"]) == len(r.content) == rendition["size"], label
            got = decode_mp4(r.content)

            assert "mp4" in got.format.split(","), (label, got.format)
            assert got.video_codec == "h264", label
            assert (got.width, got.height) == (rendition["width"], rendition["height"]), label
            assert got.width % 2 == 0 and got.height % 2 == 0
            assert got.sar in (None, 0, 1), f"{label}: square pixels, got SAR {got.sar}"
            # upright pixels, no display matrix left for a player to apply a second time
            assert got.first_frame_rotation == 0, label
            assert got.corner == clip.corner, (label, got.corner_means)
            if clip.audio:
                assert got.audio_codecs == ["aac"], label
                assert got.audio_end == pytest.approx(source["duration"], abs=DURATION_TOLERANCE_S), label
            else:
                assert got.audio_codecs == [], label
            assert rendition["has_audio"] is clip.audio, label

            assert got.duration == pytest.approx(source["duration"], abs=DURATION_TOLERANCE_S), label
            assert got.video_end == pytest.approx(source["duration"], abs=DURATION_TOLERANCE_S), label
            assert rendition["duration"] == pytest.approx(source["duration"], abs=DURATION_TOLERANCE_S), label
            assert abs(got.frames - round(clip.seconds * 30)) <= 1, (label, got.frames)


@pytest.mark.parametrize("name", CLIPS)
def test_thumbnail_is_an_upright_jpeg(mesh, uploads, ready_videos, name):
    clip = CLIPS[name]
    final = _final(ready_videos, uploads, name)
    thumb = final["thumbnail"]
    expected = clip.thumbnail or clip.displayed
    assert (thumb["width"], thumb["height"]) == expected
    with mesh.client() as c:
        r = c.get(thumb["url"])
    assert r.status_code == 200, r.text[:200]
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff", "JPEG magic"
    with av.open(io.BytesIO(r.content)) as img:
        frame = next(img.decode(video=0))
    assert (frame.width, frame.height) == (thumb["width"], thumb["height"])
    assert frame.width <= THUMB_MAX_WIDTH
    landscape = clip.displayed[0] >= clip.displayed[1]
    assert (frame.width >= frame.height) == landscape, "orientation as displayed"
    corner, means = bright_corner(frame)
    assert corner == clip.corner, means


def test_a_long_clip_is_encoded_in_chunks_and_stitched_whole(mesh, uploads, ready_videos):
    """The events of the cut clip show its three chunks, each encoded once, their segments
    following on from each other on the 6 s grid; the rendition that plays whole (above) is
    their stitch."""
    final = _final(ready_videos, uploads, "cut_in_chunks_mpeg4")
    with mesh.client() as c:
        events, _, _ = read_sse(c, f"/v1/videos/{final['id']}/events", deadline_s=20)
    planned = next(e["data"] for e in events if e["event"] == "video_planned")
    assert (planned["chunks"], planned["segments"], planned["segment_s"], planned["audio"]) == (3, 3, 6.0, True)
    encoded = sorted((e["data"] for e in events if e["event"] == "chunk_encoded"), key=lambda d: d["chunk"])
    assert [d["chunk"] for d in encoded] == [0, 1, 2]
    segments = [s for d in encoded for s in d["segments"]]
    assert [s["index"] for s in segments] == [0, 1, 2]
    assert [s["start"] for s in segments] == pytest.approx([0.0, 6.0, 12.0], abs=0.05)
    assert sum(s["duration"] for s in segments) == pytest.approx(16.0, abs=DURATION_TOLERANCE_S)
    assert all(set(s["sizes"]) == {"240p"} and s["sizes"]["240p"] > 0 for s in segments)
    names = [e["event"] for e in events]
    assert names.count("audio_encoded") == 1 and names.count("rendition_stitched") == 1
    assert max(i for i, n in enumerate(names) if n in ("chunk_encoded", "audio_encoded")) < names.index(
        "rendition_stitched"
    )


# --- Range, HEAD and ETag --------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_rendition(mesh, uploads, ready_videos) -> tuple[str, bytes]:
    """The 480p rendition (larger than one 256 KiB object-store chunk) and its full body."""
    final = _final(ready_videos, uploads, "landscape_480_audio")
    url = next(x["url"] for x in final["renditions"] if x["name"] == "480p")
    with mesh.client() as c:
        full = c.get(url)
    assert full.status_code == 200
    return url, full.content


def test_range_requests_answer_exactly_those_bytes(mesh, big_rendition):
    url, full = big_rendition
    size = len(full)
    assert size > 300_000, f"the clip should span chunks, got {size} bytes"
    chunk = 256 * 1024
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=10-99": (10, 99),
        f"bytes={chunk - 100}-{chunk + 99}": (chunk - 100, chunk + 99),  # across a chunk boundary
        f"bytes={chunk}-{chunk}": (chunk, chunk),
        "bytes=-100": (size - 100, size - 1),  # suffix
        f"bytes=-{size + 10}": (0, size - 1),  # suffix longer than the file: all of it
        "bytes=1000-": (1000, size - 1),  # open end
        f"bytes={size - 1}-": (size - 1, size - 1),
        f"bytes=5-{size + 1000}": (5, size - 1),  # end past the file: clamped
    }
    with mesh.client() as c:
        for header, (start, end) in cases.items():
            r = c.get(url, headers={"Range": header})
            assert r.status_code == 206, (header, r.status_code)
            assert r.headers["content-range"] == f"bytes {start}-{end}/{size}", header
            assert int(r.headers["content-length"]) == end - start + 1, header
            assert r.content == full[start : end + 1], header
            assert r.headers["accept-ranges"] == "bytes"


def test_unsatisfiable_range_is_416(mesh, big_rendition):
    url, full = big_rendition
    size = len(full)
    with mesh.client() as c:
        for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
            r = c.get(url, headers={"Range": header})
            assert r.status_code == 416, (header, r.status_code)
            assert r.headers["content-range"] == f"bytes */{size}", header


def test_head_gives_length_and_ranges_without_a_body(mesh, big_rendition, uploads, ready_videos):
    url, full = big_rendition
    thumb_url = _final(ready_videos, uploads, "landscape_480_audio")["thumbnail"]["url"]
    with mesh.client() as c:
        r = c.head(url)
        assert r.status_code == 200
        assert r.content == b""
        assert int(r.headers["content-length"]) == len(full)
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["content-type"] == "video/mp4"
        assert r.headers.get("etag")

        thumb = c.get(thumb_url)
        t = c.head(thumb_url)
        assert t.status_code == 200 and t.content == b""
        assert int(t.headers["content-length"]) == len(thumb.content)
        assert t.headers["content-type"] == "image/jpeg"
        assert t.headers["accept-ranges"] == "bytes"


def test_etag_and_conditional_requests(mesh, big_rendition):
    url, full = big_rendition
    with mesh.client() as c:
        first = c.head(url)
        etag = first.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
        assert c.get(url, headers={"Range": "bytes=0-9"}).headers["etag"] == etag, "stable across requests"

        not_modified = c.get(url, headers={"If-None-Match": etag})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag

        other = c.get(url, headers={"If-None-Match": '"something-else"'})
        assert other.status_code == 200 and other.content == full

        # If-Range with a stale validator: the whole (new) representation, not a slice
        stale = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert stale.status_code == 200 and stale.content == full
        fresh = c.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert fresh.status_code == 206 and fresh.content == full[:10]


# --- Server-Sent Events ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_events(mesh, tmp_path_factory):
    """A fresh upload followed over SSE from right after its 202 to the end of the stream,
    while another client polls the video's `progress` (the catalog's view of the same).

    14 s of 480p that can be cut: two chunks (0-6 s, and 6-14 s of two segments), so the
    stream surely opens while the video is processing (the live path is what is tested,
    not the replay of a finished video) and progress moves in steps.
    """
    path = tmp_path_factory.mktemp("sse") / "sse.mp4"
    make_clip(str(path), width=854, height=480, seconds=14.0, codec="mpeg4")
    polled: list[dict] = []
    done = threading.Event()
    with mesh.client() as c, mesh.client() as other:
        r = upload(c, path.read_bytes())
        assert r.status_code == 202, r.text
        video_id = r.json()["id"]

        def poll():
            with mesh.client() as poller:
                while not done.is_set():
                    body = poller.get(f"/v1/videos/{video_id}").json()
                    polled.append({k: body[k] for k in ("status", "progress", "renditions", "planned")})
                    done.wait(0.05)

        polling = threading.Thread(target=poll, daemon=True)
        polling.start()

        def status_when_opened():
            return other.get(f"/v1/videos/{video_id}").json()["status"]

        try:
            events, resp, status_at_open = read_sse(c, f"/v1/videos/{video_id}/events", on_open=status_when_opened)
        finally:
            done.set()
            polling.join(30)
    return video_id, events, resp, status_at_open, polled


def test_sse_follows_a_fresh_upload_to_ready_then_closes(mesh, live_events):
    video_id, events, resp, status_at_open, _ = live_events
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    # the stream was opened while processing, and it ended by itself (read_sse returned)
    assert status_at_open == "processing"
    names = [e["event"] for e in events]
    assert names, "no events at all"
    assert names[0] == "video_uploaded", names
    assert names[-1] == "video_ready", names
    assert names.count("video_ready") == 1
    assert "video_planned" in names and "thumbnail_extracted" in names
    assert all(e["data"]["video_id"] == video_id for e in events)
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids increase"

    planned = next(e for e in events if e["event"] == "video_planned")["data"]
    assert [x["name"] for x in planned["renditions"]] == ["480p", "360p"]
    assert (planned["chunks"], planned["segments"], planned["segment_s"], planned["audio"]) == (2, 3, 6.0, True)

    # progress: each chunk reports segments while it encodes, then its result, once
    encoded = {e["data"]["chunk"]: (i, e["data"]) for i, e in enumerate(events) if e["event"] == "chunk_encoded"}
    assert sorted(encoded) == [0, 1] and names.count("chunk_encoded") == 2, names
    assert [s["index"] for c in (0, 1) for s in encoded[c][1]["segments"]] == [0, 1, 2]
    for _, result in encoded.values():
        assert all(set(s["sizes"]) == {"480p", "360p"} for s in result["segments"]), result
    for chunk, (at, result) in encoded.items():
        reported = [
            (i, e["data"]["segments"])
            for i, e in enumerate(events)
            if e["event"] == "chunk_progress" and e["data"]["chunk"] == chunk
        ]
        assert all(i < at for i, _ in reported), "progress of a chunk comes before its result"
        counts = [n for _, n in reported]
        assert counts == sorted(counts) and all(0 < n < len(result["segments"]) for n in counts), counts
    audio = [e["data"] for e in events if e["event"] == "audio_encoded"]
    assert len(audio) == 1 and [s["index"] for s in audio[0]["segments"]] == [0, 1, 2]

    # the MP4s are stitched once every chunk and the audio are in, one per rendition
    stitched = [i for i, n in enumerate(names) if n == "rendition_stitched"]
    assert sorted(events[i]["data"]["rendition"] for i in stitched) == ["360p", "480p"]
    last_encode = max(i for i, n in enumerate(names) if n in ("chunk_encoded", "audio_encoded"))
    assert names.index("video_planned") < min(i for i, _ in encoded.values()) <= last_encode < min(stitched)
    assert max(stitched) < names.index("video_ready")

    with mesh.client() as c:
        final = c.get(f"/v1/videos/{video_id}").json()
    assert final["status"] == "ready" and final["progress"] == {}


def test_the_catalog_progress_is_the_share_of_segments_encoded_per_rendition(live_events):
    """Every rendition's percent while processing is the share of the video's 3 segments
    encoded (capped below 100 until its MP4 is stitched), never going back; 100 once it
    is stitched."""
    _, _, _, _, polled = live_events
    processing = [p for p in polled if p["status"] == "processing" and p["planned"]]
    assert processing, polled[:5]
    steps = {0.0, 33.3, 66.7, 99.9}
    last: dict[str, float] = {}
    for snapshot in processing:
        progress, stitched = snapshot["progress"], {r["name"] for r in snapshot["renditions"]}
        assert set(progress) == {"480p", "360p"}, snapshot
        for name, percent in progress.items():
            assert percent == 100.0 if name in stitched else percent in steps, snapshot
            assert percent >= last.get(name, 0.0), (name, percent, last)
            last[name] = percent


def test_sse_of_a_ready_video_replays_history_and_closes(mesh, live_events):
    video_id, live, _, _, _ = live_events
    with mesh.client() as c:
        started = time.monotonic()
        events, resp, _ = read_sse(c, f"/v1/videos/{video_id}/events", deadline_s=20)
        elapsed = time.monotonic() - started
    assert resp.status_code == 200
    assert elapsed < 10, f"a finished video's stream should close at once, took {elapsed:.1f}s"
    assert [(e["id"], e["event"]) for e in events] == [(e["id"], e["event"]) for e in live]
    assert events[-1]["event"] == "video_ready"
