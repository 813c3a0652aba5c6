"""Bad media at scale: a generated corpus of broken uploads sent all at once.

Each upload ends as a 4xx at upload with a JSON `code`, or as a `failed` video with an
`error.code`, or (a file whose damage the decoder tolerates, or that was cut short) as
`ready`, a cut file with a `truncated` warning: never stuck.
All of them are terminal within a bound, and afterwards every service is the same
process it was (no `exited with` line), the gateway is ready, a good clip still becomes
ready, the task queues are empty and every rendition exists exactly once.

The mesh runs with a 640x640 size limit, so a clip over it is refused as `too_large`.
"""

from __future__ import annotations

import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.clips import make_audio_only, make_clip, make_image, make_truncated
from tests.conftest import Mesh, alive, assert_delivered_once, service_pids, wait_terminal

pytestmark = pytest.mark.e2e

LIMIT = 640
COPIES = 3  # each kind several times (random kinds with fresh bytes): 57 uploads at once
ANY = None  # any code

# name -> allowed outcomes: ("reject", status, code) at upload, ("failed", code), ("ready",)
EXPECTED: dict[str, set] = {
    "zero_bytes": {("reject", 400, "empty_body")},
    "zero_bytes_chunked": {("reject", 400, "empty_body")},
    "random_1_byte": {("reject", 422, ANY)},
    "random_1k": {("reject", 422, ANY)},
    "random_300k": {("reject", 422, ANY)},  # spans object-store chunks
    "text": {("reject", 422, "not_media")},
    "html": {("reject", 422, "not_media")},
    "json": {("reject", 422, "not_media")},
    "png": {("reject", 422, "not_media")},
    "jpeg": {("reject", 422, "not_media")},
    "audio_only": {("reject", 422, "no_video_stream")},
    "ftyp_then_garbage": {("reject", 422, ANY)},
    # index at the front, media cut: probes fine; what is there becomes the video, never
    # silently short (a `truncated` warning says how much is missing)
    "truncated_faststart": {("ready",)},
    # index at the end, cut away: nothing to open
    "truncated_moov_at_end": {("reject", 422, ANY)},
    # damage inside the media data: may decode with glitches, or fail; never hang
    "flipped_bits_in_mdat": {("ready",), ("failed", ANY), ("reject", 422, ANY)},
    "too_wide": {("reject", 422, "too_large")},
    "too_tall": {("reject", 422, "too_large")},
    "good_a": {("ready",)},
    "good_b": {("ready",)},
}


def top_level_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the top-level ISO-BMFF boxes."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        boxes.append((kind, pos, size))
        if size < 8:
            break
        pos += size
    return boxes


def flip_bits_in_mdat(src: str, rng: np.random.Generator) -> bytes:
    data = bytearray(Path(src).read_bytes())
    ((_, off, size),) = [b for b in top_level_boxes(bytes(data)) if b[0] == b"mdat"]
    lo, hi = off + size // 3, off + 2 * size // 3  # the middle third of the media data
    for pos in rng.integers(lo, hi, 200):
        data[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[object, str]]:
    """ "<kind>#<copy>" -> (body, content type); a callable body gives a fresh iterator."""
    d = tmp_path_factory.mktemp("corpus")
    items = {}
    for copy in range(COPIES):
        for kind, item in _kinds(d / str(copy), np.random.default_rng(copy)).items():
            items[f"{kind}#{copy}"] = item
    return items


