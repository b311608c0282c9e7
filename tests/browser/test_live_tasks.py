"""The task list stays true without a reload: what another tab, a colleague or another service's signal does
to a task shows in the open page at once (`event: task.changed`)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, expect
from temporalio.client import Client
from temporalio.worker import Worker

from core.settings import Settings
from tests.browser.conftest import PageErrors
from tests.browser.test_page_browser import USER, create_task, sign_in
from tests.helpers import bearer, new_org, serve_app, temporal_cli, wait_until, workflow_closed
from web.resources import EXTENSION_KEY

pytestmark = pytest.mark.browser


async def test_the_list_follows_changes_made_elsewhere_without_a_reload(
    web_url: str, settings: Settings, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    org = new_org()
    mine, colleague = bearer(settings, USER, org), bearer(settings, "8", org)
    page = page_errors.watch(await context.new_page())
    await sign_in(page, web_url, org)
    # Set once: a reload would lose it.
    await page.evaluate("window.notReloaded = true")
    rows = page.locator("#task-list > li")
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=web_url, timeout=15) as client:
        # Created elsewhere (another tab, the CRM): they appear, soonest first.
        first = await create_task(client, mine, "Call Ana back", now + timedelta(hours=1))
        second = await create_task(client, mine, "Send Bo the offer", now + timedelta(hours=2))
        await expect(rows.locator(".task-title")).to_have_text(["Call Ana back", "Send Bo the offer"])

        # Another service reschedules the first past the second with the stock Temporal CLI: it moves.
        later = (now + timedelta(hours=3)).isoformat()
        args = ["workflow", "signal", "--workflow-id", f"task-{first}", "--name", "reschedule"]
        result = await asyncio.to_thread(
            temporal_cli, settings, *args, "--input", json.dumps({"due_at": later})
        )
        assert result.returncode == 0, result.stderr
        await expect(rows.locator(".task-title")).to_have_text(["Send Bo the offer", "Call Ana back"])
        await page.screenshot(path=artifacts / "moved-by-a-signal.png")

        # A colleague completes one; the other is given to the colleague: both leave my list.
        done = await client.post(f"/v1/tasks/{second}/complete", headers=colleague)
        assert done.status_code == 200, done.text
        await expect(rows.locator(".task-title")).to_have_text(["Call Ana back"])
        given = await client.patch(f"/v1/tasks/{first}", json={"assignee_id": "8"}, headers=colleague)
        assert given.status_code == 200, given.text
        await expect(rows).to_have_count(0)
        await expect(page.locator("#tasks-empty")).to_be_visible()
    assert await page.evaluate("window.notReloaded") is True
    assert page_errors.uncaught == []
    assert page_errors.unexpected(401) == []


async def test_undo_brings_back_a_task_within_its_window_and_is_gone_after(
    settings: Settings,
    worker: Worker,
    temporal: Client,
    context: BrowserContext,
    page_errors: PageErrors,
    artifacts: Path,
) -> None:
    short = settings.model_copy(update={"undo_window_seconds": 4.0})
    org = new_org()
    headers = bearer(short, USER, org)
    page = page_errors.watch(await context.new_page())
    rows = page.locator("#task-list > li")
    async with serve_app(short) as (url, _), httpx.AsyncClient(base_url=url, timeout=15) as client:
        await sign_in(page, url, org)
        task_id = await create_task(client, headers, "Call Ana back", datetime.now(UTC) + timedelta(hours=1))
        await expect(rows).to_have_count(1)

        # Done by mistake: the offer to undo it, then Undo, and it is back, open.
        await page.get_by_label("Done: Call Ana back").click()
        await expect(rows).to_have_count(0)
        await expect(page.locator("#undo")).to_contain_text("“Call Ana back” is done.")
        await page.screenshot(path=artifacts / "undo-offered.png")
        await page.get_by_role("button", name="Undo: Call Ana back").click()
        await expect(rows.locator(".task-title")).to_have_text(["Call Ana back"])
        await expect(page.locator("#undo")).to_be_hidden()
        assert (await client.get(f"/v1/tasks/{task_id}", headers=headers)).json()["status"] == "open"

        # Deleted, and left alone: the offer goes with the window, and the API refuses a late reopen.
        await page.get_by_label("Delete: Call Ana back").click()
        await expect(page.locator("#undo")).to_contain_text("Deleted “Call Ana back”.")
        await expect(page.locator("#undo")).to_be_hidden()

        # The page withdrew it half a second early; the window ends with the workflow, then 409.
        handle = temporal.get_workflow_handle(f"task-{task_id}")
        await wait_until(lambda: workflow_closed(handle), within=15, what="the task's workflow to close")
        late = await client.post(f"/v1/tasks/{task_id}/reopen", headers=headers)
        assert late.status_code == 409, late.text
        await expect(rows).to_have_count(0)
    assert page_errors.uncaught == []
    assert page_errors.unexpected(401) == []


async def test_ten_tabs_share_one_stream_and_another_leads_when_the_first_closes(
    settings: Settings, worker: Worker, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    org = new_org()
    headers = bearer(settings, USER, org)
    async with serve_app(settings) as (url, app), httpx.AsyncClient(base_url=url, timeout=15) as client:
        hub = app.extensions[EXTENSION_KEY].hub
        tabs = [page_errors.watch(await context.new_page()) for _ in range(10)]
        await sign_in(tabs[0], url, org)
        for tab in tabs[1:]:
            await tab.goto(url)
            await expect(tab.locator("#live")).to_have_text("Live")
        assert hub.streams_of(org, USER) == 1

        # Every tab gets every reminder and every task change, through the one stream.
        await create_task(client, headers, "Call Ana back", datetime.now(UTC) + timedelta(seconds=1))
        for tab in tabs:
            await expect(tab.locator(".toast", has_text="Call Ana back")).to_be_visible()
            await expect(tab.locator("#task-list > li", has_text="Call Ana back")).to_have_count(1)
        assert hub.streams_of(org, USER) == 1

        # The leading tab closes: another opens the stream from the last id seen, and what fires while
        # no tab leads reaches every tab left, once.
        await tabs[0].close()
        await create_task(client, headers, "Send Bo the offer", datetime.now(UTC))
        for tab in tabs[1:]:
            await expect(tab.locator(".toast", has_text="Send Bo the offer")).to_have_count(1)
            await expect(tab.locator("#badge")).to_have_text("2")
        await wait_until(lambda: hub.streams_of(org, USER) == 1, what="one stream again")
        await tabs[1].screenshot(path=artifacts / "ten-tabs.png")
    assert page_errors.uncaught == []
