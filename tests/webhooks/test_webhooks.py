"""Webhooks end to end (issue 18): the suite's Temporal, PostgreSQL and Redis, a worker and a web app of
the test's own, and a receiver the test starts; signatures verified with the `standardwebhooks` package."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook
from temporalio.client import Client

from core.auth import ADMIN_ROLE, mint_token
from core.settings import Settings
from tests.helpers import bearer, new_org, run_worker, serve_app, short_grace_key, wait_until

# A reminder's grace step dispatches reminder.fired: ~4 s after the instant for the tasks of
# short_grace_key; a retry comes 5 s after a failed attempt.
ARRIVES_WITHIN = 30.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    # time.monotonic() when the request arrived.
    at: float = 0.0
    # What the receiver answered (0 until it has).
    status: int = 0

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """An HTTP server that keeps what is POSTed to it and answers each with the next of ``statuses``
    (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    url: str = ""
    # Seconds to wait before answering; where a 3xx answer points.
    delay: float = 0.0
    location: str = ""

    def events(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.event["type"] == kind]


@contextlib.contextmanager
def receiving(**options: Any) -> Iterator[Receiver]:
    """A receiver on a free port of the loopback, until the block ends."""
    state = Receiver(**options)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.monotonic()
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received = Received({k.lower(): v for k, v in self.headers.items()}, body, arrived)
            state.received.append(received)
            time.sleep(state.delay)
            status = state.statuses.pop(0) if state.statuses else 200
            state.answered.append(status)
            received.status = status
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("location", state.location)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as state:
        yield state


def admin(settings: Settings, org: str, user: str = "1") -> dict[str, str]:
    token = mint_token(settings, user_id=user, organization_id=org, ttl_seconds=600, roles=[ADMIN_ROLE])
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def dev(settings: Settings) -> Settings:
    # TICKLER_ENV=dev lets webhooks go to the loopback, where the receiver listens.
    return settings.model_copy(update={"env": "dev", "temporal_task_queue": f"hooks-{uuid.uuid4().hex[:8]}"})


@pytest.fixture
async def app(
    dev: Settings, temporal: Client, engine: AsyncEngine, redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        run_worker(temporal, dev, engine, redis),
        serve_app(dev) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=15) as client,
    ):
        yield client


async def endpoint(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, events: list[str]
) -> dict[str, Any]:
    created = await client.post("/v1/webhooks", json={"url": url, "events": events}, headers=headers)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_events_arrive_signed_and_a_failing_receiver_gets_the_retry(
    app: httpx.AsyncClient, dev: Settings, receiver: Receiver
) -> None:
    org = new_org()
    hook = await endpoint(app, admin(dev, org), receiver.url, ["reminder.fired", "task.changed"])
    assert hook["secret"].startswith("whsec_")
    verifier = Webhook(hook["secret"])
    # The receiver fails the first delivery, whichever event it carries (the create's task.changed and
    # the reminder.fired of a task due now race): its retry, 5 s later, is the one it takes.
    receiver.statuses = [500]
    user = bearer(dev, "7", org) | {"Idempotency-Key": short_grace_key(org, "7")}
    due = datetime.now(UTC).isoformat()
    created = await app.post("/v1/tasks", json={"title": "Call Ana back", "due_at": due}, headers=user)
    assert created.status_code == 201, created.text
    task = created.json()

    def taken(kind: str) -> list[Received]:
        return [r for r in receiver.events(kind) if r.status == 200]

    [fired], [changed] = await wait_until(
        lambda: (
            (taken("reminder.fired"), taken("task.changed"))
            if taken("reminder.fired") and taken("task.changed")
            else None
        ),
        within=ARRIVES_WITHIN,
        what="reminder.fired and task.changed, each answered 200",
    )
    for delivery in receiver.received:
        # Raises unless the signature, over id.timestamp.body with the endpoint's secret, is right.
        verifier.verify(delivery.body, delivery.headers)
        assert delivery.headers["webhook-id"].startswith("evt_")
    assert changed.event["data"] == task
    assert fired.event["data"]["task_id"] == task["id"]
    assert fired.event["data"]["title"] == "Call Ana back"
    # The 500 was retried with the same id and body: receivers deduplicate by webhook-id.
    [failed] = [r for r in receiver.received if r.status == 500]
    [retried] = [r for r in (fired, changed) if r.headers["webhook-id"] == failed.headers["webhook-id"]]
    assert failed.body == retried.body
    assert retried.at - failed.at >= 4.0, "the retry waits out its backoff"

    attempts = (await app.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=admin(dev, org))).json()[
        "items"
    ]
    by_event = [a for a in attempts if a["event_id"] == failed.headers["webhook-id"]]
    assert sorted((a["attempt"], a["status_code"]) for a in by_event) == [(1, 500), (2, 200)]
    assert next(a for a in by_event if a["attempt"] == 1)["error"] == "answered 500"


