"""HLS in the dashboard: hls.js (the npm package `make install` puts in web/node_modules,
served by the gateway under /static/hls.js/) plays a video's master playlist in a real
headless Chromium, starts while the video is still processing, switches levels from the
quality menu and plays to the end.

One mesh of its own with 2 s segments and 2 s chunks, so a 60 s clip is playable a few
seconds after its upload and keeps processing for half a minute more.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.clips import make_clip
from tests.conftest import Mesh, alive, wait_for

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SECONDS = 60.0
FRAME = 1 / 30  # the clip's frame duration
LADDER = {"480p": (854, 480), "360p": (640, 360)}  # what an 854x480 source gets


@pytest.fixture(scope="module")
def hls_mesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-hls-") as tmp:
        mesh = Mesh(Path(tmp), {"VIDMESH_SEGMENT_S": "2", "VIDMESH_CHUNK_S": "2"}).start()
        try:
            yield mesh
        finally:
            pids = mesh.child_pids()
            assert mesh.stop() == 0, "\n".join(mesh.lines[-40:])
            wait_for(lambda: not any(alive(p) for p in pids), 20, what="every child process to exit")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hls") / "hls-60s.mp4"
    return Path(make_clip(path, width=854, height=480, seconds=SECONDS))


@pytest.fixture(scope="module")
def uploaded(hls_mesh, clip) -> dict:
    """The clip, uploaded once for the module: {"id": ..., "at": monotonic time of the upload}."""
    with hls_mesh.client() as c:
        r = c.post(
            "/v1/videos", content=clip.read_bytes(), headers={"Content-Type": "video/mp4", "X-Filename": clip.name}
        )
        assert r.status_code == 202, r.text
        return {"id": r.json()["id"], "at": time.monotonic()}


class Page:
    """A logged-in dashboard page that records what would mean trouble."""

    def __init__(self, browser, mesh: Mesh):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = page = self.context.new_page()
        self.errors: list[str] = []  # uncaught exceptions, console errors (CSP violations among them)
        self.responses: list[tuple[str, int]] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("response", lambda r: self.responses.append((r.url, r.status)))
        page.goto(mesh.url + "/")
        page.fill("#key", mesh.KEYS["alice"])
        page.click("#login button[type=submit]")
        page.wait_for_selector("#app:not([hidden])")

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, timeout: float = 30, arg=None):
        return self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000)

    def open(self, video_id: str) -> None:
        row = self.page.locator(f"#videos li[data-id='{video_id}']")
        if not row.count():
            self.page.click("#refresh")
        row.click()
        self.page.wait_for_selector(f"#detail[data-id='{video_id}']")

    def close(self) -> None:
        self.context.close()


PLAYER = "document.getElementById('player')"


def test_hls_js_is_served_from_the_npm_package(hls_mesh, browser_packages):
    from services.gateway.settings import GatewaySettings

    dist = GatewaySettings.load({}).hlsjs_dir  # web/node_modules/hls.js/dist, installed by `make install`
    with httpx.Client(base_url=hls_mesh.url, timeout=30) as anon:
        r = anon.get("/static/hls.js/hls.min.js")
        assert r.status_code == 200, f"{r.status_code} {r.text[:200]} (run `make install`)"
        assert r.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert r.content == (dist / "hls.min.js").read_bytes()
        assert anon.get("/static/hls.js/hls.worker.js").status_code == 200
        # only the player and its worker (and their maps), not the whole package
        assert anon.get("/static/hls.js/hls.js").status_code == 404
        assert anon.get("/static/hls.js/..%2F..%2Fpackage.json").status_code == 404
        # the page's policy is unchanged: scripts, workers and media from the gateway (and blob:
        # media for MediaSource) only
        csp = anon.get("/").headers["content-security-policy"]
        assert "script-src 'self'" in csp and "media-src 'self' blob:" in csp and "worker-src" not in csp
    lock = Path(__file__).resolve().parents[2] / "web" / "package-lock.json"
    assert '"node_modules/hls.js"' in lock.read_text()


def test_plays_while_the_video_is_still_processing(hls_mesh, browser, uploaded):
    """Opened while processing, the video starts playing by itself as soon as it is playable
    (SSE `video_playable`), from the start of its EVENT playlists, before it is ready."""
    page = Page(browser, hls_mesh)
    vid = uploaded["id"]
    page.open(vid)
    with hls_mesh.client() as c:
        first = c.get(f"/v1/videos/{vid}").json()
    assert first["status"] == "processing", "the video was ready before the page opened it"

    # the page starts it (the test never calls play()); time advances while still processing
    page.wait(f"() => window.vidmeshPlayer.engine === 'hls.js' && {PLAYER}.currentTime > 0.5", timeout=60)
    with hls_mesh.client() as c:
        now = c.get(f"/v1/videos/{vid}").json()
    played_at = time.monotonic() - uploaded["at"]
    assert now["status"] == "processing", f"ready before playback began ({played_at:.1f} s after the upload)"
    assert now["playable"] and now["playback"]["hls"] == f"/v1/videos/{vid}/hls/master.m3u8"
    details = "() => { const h = window.vidmeshPlayer.hls; return h.levels[h.currentLevel].details; }"
    level = page.js(details)
    assert level["live"] is True and level["type"] == "EVENT", level  # a playlist still growing
    listed = len(level["fragments"])
    assert page.js(f"() => {PLAYER}.paused") is False
    assert page.page.locator("#detail").get_attribute("data-status") == "processing"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "dashboard-hls-processing.png"), full_page=True)

    # it plays on as hls.js reloads the playlists and finds the segments encoded since
    page.wait(f"() => {PLAYER}.currentTime > 8", timeout=60)
    assert len(page.js(details)["fragments"]) > listed
    assert page.js("() => window.vidmeshPlayer.fatalErrors") == []
    assert not page.errors, page.errors
    assert not [u for u, status in page.responses if status >= 400], page.responses
    page.close()


def test_plays_to_the_end_and_switches_levels(hls_mesh, browser, uploaded):
    vid = uploaded["id"]
    with hls_mesh.client() as c:
        wait_for(lambda: c.get(f"/v1/videos/{vid}").json()["status"] == "ready", 120, 0.5, "the video to be ready")
    page = Page(browser, hls_mesh)
    page.open(vid)
    page.wait("() => window.vidmeshPlayer.engine === 'hls.js' && window.vidmeshPlayer.hls.levels.length === 2")
    # a ready video is loaded, not started; the quality menu lists Auto and each rung
    assert page.js(f"() => {PLAYER}.paused") is True
    options = page.page.locator("#quality option")
    assert [o.strip() for o in options.all_text_contents()][1:] == ["480p", "360p"]
    assert options.first.text_content().startswith("Auto")
    assert page.page.locator("#quality").input_value() == "-1"
    levels = page.js("() => window.vidmeshPlayer.hls.levels.map((l) => [l.width, l.height])")
    assert sorted(map(tuple, levels)) == sorted(LADDER.values())

    # each level when asked from the menu: hls.js plays it and the picture has its height
    page.js(f"() => {{ const v = {PLAYER}; v.muted = true; return v.play(); }}")
    for name, (width, height) in LADDER.items():
        index = next(i for i, (w, h) in enumerate(levels) if (w, h) == (width, height))
        page.page.select_option("#quality", str(index))
        page.wait(
            """([index, height]) => window.vidmeshPlayer.hls.currentLevel === index
                && document.getElementById('player').videoHeight === height""",
            arg=[index, height],
        )
        assert page.page.locator("#player").get_attribute("data-level") == name
        assert page.js("() => window.vidmeshPlayer.hls.autoLevelEnabled") is False
    page.page.select_option("#quality", "-1")
    page.wait("() => window.vidmeshPlayer.hls.autoLevelEnabled")

    # from the start to the end (at 4x): `ended`, at the duration of the clip
    page.js(
        f"""() => new Promise((resolve) => {{
            const v = {PLAYER};
            v.addEventListener('seeked', resolve, {{once: true}});
            v.currentTime = 0;
        }})"""
    )
    page.js(
        f"() => {{ window.__ended = false; {PLAYER}.addEventListener('ended', () => {{ window.__ended = true; }}); {PLAYER}.playbackRate = 4; }}"
    )
    page.wait("() => window.__ended", timeout=60)
    end, duration = page.js(f"() => [{PLAYER}.currentTime, {PLAYER}.duration]")
    assert abs(end - duration) <= FRAME and abs(duration - SECONDS) <= 2 * FRAME, (end, duration)
    level = page.js("() => { const h = window.vidmeshPlayer.hls; return h.levels[h.currentLevel].details; }")
    assert level["live"] is False and level["type"] == "VOD", level  # ENDLIST once ready

    assert page.js("() => window.vidmeshPlayer.fatalErrors") == []
    assert page.js(f"() => {PLAYER}.error") is None
    worker = [s for u, s in page.responses if u.endswith("/static/hls.js/hls.worker.js")]
    assert worker == [200], "hls.js runs its worker from the gateway (the CSP allows no blob: worker)"
    assert not page.errors, page.errors
    bad = [(u, s) for u, s in page.responses if s >= 400]
    assert not bad, bad
    token_less = [u for u, _ in page.responses if "/hls/" in u and not re.search(r"[?&]token=", u)]
    assert not token_less, token_less  # every HLS request carried the read token...
    assert not [u for u, _ in page.responses if hls_mesh.KEYS["alice"] in u]  # ...never the key
    page.page.screenshot(path=str(ARTIFACTS / "dashboard-hls.png"), full_page=True)
    page.close()