def _kinds(d: Path, rng: np.random.Generator) -> dict[str, tuple[object, str]]:
    d.mkdir(parents=True)
    read = lambda p: Path(p).read_bytes()  # noqa: E731
    moov_at_end = read(make_clip(d / "end.mp4", width=320, height=240, seconds=2.0, container="mp4"))
    assert top_level_boxes(moov_at_end)[-1][0] == b"moov"
    files = {
        "zero_bytes": (b"", "video/mp4"),
        "zero_bytes_chunked": (lambda: iter([b""]), "application/octet-stream"),
        "random_1_byte": (rng.bytes(1), "application/octet-stream"),
        "random_1k": (rng.bytes(1024), "video/mp4"),
        "random_300k": (rng.bytes(300 * 1024), "video/mp4"),
        "text": (("Not a video at all.\n" * 300).encode(), "video/mp4"),
        "html": (
            b"<!DOCTYPE html><html><head><title>x</title></head><body>" + b"<p>hello</p>" * 500 + b"</body></html>",
            "video/mp4",
        ),
        "json": (b'{"video": ' + b"[1, 2, 3], " * 300 + b'"end": true}', "application/octet-stream"),
        "png": (read(make_image(d / "still.png", width=64, height=48)), "video/mp4"),
        "jpeg": (read(make_image(d / "still.jpg", width=64, height=48)), "video/mp4"),
        "audio_only": (read(make_audio_only(d / "tone.m4a", seconds=1.0)), "video/mp4"),
        "ftyp_then_garbage": (struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 512) + rng.bytes(64 * 1024), "video/mp4"),
        "truncated_faststart": (read(make_truncated(d / "cut.mp4", seconds=2.0, keep=0.5)), "video/mp4"),
        "truncated_moov_at_end": (moov_at_end[: len(moov_at_end) // 2], "video/mp4"),
        "flipped_bits_in_mdat": (
            flip_bits_in_mdat(
                make_clip(d / "flip.mp4", width=320, height=240, seconds=2.0, container="mp4", faststart=True), rng
            ),
            "video/mp4",
        ),
        "too_wide": (read(make_clip(d / "wide.mp4", width=LIMIT + 160, height=240, seconds=0.5)), "video/mp4"),
        "too_tall": (read(make_clip(d / "tall.mp4", width=240, height=LIMIT + 80, seconds=0.5)), "video/mp4"),
        "good_a": (read(make_clip(d / "a.mp4", width=320, height=240, seconds=1.0)), "video/mp4"),
        "good_b": (read(make_clip(d / "b.mp4", width=240, height=320, seconds=1.0, audio=False)), "video/mp4"),
    }
    assert set(files) == set(EXPECTED)
    return files


def kind(name: str) -> str:
    return name.split("#")[0]


@pytest.fixture(scope="module")
def limited_mesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-corpus-") as tmp:
        m = Mesh(
            Path(tmp),
            {"VIDMESH_MAX_WIDTH": str(LIMIT), "VIDMESH_MAX_HEIGHT": str(LIMIT), "VIDMESH_TASK_ACK_WAIT_S": "5"},
        ).start()
        yield m
        m.stop()


def outcome_of(upload: httpx.Response, final: dict | None) -> tuple:
    if upload.status_code != 202:
        return ("reject", upload.status_code, upload.json().get("code"))
    if final["status"] == "failed":
        return ("failed", (final.get("error") or {}).get("code"))
    return (final["status"],)


def allowed(outcome: tuple, expected: set) -> bool:
    for e in expected:
        if len(e) == len(outcome) and all(x is ANY or x == y for x, y in zip(e, outcome)):
            return True
    return False


def test_a_corpus_of_bad_media_sent_at_once_ends_cleanly_and_the_mesh_survives(limited_mesh, corpus, tmp_path):
    mesh = limited_mesh
    pids = service_pids(mesh)
    mark = len(mesh.lines)

    def send(item):
        name, (body, ctype) = item
        with mesh.client() as c:
            return name, c.post(
                "/v1/videos",
                content=body() if callable(body) else body,
                headers={"Content-Type": ctype, "X-Filename": f"{name}.bin"},
            )

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = dict(pool.map(send, corpus.items()))
    uploaded_s = time.monotonic() - started

    problems = []
    accepted = {}
    for name, r in answers.items():
        if r.status_code == 202:
            accepted[r.json()["id"]] = name
            if r.headers.get("location") != f"/v1/videos/{r.json()['id']}":
                problems.append(f"{name}: 202 without its Location")
            continue
        if not 400 <= r.status_code < 500:
            problems.append(f"{name}: upload answered {r.status_code} {r.text[:200]}")
            continue
        try:
            body = r.json()
        except ValueError:
            problems.append(f"{name}: {r.status_code} without a JSON body: {r.text[:200]}")
            continue
        if not body.get("code") or not body.get("message"):
            problems.append(f"{name}: {r.status_code} without code and message: {body}")

    # never stuck: every accepted upload is terminal within the bound
    with mesh.client() as c:
        finals = wait_terminal(c, accepted, 120)
    terminal_s = time.monotonic() - started
    by_name = {name: finals[vid] for vid, name in accepted.items()}
    seen = {name: outcome_of(answers[name], by_name.get(name)) for name in corpus}
    for name, outcome in seen.items():
        if not allowed(outcome, EXPECTED[kind(name)]):
            detail = answers[name].text[:300] if answers[name].status_code != 202 else by_name[name]
            problems.append(f"{name}: {outcome} not in {EXPECTED[kind(name)]}: {detail}")
        if kind(name) == "truncated_faststart" and name in by_name:
            codes = [w["code"] for w in by_name[name].get("warnings", [])]
            if "truncated" not in codes:
                problems.append(f"{name}: a silently short rendition: {by_name[name]}")
    assert not problems, "\n".join(problems) + f"\noutcomes: {seen}"

    # each accepted one: terminal, renditions exactly once, queues empty, nothing orphaned
    assert_delivered_once(mesh, "alice", finals)

    # every service survived: same processes, none restarted, gateway ready
    logged = mesh.lines[mark:]
    assert not [line for line in logged if "exited with" in line], "\n".join(logged[-60:])
    assert service_pids(mesh) == pids, "a service was restarted"
    assert all(alive(p) for p in pids.values()), pids
    assert httpx.get(mesh.url + "/readyz", timeout=5).status_code == 200
    crashes = [line for line in logged if "Traceback" in line or " CRITICAL " in line]
    assert not crashes, "\n".join(logged[-80:])

    # and a good clip still goes all the way through
    clip = make_clip(tmp_path / "after.mp4", width=320, height=240, seconds=1.0)
    with mesh.client() as c:
        r = c.post("/v1/videos", content=Path(clip).read_bytes(), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 202, r.text
        after = wait_terminal(c, [r.json()["id"]], 60)
    assert next(iter(after.values()))["status"] == "ready", after
    assert_delivered_once(mesh, "alice", after)
    tally = {}
    for name, outcome in seen.items():
        tally.setdefault(kind(name), set()).add(outcome)
    print(f"{len(corpus)} uploads answered in {uploaded_s:.1f}s, all terminal {terminal_s:.1f}s after sending; {tally}")
