"""Resumable uploads from a real browser (Debian's Chromium through Playwright), with
tus-js-client as the gateway serves it from its npm package:

- the dashboard uploads a file with tus; the connection drops in the middle of the body
  (a proxy in front of the gateway cuts it); tus-js-client asks HEAD for the offset and
  sends the rest: the video becomes ready with the file's bytes;
- a customer's page on another origin, holding no API key, uploads through a one-time
  direct-upload URL its backend made (CORS); the URL cannot be used for a second upload.

The `browser` fixture is in tests/e2e/conftest.py (skips loudly, or fails with CI=true).
"""

from __future__ import annotations

import functools
import http.server
import re
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import Mesh, js_run, nats_servers
from tests.uploads import CuttingProxy, make_padded_clip, sha256_file, source_sha256, wait_ready

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def bmesh():
    with tempfile.TemporaryDirectory(prefix="vidmesh-tusweb-") as tmp:
        m = Mesh(Path(tmp), {"VIDMESH_TRANSCODER_PROCS": "1"}).start()
        yield m
        m.stop()


def stored_sha256(mesh, video_id: str) -> str:
    """The source's sha256 from the object store, on a thread of its own (Playwright's sync
    API keeps an event loop running in this one)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(js_run, nats_servers(mesh), lambda js: source_sha256(js, "alice", video_id), 60).result()


def ready_video(mesh, video_id: str) -> dict:
    with mesh.client() as c:
        return wait_ready(c, video_id)


def test_the_dashboard_resumes_an_upload_after_the_connection_drops(bmesh, browser, tmp_path):
    from playwright.sync_api import expect

    path = Path(make_padded_clip(tmp_path / "dropped-wifi.mp4", 30 * MiB))
    with CuttingProxy(bmesh.http_port) as proxy:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(proxy.url + "/")
        page.fill("#key", Mesh.KEYS["alice"])
        page.click("#login button[type=submit]")
        expect(page.locator("#app")).to_be_visible()
        assert page.evaluate("() => !!(window.tus && window.tus.isSupported)")  # served by the gateway

        proxy.cut_after(12 * MiB)  # the Wi-Fi drops 12 MiB into the body
        page.set_input_files("#file", str(path))
        row = page.locator("#videos li", has_text=path.name)
        expect(row).to_have_attribute("data-status", "ready", timeout=120_000)
        assert proxy.cuts == 1
        patches = [r for r in proxy.requests if r.startswith("PATCH /v1/uploads/")]
        offsets = [int(m.group(1)) for r in patches if (m := re.search(r"(?i)upload-offset:\s*(\d+)", r))]
        assert offsets[0] == 0 and offsets[-1] >= 4 * MiB, proxy.requests  # resumed, not restarted
        video_id = page.evaluate("() => window.vidmeshUploads[0].url.split('/').pop()")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-resumed-upload.png"), full_page=True)
        assert not errors, errors
        context.close()
    assert ready_video(bmesh, video_id)["status"] == "ready"
    assert stored_sha256(bmesh, video_id) == sha256_file(path)


# A customer's page: no API key anywhere, only the one-time URL its backend handed it.
CUSTOMER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>customer</title>
<script src="{gateway}/static/tus-js-client/tus.min.js"></script></head>
<body><input id="file" type="file">
<script>
window.send = (url) => new Promise((resolve) => {{
  const file = document.getElementById("file").files[0];
  const upload = new tus.Upload(file, {{
    endpoint: url,
    metadata: {{filename: file.name, filetype: file.type}},
    storeFingerprintForResuming: false,
    retryDelays: [0, 500],
    onSuccess: (p) => resolve({{ok: true, video: p.lastResponse.getHeader("Vidmesh-Video-Id")}}),
    onError: (e) => resolve({{ok: false, status: e.originalResponse ? e.originalResponse.getStatus() : 0,
                               body: e.originalResponse ? e.originalResponse.getBody() : String(e)}}),
  }});
  upload.start();
}});
</script></body></html>
"""


def test_a_page_on_another_origin_uploads_once_through_a_direct_upload_url(bmesh, browser, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(CUSTOMER_PAGE.format(gateway=bmesh.url))
    first = Path(make_padded_clip(site / "first.mp4", 3 * MiB, seed=1))
    second = Path(make_padded_clip(site / "second.mp4", 3 * MiB, seed=2))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with bmesh.client() as c:  # the customer's backend, which holds the key
            made = c.post("/v1/direct-uploads", json={"max_size": 10 * MiB})
            assert made.status_code == 201, made.text
            url = made.json()["url"]
        context = browser.new_context()
        page = context.new_page()
        sent: list[tuple[str, dict]] = []
        page.on("request", lambda r: sent.append((r.url, r.headers)))
        page.goto(origin + "/index.html")
        page.set_input_files("#file", str(first))
        done = page.evaluate("(url) => window.send(url)", url)
        assert done["ok"], done
        video_id = done["video"]
        page.set_input_files("#file", str(second))
        again = page.evaluate("(url) => window.send(url)", url)
        assert not again["ok"] and again["status"] == 403 and "already_used" in again["body"], again
        context.close()
        key = Mesh.KEYS["alice"]
        assert not [u for u, h in sent if key in u or key in str(h) or "authorization" in h], "an API key left the page"
        assert any(u.startswith(bmesh.url + "/v1/direct-uploads/") for u, _ in sent)  # cross-origin, straight in
        video = ready_video(bmesh, video_id)
        assert video["status"] == "ready" and video["filename"] == "first.mp4"
        assert httpx.get(url).status_code == 405  # the URL reads nothing
    finally:
        server.shutdown()
