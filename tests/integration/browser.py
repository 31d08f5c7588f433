"""A real Chromium (the system's /usr/bin/chromium, never a downloaded one) driven by Playwright,
with every page watched for console errors and for requests to any origin but the server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    expect,
    sync_playwright,
)

CHROMIUM = Path(os.environ.get("NORMLAB_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Nothing but loopback resolves: the pages must work on a machine without internet.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
WAIT_MS = 180_000  # a failure limit for training to reach a state, not a speed requirement
expect.set_options(timeout=WAIT_MS)


def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} missing: .ci/run installs Debian's chromium package")
    pytest.skip(f"{CHROMIUM} missing")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A Chromium per test module, stopped with it: while Playwright's sync API is started, its
    event loop counts as running in this thread, and other tests' asyncio.run() would refuse."""
    path = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(path), args=[OFFLINE])
        yield launched
        launched.close()


@dataclass
class Watched:
    """A page and what it did wrong: console errors, uncaught exceptions, outside requests."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    # HTTP statuses a test provokes on purpose (a 401 before the key, a 422 from a bad form):
    # Chromium logs each failed fetch as a console error.
    expected_statuses: set[int] = field(default_factory=set)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        text = message.text
        if any(f"status of {s} " in text for s in self.expected_statuses):
            return
        self.errors.append(text)

    def on_request(self, request: Request) -> None:
        self.urls.append(request.url)
        if not request.url.startswith(self.origin):
            self.outside.append(request.url)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def watch(browser: Browser, origin: str) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    watched = Watched(page, origin)
    page.on("console", watched.on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    page.on("request", watched.on_request)
    try:
        yield watched
    finally:
        context.close()
    assert watched.errors == [], watched.errors
    assert watched.outside == [], watched.outside
