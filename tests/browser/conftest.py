"""Playwright driving Debian's Chromium, headless; never a downloaded browser (`apt-get install chromium`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Not UTC, so that a time shown or sent in the wrong zone shows up.
TIMEZONE = "America/Sao_Paulo"
ARTIFACTS = Path(__file__).parents[1] / "artifacts" / "browser"
# How long a page may take to show what the server did (a reminder fires within a second of its time).
SHOWS_WITHIN_MS = 15_000
expect.set_options(timeout=SHOWS_WITHIN_MS)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `apt-get install chromium` (Debian's package; no browser download)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), headless=True, args=ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile (its own cookies); its pages are the tabs of one browser."""
    context = await browser.new_context(
        viewport={"width": 1100, "height": 720}, timezone_id=TIMEZONE, locale="en-US"
    )
    context.set_default_timeout(SHOWS_WITHIN_MS)
    yield context
    await context.close()


class PageErrors:
    """Uncaught exceptions and console errors of the pages watched: a page that works logs neither.

    Except the browser's own line for each error answer, e.g. the 401 of `GET /v1/session` signed out.
    """

    def __init__(self) -> None:
        self.uncaught: list[str] = []
        self.console: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda error: self.uncaught.append(str(error)))
        page.on("console", lambda msg: self.console.append(msg.text) if msg.type == "error" else None)
        return page

    def unexpected(self, *statuses: int) -> list[str]:
        """Console errors other than the browser's report of an answer with one of ``statuses``."""
        expected = tuple(f"the server responded with a status of {status}" for status in statuses)
        return [line for line in self.console if not any(e in line for e in expected)]


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
