"""The browser of the dashboard tests: Debian's `chromium` driven through Playwright (the
`playwright` package of the `dev` extra; Playwright's own browser download is never used).

`make test` installs chromium with apt when it is missing. Without a browser the tests that
ask for one skip with a loud `DASHBOARD NOT TESTED` warning, except with `CI=true` in the
environment: then they fail, so a CI run cannot pass with the dashboard untested.
`VIDMESH_CHROMIUM` points them at another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

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


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def no_browser(reason: str):
    message = f"DASHBOARD NOT TESTED: {reason}"
    if in_ci():
        pytest.fail(f"{message}; CI=true: the browser tests must run", pytrace=False)
    warnings.warn(message, UserWarning, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        no_browser(f"no Chromium at {CHROMIUM} (`apt-get install chromium`, or run `make test` as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("the playwright package is missing (pip install -e '.[dev]')")
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
