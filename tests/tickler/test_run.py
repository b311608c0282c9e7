"""`tickler run` as `make run` uses it: a real process tree, stopped by SIGTERM, restarted on the same data.

A task created before a shutdown still fires after the restart, although it fell due while the stack was
down: its timer lives in Temporal's database under TICKLER_DATA_DIR, not in a process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email
import email.message
import email.policy
import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import psutil
import pytest
from pydantic import SecretStr

from core.auth import mint_token, verify_token
from core.settings import Settings
from tests.helpers import accepts
from tickler.devstack import free_port, run_process
from tickler.devstack.process import log_tail

SECRET = "test-secret-of-at-least-thirty-two-bytes"
# The first start runs initdb; both include the Temporal dev server's start-up and the migrations.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
NOTIFICATION_TIMEOUT = 30.0
DUE_IN = timedelta(seconds=6)
LOG_TAIL_BYTES = 6000

T = TypeVar("T")


@dataclass
class Stack:
    """How to start one `tickler run`: its environment, its ports, its data dir and its output file."""

    data_dir: Path
    log_path: Path
    ports: dict[str, int]
    env: dict[str, str]
    launched: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {datetime.now(UTC).isoformat()} tickler run\n".encode())
        proc = run_process.launch(["run"], self.env, self.data_dir, self.log_path)
        self.launched.append(proc)
        return proc

    def tail(self) -> str:
        return log_tail(self.log_path, LOG_TAIL_BYTES)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    data_dir = tmp_path / "data"
    ports = {
        name: free_port()
        for name in (
            "web", "postgres", "redis", "temporal", "temporal_ui", "web_metrics", "worker_metrics", "smtp"
        )
    }  # fmt: skip
    env = run_process.clean_environ()
    env.update(
        PYTHONUNBUFFERED="1",
        TICKLER_DATA_DIR=str(data_dir),
        TICKLER_WEB_PORT=str(ports["web"]),
        TICKLER_TEMPORAL_UI_PORT=str(ports["temporal_ui"]),
        TICKLER_WEB_METRICS_PORT=str(ports["web_metrics"]),
        TICKLER_WORKER_METRICS_PORT=str(ports["worker_metrics"]),
        TICKLER_EMBEDDED_POSTGRES_PORT=str(ports["postgres"]),
        TICKLER_EMBEDDED_REDIS_PORT=str(ports["redis"]),
        TICKLER_EMBEDDED_TEMPORAL_PORT=str(ports["temporal"]),
        TICKLER_EMBEDDED_SMTP_PORT=str(ports["smtp"]),
        TICKLER_JWT_SECRET=SECRET,
        TICKLER_LOG_LEVEL="INFO",
        # Idle streams send a heartbeat soon, which marks the end of a replay.
        TICKLER_SSE_HEARTBEAT_SECONDS="0.5",
    )
    stack = Stack(data_dir=data_dir, log_path=tmp_path / "tickler-run.log", ports=ports, env=env)
    yield stack
    # A failed test must not leave a stack behind.
    for proc in stack.launched:
        run_process.stop(proc, STOP_TIMEOUT)
    for process in _of_stack(stack):
        with contextlib.suppress(psutil.Error):
            process.kill()


def _settings() -> Settings:
    return Settings(jwt_secret=SecretStr(SECRET), jwt_issuer=None, jwt_audience=None)


def _wait_for(what: str, check: Callable[[], bool], within: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert proc.poll() is None, f"`tickler run` exited with {proc.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        time.sleep(0.1)


def _healthy(web: str) -> bool:
    try:
        with httpx.Client(base_url=web, timeout=1.0) as client:
            return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def start_stack(stack: Stack) -> tuple[subprocess.Popen[bytes], float]:
    """Start `tickler run`; return it once /healthz answers, with the seconds that took."""
    began = time.monotonic()
    proc = stack.start()
    _wait_for("GET /healthz to answer 200", lambda: _healthy(stack.web), START_TIMEOUT, proc)
    return proc, time.monotonic() - began


def stop_stack(stack: Stack, proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM `tickler run`; assert it exits 0 and leaves no process and no open port; the seconds taken."""
    descendants = psutil.Process(proc.pid).children(recursive=True)
    # The servers, the worker and the web process at least (PostgreSQL's backends come on top), found both
    # ways, so that the checks below cannot pass for want of seeing anything.
    assert len(descendants) >= 5, [_describe(p) for p in descendants]
    assert {p.pid for p in descendants} <= {p.pid for p in _of_stack(stack)}
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`tickler run` did not exit within {STOP_TIMEOUT} s of SIGTERM")
    took = time.monotonic() - began
    assert code == 0, f"`tickler run` exited with {code} on SIGTERM"
    # `tickler run` waits for each child: once it is gone, so is everything else.
    assert not leftovers(stack, descendants)
    return took


def leftovers(stack: Stack, descendants: list[psutil.Process]) -> list[str]:
    """What still runs of a stack, or still accepts connections on one of its ports."""
    left = {p.pid: _describe(p) for p in descendants if _alive(p)}
    left.update((p.pid, _describe(p)) for p in _of_stack(stack))
    return [*left.values()] + [
        f"port {name} {port} accepts" for name, port in stack.ports.items() if accepts(port)
    ]


