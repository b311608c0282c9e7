"""Encrypted payloads end to end, on the real servers: what Temporal holds, what the app and the codec
endpoint show, who may call it, and keys rotated under a running workflow."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from google.protobuf import json_format
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.api.history.v1 import History
from temporalio.client import Client

from core.auth import OPERATOR_ROLE, mint_token
from core.codec import ENCODING, KEY_ID, EncryptionKey
from core.db import tenant_transaction
from core.models import Notification
from core.payloads import CHANGE_UPDATE, TaskChange, TaskState
from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTES, connect
from tests.helpers import bearer, new_org, run_worker, serve_app, start_task, task_state, wait_until
from tickler import devstack

# The dev server's UI, allowed by default (TICKLER_CODEC_CORS_ORIGINS unset).
UI = "http://127.0.0.1:8233"
ENCRYPTED = base64.b64encode(ENCODING).decode()


def operator(settings: Settings) -> dict[str, str]:
    token = mint_token(settings, user_id="ops", organization_id=None, ttl_seconds=600, roles=[OPERATOR_ROLE])
    return {"Authorization": f"Bearer {token}"}


def distinctive() -> tuple[str, str]:
    mark = uuid.uuid4().hex[:12]
    return f"Call Ana about offer {mark}", f"She asked for the Lisbon numbers, ref {mark}"


async def create_task(client: httpx.AsyncClient, headers: dict[str, str], title: str, notes: str) -> str:
    due = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await client.post(
        "/v1/tasks", json={"title": title, "notes": notes, "due_at": due}, headers=headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def temporal_show(settings: Settings, workflow_id: str, *options: str) -> str:
    """`temporal workflow show -o json`, the stock CLI, as an operator would run it."""
    # Nothing of the caller's Temporal environment (an address, a codec, a profile) may change the answer.
    env = {name: value for name, value in os.environ.items() if not name.startswith("TEMPORAL_")}
    process = await asyncio.create_subprocess_exec(
        devstack.temporal_executable(),
        "workflow", "show", "-o", "json",
        "--address", settings.temporal_address,
        "--namespace", settings.temporal_namespace,
        "--workflow-id", workflow_id,
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


def payloads_in(
    node: object, *, skip: str = "searchAttributes", at: str = ""
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every payload of a history in protobuf JSON (a dict with `metadata` and `data`), with its path, but
    those under ``skip``: search attributes are payloads too, in clear by design."""
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict) and "encoding" in node["metadata"]:
            yield at, node
            return
        for key, value in node.items():
            if key != skip:
                yield from payloads_in(value, skip=skip, at=f"{at}/{key}")
    elif isinstance(node, list):
        for n, item in enumerate(node):
            yield from payloads_in(item, skip=skip, at=f"{at}[{n}]")


def sealed_payloads(document: object) -> list[dict[str, Any]]:
    """The payloads of a history, each encrypted: all of them but the search attributes and the SDK's own
    bookkeeping of a local activity (its marker's `data`: sequence, attempt, times; the result is ours)."""
    payloads = list(payloads_in(document))
    clear = [path for path, p in payloads if p["metadata"]["encoding"] != ENCRYPTED]
    assert all(
        re.search(r"/markerRecordedEventAttributes/details/data/payloads\[\d+\]$", c) for c in clear
    ), clear
    return [p for _, p in payloads if p["metadata"]["encoding"] == ENCRYPTED]


def readable(output: str) -> str:
    """The output and, appended, every payload's data base64-decoded: a title in a payload in clear is
    found here whichever way the CLI prints it."""
    datas = [base64.b64decode(p.get("data", "")) for _, p in payloads_in(json.loads(output), skip="")]
    return output + "\n".join(d.decode(errors="replace") for d in datas)


def decoded_text(answer: httpx.Response) -> str:
    return "\n".join(base64.b64decode(p.get("data", "")).decode() for p in answer.json()["payloads"])


