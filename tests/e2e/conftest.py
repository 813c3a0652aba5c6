"""The browser of the dashboard tests: Debian's `chromium` driven through Playwright (the
`playwright` package of the `dev` extra; Playwright's own browser download is never used),
on a dashboard with its npm packages (hls.js, tus-js-client, which `make install` puts in
web/node_modules with npm).

`make test` installs chromium with apt when it is missing. Without a browser or those
packages the tests that ask for one skip with a loud `DASHBOARD NOT TESTED` warning, except
with `CI=true` in the environment: then they fail, so a CI run cannot pass with the
dashboard untested (`missing_tool` in tests/conftest.py). `VIDMESH_CHROMIUM` points them
at another Chromium binary.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import missing_tool

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
NPM_INSTALL = "`make install` (npm ci in web/; needs Node.js 18 or newer and npm: `apt-get install nodejs npm`)"


def no_browser(tool: str, install: str, why: str = ""):
    missing_tool(tool, install, why, untested="DASHBOARD NOT TESTED")


@pytest.fixture(scope="session")
def browser_packages():
    """The dashboard's npm packages as the gateway will serve them (the same settings)."""
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings.load()
    for package, directory, first in (
        ("hls.js", settings.hlsjs_dir, "hls.min.js"),
        ("tus-js-client", settings.tusjs_dir, "tus.min.js"),
    ):
        if not (directory / first).is_file():
            no_browser(f"the dashboard's npm package {package}", NPM_INSTALL, f"no {directory / first}")


@pytest.fixture(scope="module")
def browser(browser_packages):
    if not os.path.exists(CHROMIUM):
        no_browser(
            "Chromium",
            "`apt-get install chromium` (`make test` does, as root or with passwordless sudo), "
            "or set VIDMESH_CHROMIUM to a Chromium binary",
            f"nothing at {CHROMIUM}",
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("the playwright package", "`pip install -e '.[dev]'` (`make install` does)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def receiver():
    """An HTTP receiver of webhooks on 127.0.0.1 (`Receiver` in test_webhooks.py), one per module."""
    from tests.e2e.test_webhooks import Receiver

    r = Receiver()
    yield r
    r.stop()
