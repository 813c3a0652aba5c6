"""The dashboard at `/`, driven in a real headless Chromium through Playwright.

Needs Debian's `chromium` (`make test` installs it with apt when it is missing) and the
`playwright` Python package (the `dev` extra); Playwright's own browser download is never
used. Without a browser the test is skipped with a loud reason.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
import warnings
from pathlib import Path

import pytest

from tests.clips import make_clip, make_truncated

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = os.environ.get("VIDMESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
]


def _skip_loudly(reason: str):
    message = f"DASHBOARD NOT TESTED: {reason}"
    warnings.warn(message, UserWarning, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        _skip_loudly(f"no Chromium at {CHROMIUM} (`apt-get install chromium`, or run `make test` as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


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
    good, bad = f"dashboard-{tag}.mp4", f"truncated-{tag}.mp4"
    make_clip(tmp_path / good, width=640, height=360, seconds=2.0)
    make_truncated(tmp_path / bad)

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    media_statuses: list[int] = []
    page.on(
        "response",
        lambda r: media_statuses.append(r.status) if "/renditions/" in r.url else None,
    )
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
    page.evaluate(DROP, ["#drop", files])
    expect(page.locator("#uploads li progress")).to_have_count(2)

    # live status from SSE: the good one becomes ready, the truncated one fails with its reason
    good_row = page.locator("#videos li", has_text=good)
    bad_row = page.locator("#videos li", has_text=bad)
    expect(good_row).to_have_attribute("data-status", "ready", timeout=60_000)
    expect(bad_row).to_have_attribute("data-status", "failed", timeout=60_000)
    expect(bad_row).to_contain_text("bad_media")
    expect(good_row.locator(".mini img")).to_be_visible()

    bad_row.click()
    expect(page.locator("#d-error")).to_contain_text("bad_media")

    # open the ready video: thumbnail, source facts, and a player for each rendition
    good_row.click()
    detail = page.locator("#detail")
    expect(detail).to_have_attribute("data-status", "ready")
    expect(page.locator("#d-source")).to_contain_text("640×360")
    expect(page.locator("#d-source")).to_contain_text("h264")
    page.wait_for_function("() => document.getElementById('d-thumb').naturalWidth > 0")
    page.click("#d-renditions button[data-rendition='360p']")
    expect(page.locator("#player")).to_have_attribute("data-rendition", "360p")
    expect(page.locator("#d-files a[download]")).to_have_text(["download"])

    # play until time advances, then seek (the browser fetches the new position by Range)
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
    assert 206 in media_statuses, media_statuses  # media came by Range

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    assert not api_auth, f"the API key appeared in a URL: {api_auth}"
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
        video = alice.post("/v1/videos", content=open(path, "rb").read(), headers={"Content-Type": "video/mp4"}).json()
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
        assert anon.post("/v1/videos", params={"token": token}, content=b"x", headers={"Content-Type": "video/mp4"}).status_code == 401
        assert anon.post("/v1/tokens", params={"token": token}).status_code == 401
        # forged, altered or another tenant's
        bad = anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": token[:-2] + "xx"})
        assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"
        forged = token.replace("alice.", "bob.", 1)
        assert anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": forged}).status_code == 401
        bobs = bob.post("/v1/tokens").json()["token"]
        assert anon.get(f"/v1/videos/{vid}/thumbnail", params={"token": bobs}).status_code == 404