def _of_stack(stack: Stack) -> list[psutil.Process]:
    """Every live process of the stack: what inherited its TICKLER_DATA_DIR or names it, and their children.

    PostgreSQL overwrites its processes' environment with their titles, so its postmaster is found by its
    command line (-D <data dir>/postgres) and its backends as the postmaster's children.
    """
    data_dir = str(stack.data_dir)
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.environ().get("TICKLER_DATA_DIR") != data_dir and not any(
                data_dir in part for part in process.info["cmdline"] or []
            ):
                continue
            for member in [process, *process.children(recursive=True)]:
                if _alive(member):
                    found[member.pid] = member
        except psutil.Error:
            continue  # gone, or another user's
    return list(found.values())


def _alive(process: psutil.Process) -> bool:
    try:
        # is_running() also tells a reused pid from the process we knew.
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())}"
    except psutil.Error:
        return f"{process.pid} (gone)"


@dataclass
class Frame:
    """One block of a text/event-stream: an event, a retry line or a heartbeat comment."""

    event: str | None = None
    id: str | None = None
    data: list[str] = field(default_factory=list)
    retry: str | None = None
    comment: str | None = None


async def read_stream(
    web: str, headers: dict[str, str], until: Callable[[list[Frame]], bool], within: float
) -> list[Frame]:
    """The stream's frames, heartbeats included, until ``until`` holds; fail after ``within`` seconds."""
    frames: list[Frame] = []
    try:
        async with (
            asyncio.timeout(within),
            httpx.AsyncClient(base_url=web, timeout=10.0) as client,
            client.stream("GET", "/v1/notifications/stream", headers=headers) as response,
        ):
            assert response.status_code == 200, (await response.aread()).decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            frame = Frame()
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "":
                        frame.comment = value
                    elif name == "data":
                        frame.data.append(value)
                    elif name in ("event", "id", "retry"):
                        setattr(frame, name, value)
                    continue
                frames.append(frame)
                frame = Frame()
                if until(frames):
                    return frames
    except TimeoutError:
        pass
    raise AssertionError(f"the stream did not deliver what was awaited within {within} s; got {frames}")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    # A thread of its own: asyncio.run would reset the current event loop of pytest-asyncio's thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def notifications(frames: list[Frame]) -> list[dict[str, Any]]:
    return [json.loads("\n".join(f.data)) for f in frames if f.event == "notification"]


