"""The dashboard at `/`, driven in a real headless Chromium through Playwright.

The `browser` fixture (tests/e2e/conftest.py) is Debian's `chromium`; without it these tests
skip loudly, or fail with CI=true. HLS playback is in test_dashboard_hls.py.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.clips import make_clip
from tests.conftest import wait_for
from tests.e2e.lost_media import lose_source, workers_held

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Drop files on an element the way a user's drag-and-drop does: a DataTransfer with File objects.
DROP = """([selector, files]) => {
    const dt = new DataTransfer();
    for (const f of files) {
        const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
        dt.items.add(new File([bytes], f.name, {type: f.type}));
    }
    const target = document.querySelector(selector);
    for (const type of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    }
}"""


def test_upload_watch_and_play_in_the_browser(mesh, browser, tmp_path):
    from playwright.sync_api import expect

    tag = uuid.uuid4().hex[:8]
    good, bad = f"dashboard-{tag}.mp4", f"lost-{tag}.mp4"
    make_clip(tmp_path / good, width=640, height=360, seconds=2.0)
    make_clip(tmp_path / bad, width=320, height=240, seconds=1.0)  # its upload is lost from the store below

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    media_statuses: list[int] = []
    page.on("response", lambda r: media_statuses.append(r.status) if "/hls/" in r.url else None)
    api_auth: list[str | None] = []
    page.on("request", lambda r: api_auth.append(r.url) if mesh.KEYS["alice"] in r.url else None)

    page.goto(mesh.url + "/")
    expect(page.locator("#app")).to_be_hidden()

    # a wrong key is refused with the server's message, the right one opens the app
    page.fill("#key", "not-a-key")
    page.click("#login button[type=submit]")
    expect(page.locator("#notice")).to_contain_text("unauthorized")
    page.fill("#key", mesh.KEYS["alice"])
    page.click("#login button[type=submit]")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#notice")).to_be_hidden()
    expect(page.locator("#tenant-note")).to_have_text("tenant alice")

    # drag and drop two files: each gets an upload progress bar
    files = [
        {"name": name, "type": "video/mp4", "data": base64.b64encode((tmp_path / name).read_bytes()).decode()}
        for name in (good, bad)
    ]
    # the workers are held while both upload, and the second's upload is lost from the
    # object store meanwhile, so its first task fails it (damaged media no longer does)
    with workers_held(mesh):
        page.evaluate(DROP, ["#drop", files])
        expect(page.locator("#uploads li progress")).to_have_count(2)
        with mesh.client() as c:
            lost = wait_for(
                lambda: next(
                    (
                        v["id"]
                        for v in c.get("/v1/videos", params={"limit": 50}).json()["items"]
                        if v["filename"] == bad
                    ),
                    None,
                ),
                60,
                0.1,
                "the second upload to be accepted",
            )
        lose_source(mesh, "alice", lost)

    # live status from SSE: the good one becomes ready, the lost one fails with its reason
    good_row = page.locator("#videos li", has_text=good)
    bad_row = page.locator("#videos li", has_text=bad)
    expect(good_row).to_have_attribute("data-status", "ready", timeout=60_000)
    expect(bad_row).to_have_attribute("data-status", "failed", timeout=60_000)
    # the reason names the task that gave up
    expect(bad_row.locator(".error")).to_have_text(re.compile(r"^source_missing: (chunk:0|audio|thumbnail): \S"))
    expect(good_row.locator(".mini img")).to_be_visible()

    bad_row.click()
    expect(page.locator("#d-error")).to_have_text(re.compile(r"^Failed: source_missing: (chunk:0|audio|thumbnail): \S"))

    # open the ready video: thumbnail, source facts, its HLS in the player (quality menu:
    # Auto and its one rung), and the MP4 download of each rendition
    good_row.click()
    detail = page.locator("#detail")
    expect(detail).to_have_attribute("data-status", "ready")
    expect(page.locator("#d-source")).to_contain_text("640×360")
    expect(page.locator("#d-source")).to_contain_text("h264")
    page.wait_for_function("() => document.getElementById('d-thumb').naturalWidth > 0")
    expect(page.locator("#player")).to_have_attribute("data-engine", "hls.js")
    expect(page.locator("#quality option")).to_have_text([re.compile(r"^Auto"), "360p"])
    download = page.locator("#d-files a[download]")
    expect(download).to_have_text(["download"])
    href = download.get_attribute("href")
    assert re.match(r"^/v1/videos/\w+/renditions/360p\?token=", href), href
    ranged = page.evaluate("(href) => fetch(href, {headers: {Range: 'bytes=0-99'}}).then((r) => r.status)", href)
    assert ranged == 206  # the download link works with its token, and by Range

    # play until time advances, then seek
    page.evaluate("() => { const v = document.getElementById('player'); v.muted = true; return v.play(); }")
    page.wait_for_function("() => document.getElementById('player').currentTime > 0.5", timeout=20_000)
    page.evaluate(
        """() => new Promise((resolve) => {
            const v = document.getElementById('player');
            v.pause();
            v.addEventListener('seeked', resolve, {once: true});
            v.currentTime = 1.5;
        })"""
    )
    assert abs(page.evaluate("() => document.getElementById('player').currentTime") - 1.5) < 0.1
    assert page.evaluate("() => document.getElementById('player').error") is None
    assert page.evaluate("() => window.vidmeshPlayer.fatalErrors") == []
    assert media_statuses and set(media_statuses) == {200}, media_statuses  # playlists, inits, fragments

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    assert not api_auth, f"the API key appeared in a URL: {api_auth}"
    assert not page_errors, page_errors
    context.close()


FAKE = "01m8dashboardprogress00000"
RENDITIONS = [{"name": "720p", "width": 1280, "height": 720}, {"name": "360p", "width": 640, "height": 360}]


def _segments(*indices):
    return [{"index": i, "start": 2.0 * i, "duration": 2.0, "sizes": {"720p": 3000, "360p": 1000}} for i in indices]


# The event history of one video as the gateway replays it, step by step: 3 chunks of
# 2 segments each (6 expected), every rendition encoded by each chunk task, then stitched.
STEPS = [
    [
        ("video_planned", {"renditions": RENDITIONS, "chunks": 3, "segments": 6, "segment_s": 2.0, "audio": True}),
        ("chunk_progress", {"chunk": 0, "segments": 1}),
    ],
    [
        ("chunk_encoded", {"chunk": 0, "segments": _segments(0, 1)}),
        ("chunk_progress", {"chunk": 1, "segments": 1}),
        ("chunk_encoded", {"chunk": 2, "segments": _segments(4, 5)}),
    ],
    [
        ("chunk_encoded", {"chunk": 1, "segments": _segments(2, 3)}),
        ("audio_encoded", {"segments": _segments(0, 1, 2, 3, 4, 5), "codec": "mp4a.40.2", "priming": 1024}),
        (
            "rendition_stitched",
            {
                "rendition": "720p",
                "object": "o",
                "width": 1280,
                "height": 720,
                "size": 9000,
                "duration": 12.0,
                "has_audio": True,
            },
        ),
    ],
    [
        (
            "task_failed",
            {
                "task": "stitch",
                "error": {"code": "retries_exhausted", "message": "stitch: no worker finished it in 5 attempts"},
            },
        )
    ],
    [
        (
            "video_failed",
            {"error": {"code": "retries_exhausted", "message": "stitch: no worker finished it in 5 attempts"}},
        )
    ],
]


def test_progress_bars_follow_the_chunk_events(mesh, browser):
    """Per-rendition bars from a scripted event stream (the page cannot tell it from the
    gateway's): they advance together by segments encoded, a rendition reads 100 % once its
    MP4 is stitched, and a failed task shows its name and reason."""
    from playwright.sync_api import expect

    step = {"n": 0}
    now = time.time()

    def video() -> dict:
        failed = step["n"] >= len(STEPS) - 1
        stitched = step["n"] >= 2
        return {
            "id": FAKE,
            "status": "failed" if failed else "processing",
            "created_at": now,
            "updated_at": now,
            "filename": "chunks.mp4",
            "source": {"size": 1000, "width": 1280, "height": 720, "duration": 12.0},
            "renditions": [
                {
                    "name": "720p",
                    "width": 1280,
                    "height": 720,
                    "url": f"/v1/videos/{FAKE}/renditions/720p",
                    "size": 9000,
                    "has_audio": True,
                }
            ]
            if stitched
            else [],
            "planned": ["720p", "360p"],
            "progress": {},
            "error": STEPS[-1][0][1]["error"] if failed else None,
        }

    def events(route):
        history = [event for events in STEPS[: step["n"] + 1] for event in events]
        body = "retry: 200\n\n" + "".join(
            f"event: {name}\nid: {n}\ndata: {json.dumps({'video_id': FAKE, 'tenant': 'alice', **data})}\n\n"
            for n, (name, data) in enumerate(history, 1)
        )
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.route(re.compile(r"/v1/videos\?limit="), lambda r: r.fulfill(json={"items": [video()], "next_cursor": None}))
    page.route(re.compile(f"/v1/videos/{FAKE}/events"), events)
    page.route(re.compile(f"/v1/videos/{FAKE}$"), lambda r: r.fulfill(json=video()))

    page.goto(mesh.url + "/")
    page.fill("#key", mesh.KEYS["alice"])
    page.click("#login button[type=submit]")
    row = page.locator(f"#videos li[data-id='{FAKE}']")
    row.click()
    bar = lambda where, rendition: where.locator(f".pline[data-rendition='{rendition}']")  # noqa: E731
    detail = page.locator("#d-progress")

    # 1 of 6 segments: every rendition at 16 %
    for rendition in ("720p", "360p"):
        expect(bar(row, rendition).locator(".pct")).to_have_text("16%")
        expect(bar(detail, rendition).locator("progress")).to_have_attribute("value", "16")
    expect(detail.locator(".stage")).to_have_text("encoding, 0 of 3 chunks done")

    step["n"] = 1  # chunks 0 and 2 encoded (4 segments), chunk 1 one segment in: 5 of 6
    expect(bar(row, "720p").locator(".pct")).to_have_text("83%")
    expect(bar(row, "360p").locator(".pct")).to_have_text("83%")
    expect(detail.locator(".stage")).to_have_text("encoding, 2 of 3 chunks done")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-progress.png"), full_page=True)

    step["n"] = 2  # every chunk encoded, the 720p stitched: only it reads 100 %
    expect(bar(row, "720p").locator(".pct")).to_have_text("100%")
    expect(bar(row, "360p").locator(".pct")).to_have_text("99%")
    expect(detail.locator(".stage")).to_have_text("encoded, stitching")
    expect(page.locator("#d-files tbody td").first).to_have_text("720p")  # its MP4 can be downloaded
    expect(page.locator("#player-note")).to_have_text("Plays as soon as the first segments are encoded.")

    step["n"] = 3  # the stitch gave up: the rendition it held back shows it
    expect(bar(row, "360p").locator(".pct")).to_have_text("failed")
    expect(bar(row, "360p")).to_have_attribute("title", "failed: stitch retries_exhausted")
    expect(bar(row, "720p").locator(".pct")).to_have_text("100%")
    expect(detail.locator(".error")).to_have_text(
        "stitch failed: retries_exhausted: no worker finished it in 5 attempts"
    )

    step["n"] = 4  # and the video failed, with the task's name in the reason
    expect(row).to_have_attribute("data-status", "failed")
    expect(row.locator(".error")).to_have_text("retries_exhausted: stitch: no worker finished it in 5 attempts")
    expect(page.locator("#d-error")).to_have_text(
        "Failed: retries_exhausted: stitch: no worker finished it in 5 attempts"
    )

    assert not page_errors, page_errors
    context.close()


def test_warnings_of_a_video_made_from_a_damaged_source_are_shown(mesh, browser):
    """A ready video whose source was damaged lists each warning in the list and the detail."""
    from playwright.sync_api import expect

    vid = "warned" + uuid.uuid4().hex[:10]
    now = time.time()
    warnings = [
        {"code": "truncated", "message": "chunk:1: the video stops at 4.00 s of 8.00 s"},
        {"code": "damaged_packets", "message": "audio: 1 undecodable packet skipped"},
    ]
    video = {
        "id": vid,
        "status": "ready",
        "created_at": now,
        "updated_at": now,
        "filename": "cut.mkv",
        "renditions": [],
        "planned": ["360p"],
        "progress": {},
        "warnings": warnings,
    }
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.route(re.compile(r"/v1/videos\?limit="), lambda r: r.fulfill(json={"items": [video], "next_cursor": None}))
    page.route(re.compile(f"/v1/videos/{vid}$"), lambda r: r.fulfill(json=video))
    page.route(
        re.compile(f"/v1/videos/{vid}/events"),
        lambda r: r.fulfill(status=404, json={"code": "not_found", "message": "x"}),
    )
    page.goto(mesh.url + "/")
    page.fill("#key", mesh.KEYS["alice"])
    page.click("#login button[type=submit]")
    row = page.locator(f"#videos li[data-id='{vid}']")
    expect(row.locator(".warning")).to_have_text([f"{w['code']}: {w['message']}" for w in warnings])
    row.click()
    expect(page.locator("#d-warnings li")).to_have_text([f"{w['code']}: {w['message']}" for w in warnings])
    assert not page_errors, page_errors
    context.close()


def test_read_tokens_open_media_and_events_only(mesh, tmp_path):
    """What the page puts in URLs: a short-lived token that can read, and nothing else."""
    import httpx

    path = make_clip(tmp_path / "t.mp4", width=320, height=240, seconds=1.0)
    with mesh.client("alice") as alice, mesh.client("bob") as bob, httpx.Client(base_url=mesh.url, timeout=60) as anon:
        minted = alice.post("/v1/tokens")
        assert minted.status_code == 200 and minted.headers["cache-control"] == "no-store"
        token = minted.json()["token"]
        assert minted.json()["tenant"] == "alice" and mesh.KEYS["alice"] not in token
        video = alice.post("/v1/videos", content=Path(path).read_bytes(), headers={"Content-Type": "video/mp4"}).json()
        vid = video["id"]
        events = anon.get(f"/v1/videos/{vid}/events", params={"token": token})
        assert events.status_code == 200 and "event: video_ready" in events.text
        thumb = anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": token})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        ranged = anon.get(f"/v1/videos/{vid}/renditions/240p", params={"token": token}, headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        assert anon.head(f"/v1/videos/{vid}/renditions/240p", params={"token": token}).status_code == 200

        # not for anything but reading media and events
        assert anon.get(f"/v1/videos/{vid}", params={"token": token}).status_code == 401
        assert anon.get("/v1/videos", params={"token": token}).status_code == 401
        assert anon.delete(f"/v1/videos/{vid}", params={"token": token}).status_code == 401
        assert (
            anon.post(
                "/v1/videos", params={"token": token}, content=b"x", headers={"Content-Type": "video/mp4"}
            ).status_code
            == 401
        )
        assert anon.post("/v1/tokens", params={"token": token}).status_code == 401
        # forged, altered or another tenant's
        bad = anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": token[:-2] + "xx"})
        assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"
        forged = token.replace("alice.", "bob.", 1)
        assert anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": forged}).status_code == 401
        bobs = bob.post("/v1/tokens").json()["token"]
        assert anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": bobs}).status_code == 404
