"""The page in each of its states checked by axe-core (Deque's engine, from npm, pinned by
tests/browser/axe/package-lock.json), injected by Playwright: no violation of WCAG 2.1 A or AA, in the
light and the dark colour scheme."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from core.settings import Settings
from tests.browser.conftest import SHOWS_WITHIN_MS, TIMEZONE, PageErrors
from tests.browser.test_page_browser import USER, create_task, sign_in
from tests.helpers import bearer, new_org

pytestmark = pytest.mark.browser

AXE_DIR = Path(__file__).parent / "axe"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture(scope="session")
def axe_script() -> str:
    """axe-core's script, installed from the lock with `npm ci` the first time (as make test installs
    what it needs); without npm the tests skip, and fail in CI."""
    if not AXE_SCRIPT.exists():
        npm = shutil.which("npm")
        if npm is None:
            message = (
                "npm is missing: it installs axe-core for the accessibility tests (`apt-get install npm`)"
            )
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        subprocess.run(
            [npm, "ci", "--no-fund", "--no-audit", "--ignore-scripts", "--loglevel=error"],
            cwd=AXE_DIR,
            check=True,
            timeout=600,
        )
    return AXE_SCRIPT.read_text()


@pytest.fixture(params=["light", "dark"])
async def scheme_context(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[BrowserContext]:
    # The page's Content-Security-Policy allows its own scripts only: the test's context lets axe in.
    context = await browser.new_context(
        viewport={"width": 1100, "height": 720},
        timezone_id=TIMEZONE,
        locale="en-US",
        color_scheme=request.param,
        bypass_csp=True,
    )
    context.set_default_timeout(SHOWS_WITHIN_MS)
    yield context
    await context.close()


async def violations(page: Page, axe_script: str) -> list[str]:
    """What axe finds on the page as it is now, one line per violation and element."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(content=axe_script)
    found: list[dict[str, Any]] = await page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}})).violations",
        WCAG_21_AA,
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {node['target']}: {node.get('failureSummary', '')}"
        for v in found
        for node in v["nodes"]
    ]


async def test_every_state_of_the_page_passes_axe(
    web_url: str,
    settings: Settings,
    scheme_context: BrowserContext,
    axe_script: str,
    page_errors: PageErrors,
    artifacts: Path,
) -> None:
    org = new_org()
    headers = bearer(settings, USER, org)
    page = page_errors.watch(await scheme_context.new_page())
    found: dict[str, list[str]] = {}

    await page.goto(web_url)
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    found["signed out"] = await violations(page, axe_script)

    async with httpx.AsyncClient(base_url=web_url, timeout=15) as client:
        now = datetime.now(UTC)
        await create_task(client, headers, "Send Marta the offer letter", now + timedelta(days=1))
        await create_task(client, headers, "Prepare the panel for Jun", now - timedelta(minutes=5))
        await sign_in(page, web_url, org)
        await expect(page.locator("#task-list > li")).to_have_count(2)
        found["list"] = await violations(page, axe_script)

        await create_task(client, headers, "Call Ana back", datetime.now(UTC) + timedelta(seconds=1))
        await expect(page.locator(".toast", has_text="Call Ana back")).to_be_visible()
        found["toast"] = await violations(page, axe_script)

        await page.locator("#bell").click()
        await expect(page.locator("#inbox")).to_be_visible()
        # The task created overdue fired at once, and the last one.
        await expect(page.locator("#notification-list > li")).to_have_count(2)
        found["inbox open"] = await violations(page, axe_script)
        await page.keyboard.press("Escape")

        await page.get_by_label("Done: Send Marta the offer letter").click()
        await expect(page.locator("#undo")).to_be_visible()
        found["undo offered"] = await violations(page, axe_script)
    await page.screenshot(path=artifacts / "accessibility.png")
    assert {state: lines for state, lines in found.items() if lines} == {}
    assert page_errors.uncaught == []