async def test_titles_and_notes_are_nowhere_in_temporal_yet_the_app_and_the_codec_show_them(
    client: httpx.AsyncClient, settings: Settings, web_url: str
) -> None:
    title, notes = distinctive()
    headers = bearer(settings, "7", new_org())
    task_id = await create_task(client, headers, title, notes)

    shown = await temporal_show(settings, f"task-{task_id}")
    assert title.split()[-1] in title  # the mark, for the checks below
    for secret in (title, notes, title.split()[-1]):
        assert secret not in readable(shown)
    sealed = sealed_payloads(json.loads(shown))
    assert len(sealed) >= 3, "the start's input, the update's result, the save's marker at least"

    # The app reads them back through its own client...
    task = (await client.get(f"/v1/tasks/{task_id}", headers=headers)).json()
    assert (task["title"], task["notes"]) == (title, notes)

    # ...and an operator through the codec endpoint, as the Web UI calls it from the browser.
    answer = await client.post(
        "/codec/decode",
        json={"payloads": sealed},
        headers={**operator(settings), "Origin": UI, "X-Namespace": settings.temporal_namespace},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == UI
    assert answer.headers["access-control-allow-credentials"] == "true"
    assert len(answer.json()["payloads"]) == len(sealed)
    assert title in decoded_text(answer)
    assert notes in decoded_text(answer)

    # The stock CLI speaks the same protocol: with the endpoint and an operator's token it shows them.
    decoded = await temporal_show(
        settings,
        f"task-{task_id}",
        "--codec-endpoint", f"{web_url}/codec",
        "--codec-auth", operator(settings)["Authorization"],
    )  # fmt: skip
    # Decoded, it prints the payloads' JSON in base64 (where it printed the ciphertext).
    assert title in readable(decoded)
    assert notes in readable(decoded)


async def test_the_codec_endpoint_is_for_operators_from_allowed_origins(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    title, notes = distinctive()
    headers = bearer(settings, "7", new_org())
    task_id = await create_task(client, headers, title, notes)
    sealed = sealed_payloads(json.loads(await temporal_show(settings, f"task-{task_id}")))
    body = {"payloads": sealed}

    # No credentials: 401, with the CORS headers, so that the UI can tell "sign in" from "unreachable".
    nobody = await client.post("/codec/decode", json=body, headers={"Origin": UI})
    assert nobody.status_code == 401
    assert nobody.headers["content-type"] == "application/problem+json"
    assert nobody.headers["access-control-allow-origin"] == UI
    assert title not in nobody.text
    # A user of an organization, even the task's own: 403.
    for path in ("/codec/decode", "/codec/encode"):
        user = await client.post(path, json=body, headers={**headers, "Origin": UI})
        assert user.status_code == 403, user.text
        assert user.headers["content-type"] == "application/problem+json"
        assert "operator" in user.json()["detail"]
    assert (
        await client.post("/codec/decode", json=body, headers={"Authorization": "Bearer x"})
    ).status_code == 401
    # An operator's token, but sent by a page of another origin: refused before anything is decrypted.
    foreign = await client.post(
        "/codec/decode", json=body, headers={**operator(settings), "Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert "access-control-allow-origin" not in foreign.headers
    assert title not in foreign.text

    # The browser's preflight: answered without credentials, for the UI's origin only.
    preflight = await client.options(
        "/codec/decode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == UI
    assert preflight.headers["access-control-allow-credentials"] == "true"
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    elsewhere = await client.options(
        "/codec/decode", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in elsewhere.headers

    # Malformed bodies are the caller's problem, never a 500.
    for bad, status in (("not json", 400), ('{"payloads": [{"data": 5}]}', 400), ('{"x": 1}', 400)):
        answer = await client.post(
            "/codec/decode", content=bad, headers={**operator(settings), "Content-Type": "application/json"}
        )
        assert answer.status_code == status, answer.text
    assert (await client.post("/codec/decode", content=b"{}", headers=operator(settings))).status_code == 415

    # The browser's way: the session cookie of an operator signed in on the development page.
    async def session(operator_too: bool) -> dict[str, str]:
        signed = await client.post(
            "/v1/session/dev", json={"user_id": "ops", "organization_id": "ops", "operator": operator_too}
        )
        assert signed.status_code == 200, signed.text
        token = signed.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        return {"Cookie": f"{settings.session_cookie_name}={token}", "Origin": UI}

    by_cookie = await client.post("/codec/decode", json=body, headers=await session(True))
    assert by_cookie.status_code == 200, by_cookie.text
    assert title in decoded_text(by_cookie)
    assert (await client.post("/codec/decode", json=body, headers=await session(False))).status_code == 403

    # Encode, as the UI does with what an operator types: Tickler's clients then read it back.
    typed = {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(b'"hi"').decode(),
    }
    encoded = await client.post("/codec/encode", json={"payloads": [typed]}, headers=operator(settings))
    assert encoded.status_code == 200
    (sealed_typed,) = encoded.json()["payloads"]
    assert sealed_typed["metadata"]["encoding"] == ENCRYPTED
    back = await client.post("/codec/decode", json={"payloads": [sealed_typed]}, headers=operator(settings))
    assert back.json()["payloads"] == [typed]


async def test_search_attributes_and_memo_hold_no_title_or_notes(
    client: httpx.AsyncClient, settings: Settings, temporal: Client
) -> None:
    title, notes = distinctive()
    org = new_org()
    headers = bearer(settings, "7", org)
    task_id = await create_task(client, headers, title, notes)
    # An edit of both, so that every upsert the workflow makes is seen.
    new_title, new_notes = distinctive()
    edited = await client.patch(
        f"/v1/tasks/{task_id}", json={"title": new_title, "notes": new_notes}, headers=headers
    )
    assert edited.status_code == 200, edited.text

    info = (
        await temporal.get_workflow_handle(f"task-{task_id}").describe()
    ).raw_description.workflow_execution_info
    fields = dict(info.search_attributes.indexed_fields)
    assert {"OrganizationId", "AssigneeId", "TaskStatus", "DueAt"} <= set(fields)
    # Ours, and the one the server sets itself (the workers' build ids).
    assert set(fields) <= {*SEARCH_ATTRIBUTES, "BuildIds"}, (
        "a new search attribute: may it hold personal data?"
    )
    for name, payload in fields.items():
        for secret in (title, notes, new_title, new_notes, title.split()[-1], new_title.split()[-1]):
            assert secret.encode() not in payload.data, name
    assert json.loads(fields["OrganizationId"].data) == org
    assert not info.memo.fields
    # Nor any upsert in the history: every search attribute the workflow ever set.
    history = await temporal.get_workflow_handle(f"task-{task_id}").fetch_history()
    upserted = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    for upsert in upserted:
        assert set(upsert) <= set(SEARCH_ATTRIBUTES)
        for payload in upsert.values():
            assert new_title.encode() not in payload.data
            assert title.encode() not in payload.data


def key_ids(history: History) -> set[str]:
    document = json_format.MessageToDict(history)
    return {base64.b64decode(p["metadata"][KEY_ID]).decode() for p in sealed_payloads(document)}


async def test_a_workflow_started_under_the_old_key_runs_to_its_reminder_after_rotation(
    settings: Settings, engine: AsyncEngine, redis: Redis, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    old, new = EncryptionKey.generate("old-key"), EncryptionKey.generate("new-key")
    queue = f"rotation-{uuid.uuid4().hex[:8]}"
    before = settings.model_copy(
        update={"encryption_keys": SecretStr(old.entry()), "temporal_task_queue": queue}
    )
    # The rotation of docs/deployment.md: the new key first, the old one kept.
    rotated = settings.model_copy(
        update={"encryption_keys": SecretStr(f"{new.entry()},{old.entry()}"), "temporal_task_queue": queue}
    )
    title, notes = distinctive()
    org = new_org()
    state = task_state(org=org, due_in=timedelta(seconds=4), title=title, notes=notes)
    workflow_id = f"task-{state.task_id}"

    old_client = await connect(before)
    async with run_worker(old_client, before, engine, redis):
        await start_task(old_client, state, queue)
    assert key_ids(
        History(events=(await old_client.get_workflow_handle(workflow_id).fetch_history()).events)
    ) == {"old-key"}

    # That worker is gone: one with the rotated keys replays the history written under the old key, fires
    # the timer and delivers, writing what it adds under the new key.
    new_client = await connect(rotated)
    async with run_worker(new_client, rotated, engine, redis):

        async def delivered() -> bool:
            async with tenant_transaction(sessionmaker, org) as session:
                found = await session.scalar(
                    select(Notification.id).where(Notification.task_id == state.task_id)
                )
            return found is not None

        await wait_until(delivered, within=30, what="the reminder under the rotated keys")
        handle = new_client.get_workflow_handle(workflow_id, result_type=TaskState)
        changed = await handle.execute_update(
            CHANGE_UPDATE, TaskChange(action="complete", undo_seconds=0), result_type=TaskState
        )
        assert changed.title == title
        assert (await handle.result()).status == "done"
    history = History(events=(await new_client.get_workflow_handle(workflow_id).fetch_history()).events)
    assert key_ids(history) == {"old-key", "new-key"}
    payloads = sealed_payloads(json_format.MessageToDict(history))

    # The codec endpoint of an app holding both keys reads the whole history...
    ops = operator(settings)
    async with serve_app(rotated) as (url, _), httpx.AsyncClient(base_url=url) as http:
        both = await http.post("/codec/decode", json={"payloads": payloads}, headers=ops)
        assert both.status_code == 200, both.text
        assert title in decoded_text(both)
        assert notes in decoded_text(both)
    # ...and one whose old key was removed too soon says which key it lacks.
    new_only = settings.model_copy(update={"encryption_keys": SecretStr(new.entry())})
    async with serve_app(new_only) as (url, _), httpx.AsyncClient(base_url=url) as http:
        lacking = await http.post("/codec/decode", json={"payloads": payloads}, headers=ops)
        assert lacking.status_code == 422, lacking.text
        detail = lacking.json()["detail"]
        assert "'old-key'" in detail
        assert "not configured" in detail
        assert title not in lacking.text