@pytest.mark.e2e
def test_run_survives_a_restart_and_fires_the_timer_that_fell_due_meanwhile(stack: Stack) -> None:
    settings = _settings()
    headers = {
        "Authorization": f"Bearer {mint_token(settings, user_id='7', organization_id='42', ttl_seconds=600)}"
    }
    try:
        proc, first_start = start_stack(stack)
        # The banner names where each process serves its metrics. `tickler run` prints it once the web
        # answers, so it may come a moment after /healthz does: waited for, with a deadline.
        # The whole log: the banner may have scrolled out of the tail by the time it is read.
        _wait_for(
            "the banner in the log",
            lambda: f"{stack.web}/codec" in stack.log_path.read_text(errors="replace"),
            30,
            proc,
        )
        log = stack.log_path.read_text(errors="replace")
        for name in ("web_metrics", "worker_metrics"):
            assert f"http://127.0.0.1:{stack.ports[name]}/metrics" in log
        # Payloads are encrypted with a key made on the first start and kept, owner-only, for the next;
        # the dev server's UI decodes them through the web app's codec endpoint.
        key_file = stack.data_dir / "encryption.keys"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text()
        assert f"{stack.web}/codec" in log
        assert any(
            f"--ui-codec-endpoint {stack.web}/codec" in " ".join(p.cmdline()) for p in _of_stack(stack)
        )

        due = datetime.now(UTC) + DUE_IN
        with httpx.Client(base_url=stack.web, timeout=10.0) as client:
            created = client.post(
                "/v1/tasks", json={"title": "Call Ana", "due_at": due.isoformat()}, headers=headers
            )
            assert created.status_code == 201, created.text
            task = created.json()
            assert datetime.fromisoformat(task["due_at"]) == due
            assert client.get("/v1/notifications", headers=headers).json()["items"] == []

        first_stop = stop_stack(stack, proc)
        # The point of the test: the task falls due while nothing runs. A deadline, not a fixed delay.
        while (remaining := (due - datetime.now(UTC)).total_seconds()) > 0:
            time.sleep(remaining)
        restarted_at = datetime.now(UTC)

        proc, second_start = start_stack(stack)
        assert key_file.read_text() == key

        # Last-Event-ID 0: replayed if the reminder fired before we connected, live otherwise.
        frames = run_async(
            read_stream(
                stack.web,
                {**headers, "Last-Event-ID": "0"},
                lambda frames: any(n["task_id"] == task["id"] for n in notifications(frames)),
                NOTIFICATION_TIMEOUT,
            )
        )
        [event] = [f for f in frames if f.event == "notification" and task["id"] in "".join(f.data)]
        [fired] = [n for n in notifications(frames) if n["task_id"] == task["id"]]
        assert event.id == str(fired["id"])
        assert fired["title"] == "Call Ana"
        assert datetime.fromisoformat(fired["due_at"]) == due
        # Written after the restart, so by the restarted stack, and never early.
        assert datetime.fromisoformat(fired["created_at"]) >= max(due, restarted_at)

        # Exactly once: the inbox holds one notification, and a full replay (everything before the first
        # heartbeat) sends it once.
        replay = run_async(
            read_stream(
                stack.web,
                {**headers, "Last-Event-ID": "0"},
                lambda frames: frames[-1].comment is not None,
                NOTIFICATION_TIMEOUT,
            )
        )
        assert [n["id"] for n in notifications(replay) if n["task_id"] == task["id"]] == [fired["id"]]
        with httpx.Client(base_url=stack.web, timeout=10.0) as client:
            inbox = client.get("/v1/notifications", headers=headers)
            assert inbox.status_code == 200, inbox.text
            mine_fired = [
                (n["id"], n["task_id"]) for n in inbox.json()["items"] if n["task_id"] == task["id"]
            ]
            assert mine_fired == [(fired["id"], task["id"])]
            fetched = client.get(f"/v1/tasks/{task['id']}", headers=headers)
            assert fetched.status_code == 200, fetched.text
            again = fetched.json()
            for key in ("id", "organization_id", "assignee_id", "title", "created_at"):
                assert again[key] == task[key], key
            assert datetime.fromisoformat(again["due_at"]) == due

            # Email escalation on the stack's own SMTP server: an unread reminder becomes an .eml file.
            mail_dir = stack.data_dir / "mail"
            log = stack.log_path.read_text(errors="replace")
            assert f"smtp://127.0.0.1:{stack.ports['smtp']}, each message an .eml in {mail_dir}" in log
            mine = {"email": "ana@example.com", "email_unread_after_seconds": 10}
            assert client.put("/v1/me/settings", json=mine, headers=headers).status_code == 200
            soon = {"title": "Send Bo the offer", "due_at": datetime.now(UTC).isoformat()}
            assert client.post("/v1/tasks", json=soon, headers=headers).status_code == 201

        def mailed() -> list[email.message.EmailMessage]:
            found = [
                email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in mail_dir.glob("*.eml")
            ]
            return [
                m for m in found if isinstance(m, email.message.EmailMessage) and "Send Bo" in m["Subject"]
            ]

        _wait_for("the escalation's .eml", lambda: bool(mailed()), 90, proc)
        [message] = mailed()
        assert message["Subject"] == "Reminder: Send Bo the offer"
        assert message["To"] == "ana@example.com"

        second_stop = stop_stack(stack, proc)
    except BaseException:
        print(stack.tail())
        raise
    print(
        f"tickler run: first start {first_start:.1f} s, stop {first_stop:.1f} s; "
        f"second start {second_start:.1f} s, stop {second_stop:.1f} s"
    )


@pytest.mark.e2e
def test_a_signal_during_start_up_stops_what_started(stack: Stack) -> None:
    proc = stack.start()
    try:
        # PostgreSQL is up, Redis on its way: the signal stops the start-up at its next step.
        _wait_for(
            "Redis to start", lambda: "starting Redis" in stack.log_path.read_text(), START_TIMEOUT, proc
        )
        descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(STOP_TIMEOUT) == 0
        assert "Tickler is up" not in stack.log_path.read_text()
        assert not leftovers(stack, descendants)
    except BaseException:
        print(stack.tail())
        raise


@pytest.mark.e2e
def test_a_killed_run_takes_its_children_along(stack: Stack) -> None:
    # No metrics ports: a port chosen free by the fixture was sometimes taken again by the time the web
    # process bound it (still held by the previous test's stack), and this test is about processes.
    stack.env.update(TICKLER_WEB_METRICS_PORT="0", TICKLER_WORKER_METRICS_PORT="0")
    try:
        proc, _ = start_stack(stack)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        # No SIGTERM handler runs: the kernel signals each child as its parent dies.
        deadline = time.monotonic() + STOP_TIMEOUT
        while left := leftovers(stack, descendants):
            assert time.monotonic() < deadline, f"still there {STOP_TIMEOUT} s after SIGKILL: {left}"
            time.sleep(0.1)
    except BaseException:
        print(stack.tail())
        raise


def test_token_prints_a_jwt_the_api_accepts(tmp_path: Path) -> None:
    env = run_process.clean_environ()
    env["TICKLER_JWT_SECRET"] = SECRET

    def token(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "tickler", "token", "--user", "7", "--org", "42", *extra],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    plain = token()
    assert plain.count(".") == 2, plain
    principal = verify_token(_settings(), plain)
    assert (principal.user_id, principal.organization_id) == ("7", "42")
    claims = jwt.decode(plain, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 24 * 3600  # --ttl defaults to a day
    assert principal.roles == frozenset()
    assert verify_token(_settings(), token("--admin")).roles == {"admin"}
