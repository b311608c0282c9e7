"""Desktop notifications in Chromium with the permission granted: opt-in, one per reminder while no tab of
the page is visible (none while one is), and a click brings the page to the task."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect
from temporalio.worker import Worker

from core.settings import Settings
from tests.browser.conftest import PageErrors
from tests.browser.test_page_browser import USER, create_task, sign_in
from tests.helpers import bearer, new_org, serve_app, wait_until

pytestmark = pytest.mark.browser

# Headless Chromium shows every page as visible and has no notification centre to look into: each tab's
# visibility is set by the test (the `visibilitychange` a browser fires), and every system notification
# the page raises is recorded as it is made.
WATCH = """
(() => {
  let hidden = false;
  const state = () => (hidden ? "hidden" : "visible");
  Object.defineProperty(document, "visibilityState", { configurable: true, get: state });
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  window.setHidden = (value) => { hidden = value; document.dispatchEvent(new Event("visibilitychange")); };
  window.alerts = [];
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) {
      super(title, options);
      window.alerts.push({ title, tag: options && options.tag, alert: this });
    }
  };
})();
"""


async def alerts(tabs: list[Page]) -> list[str]:
    found: list[str] = []
    for tab in tabs:
        found += await tab.evaluate("window.alerts.map((a) => a.title)")
    return found


async def test_a_reminder_while_no_tab_is_visible_raises_one_desktop_notification(
    settings: Settings, worker: Worker, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    org = new_org()
    headers = bearer(settings, USER, org)
    await context.add_init_script(WATCH)
    async with serve_app(settings) as (url, _), httpx.AsyncClient(base_url=url, timeout=15) as client:
        await context.grant_permissions(["notifications"], origin=url)
        first = page_errors.watch(await context.new_page())
        await sign_in(first, url, org)
        # Opt in: the control says so, in every tab.
        await first.get_by_role("button", name="Desktop alerts off").click()
        await expect(first.get_by_role("button", name="Desktop alerts on")).to_have_attribute(
            "aria-pressed", "true"
        )
        second = page_errors.watch(await context.new_page())
        await second.goto(url)
        await expect(second.locator("#live")).to_have_text("Live")
        await expect(second.get_by_role("button", name="Desktop alerts on")).to_be_visible()
        tabs = [first, second]

        # A tab is visible: the toast is enough.
        await create_task(client, headers, "Send Bo the offer", datetime.now(UTC))
        for tab in tabs:
            await expect(tab.locator(".toast", has_text="Send Bo the offer")).to_be_visible()
        assert await alerts(tabs) == []

        # No tab visible: one system notification for the reminder, not one per tab.
        for tab in tabs:
            await tab.evaluate("window.setHidden(true)")
        task_id = await create_task(client, headers, "Call Ana back", datetime.now(UTC))
        for tab in tabs:
            await expect(tab.locator(".toast", has_text="Call Ana back")).to_be_visible()
        # Each tab raises its alerts as it shows the toast: both toasts shown, every alert is made.
        await wait_until(lambda: alerts(tabs), what="the desktop notification")
        assert await alerts(tabs) == ["Reminder: Call Ana back"]

        # Its click brings the page forward on that task.
        [raised] = [tab for tab in tabs if await tab.evaluate("window.alerts.length")]
        await raised.evaluate("window.alerts[0].alert.onclick()")
        row = raised.locator(f'#task-list > li[data-id="{task_id}"]')
        await expect(row.get_by_role("button").first).to_be_focused()
        await raised.screenshot(path=artifacts / "desktop-alert-clicked.png")
    assert page_errors.uncaught == []