async def test_a_delivery_survives_a_worker_restart(
    dev: Settings, temporal: Client, engine: AsyncEngine, redis: Redis, receiver: Receiver
) -> None:
    org = new_org()
    receiver.statuses = [503]
    async with serve_app(dev) as (url, _), httpx.AsyncClient(base_url=url, timeout=15) as client:
        async with run_worker(temporal, dev, engine, redis):
            hook = await endpoint(client, admin(dev, org), receiver.url, ["task.changed"])
            due = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            created = await client.post(
                "/v1/tasks", json={"title": "Call Bo", "due_at": due}, headers=bearer(dev, "7", org)
            )
            assert created.status_code == 201, created.text
            await wait_until(lambda: receiver.answered, what="the first attempt")
        # The worker is gone with the retry pending; the next one delivers it.
        async with run_worker(temporal, dev, engine, redis):
            [_, delivered] = await wait_until(
                lambda: (
                    receiver.events("task.changed")[:2] if len(receiver.events("task.changed")) >= 2 else None
                ),
                within=ARRIVES_WITHIN,
                what="the retry after the restart",
            )
            Webhook(hook["secret"]).verify(delivered.body, delivered.headers)
            assert receiver.answered[:2] == [503, 200]


async def test_a_slow_receiver_holds_back_no_other_endpoint_and_redirects_are_not_followed(
    app: httpx.AsyncClient, dev: Settings
) -> None:
    org = new_org()
    hooks = admin(dev, org)
    with (
        receiving() as fast,
        receiving(delay=15.0) as slow,
        receiving() as elsewhere,
        receiving(statuses=[302]) as redirecting,
    ):
        redirecting.location = elsewhere.url
        endpoints = {}
        for name, receiver in (("fast", fast), ("slow", slow), ("redirecting", redirecting)):
            endpoints[name] = await endpoint(app, hooks, receiver.url, ["task.changed"])
        due = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        created = await app.post(
            "/v1/tasks", json={"title": "Call Ana", "due_at": due}, headers=bearer(dev, "7", org)
        )
        assert created.status_code == 201, created.text

        [held] = await wait_until(lambda: slow.received[:1], what="the slow receiver's request")
        [taken] = await wait_until(lambda: fast.received[:1], what="the fast receiver's request")
        # The fast endpoint did not wait for the slow one to answer.
        assert taken.at < held.at + slow.delay

        async def first_attempt(name: str) -> list[dict[str, Any]]:
            path = f"/v1/webhooks/{endpoints[name]['id']}/deliveries"
            items: list[dict[str, Any]] = (await app.get(path, headers=hooks)).json()["items"]
            return [a for a in items if a["attempt"] == 1]

        # The slow one's attempt timed out (10 s) and is recorded as such, to be retried.
        [timed_out] = await wait_until(
            lambda: first_attempt("slow"), within=30, what="the slow attempt's record"
        )
        assert timed_out["status_code"] is None
        assert "Timeout" in timed_out["error"]
        # A redirect is an answer, not an order: nothing reached where it pointed.
        [redirected] = await wait_until(lambda: first_attempt("redirecting"), what="the redirected attempt")
        assert (redirected["status_code"], redirected["error"]) == (302, "answered 302")
        assert elsewhere.received == []


async def test_only_admins_manage_endpoints_and_only_their_organizations(
    app: httpx.AsyncClient, dev: Settings, receiver: Receiver
) -> None:
    org, other = new_org(), new_org()
    refused = await app.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["task.changed"]}, headers=bearer(dev, "7", org)
    )
    assert refused.status_code == 403, refused.text
    assert "admin" in refused.json()["detail"]
    assert (await app.get("/v1/webhooks", headers=bearer(dev, "7", org))).status_code == 403
    hook = await endpoint(app, admin(dev, org), receiver.url, ["task.changed", "task.changed"])
    assert hook["events"] == ["task.changed"]
    listed = (await app.get("/v1/webhooks", headers=admin(dev, org))).json()["items"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    # Another organization's admin: nothing listed, nothing to delete or read.
    outsider = admin(dev, other)
    assert (await app.get("/v1/webhooks", headers=outsider)).json()["items"] == []
    assert (await app.delete(f"/v1/webhooks/{hook['id']}", headers=outsider)).status_code == 404
    assert (await app.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=outsider)).status_code == 404
    # At most 20 per organization: each costs every save of the organization a workflow start.
    for _ in range(19):
        await endpoint(app, admin(dev, org), receiver.url, ["task.changed"])
    over = await app.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["task.changed"]}, headers=admin(dev, org)
    )
    assert over.status_code == 409, over.text
    assert "20 endpoints" in over.json()["detail"]
    assert (await app.delete(f"/v1/webhooks/{hook['id']}", headers=admin(dev, org))).status_code == 204
    assert hook["id"] not in [
        h["id"] for h in (await app.get("/v1/webhooks", headers=admin(dev, org))).json()["items"]
    ]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8080/hooks", "internal address"),
        ("http://localhost/hooks", "internal address"),
        ("http://10.1.2.3/hooks", "internal address"),
        ("http://169.254.169.254/latest/meta-data", "internal address"),
        ("http://[::1]/hooks", "internal address"),
        ("ftp://example.com/hooks", "url"),
        ("http://no-such-host.invalid/hooks", "cannot be resolved"),
    ],
)
async def test_in_production_internal_destinations_are_refused(
    settings: Settings, url: str, says: str
) -> None:
    production = settings.model_copy(update={"env": "production"})
    async with serve_app(production) as (base, _), httpx.AsyncClient(base_url=base, timeout=15) as client:
        body = {"url": url, "events": ["task.changed"]}
        response = await client.post("/v1/webhooks", json=body, headers=admin(production, new_org()))
    assert response.status_code == 422, response.text
    assert says in response.text
