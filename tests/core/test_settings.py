"""Safe defaults: a process that is not told it is in development runs as production."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import DEV_JWT_SECRET, Settings
from tickler.cli import _refuse_dev_secret


@pytest.fixture
def no_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TICKLER_* variable of the caller's, and no .env (an empty working directory)."""
    for name in [name for name in os.environ if name.startswith("TICKLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_configuration")
def test_a_bare_settings_is_production_and_refuses_the_development_secret() -> None:
    settings = Settings()
    assert settings.env == "production"
    assert settings.jwt_secret.get_secret_value() == DEV_JWT_SECRET
    with pytest.raises(SystemExit, match="only allowed with TICKLER_ENV=dev"):
        _refuse_dev_secret(settings)
    _refuse_dev_secret(Settings(env="dev"))  # development, explicitly: allowed


def tickler(tmp_path: Path, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """`tickler ARGS` with only ``environ`` of TICKLER_* (no .env: ``tmp_path`` is empty)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("TICKLER_")}
    return subprocess.run(
        [sys.executable, "-m", "tickler", *args],
        cwd=tmp_path,
        env=clean | {"TICKLER_DATA_DIR": str(tmp_path / "data")} | environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_development_process_says_so_at_start(tmp_path: Path) -> None:
    # A CA file that does not exist stops `tickler web` right after its start-up lines.
    missing = {"TICKLER_TEMPORAL_TLS_CA_FILE": str(tmp_path / "missing.pem")}
    dev = tickler(tmp_path, "web", TICKLER_ENV="dev", **missing)
    assert dev.returncode != 0
    assert "WARNING" in dev.stderr, dev.stderr
    assert "DEVELOPMENT mode" in dev.stderr
    assert "/v1/session/dev" in dev.stderr
    production = tickler(
        tmp_path, "web", TICKLER_JWT_SECRET="x" * 32, TICKLER_PAYLOAD_ENCRYPTION="false", **missing
    )
    assert production.returncode != 0
    assert "missing.pem" in production.stderr
    assert "DEVELOPMENT" not in production.stderr


def test_tickler_run_is_development_unless_told_otherwise(tmp_path: Path) -> None:
    # `tickler run` refuses a web port that something answers on, before it starts anything.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        unset = tickler(tmp_path, "run", TICKLER_WEB_HOST="127.0.0.1", TICKLER_WEB_PORT=port)
        told = tickler(
            tmp_path, "run", TICKLER_ENV="staging", TICKLER_WEB_HOST="127.0.0.1", TICKLER_WEB_PORT=port
        )
    assert unset.returncode == 1
    assert "DEVELOPMENT mode" in unset.stderr
    assert told.returncode == 1
    assert "DEVELOPMENT" not in told.stderr


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"maintenance_interval_seconds": 1}, "TICKLER_MAINTENANCE_INTERVAL_SECONDS=1: set 0"),
        ({"maintenance_interval_seconds": 59}, "or 60 or more"),
        ({"notification_retention_days": 36_501}, "less than or equal to 36500"),
    ],
)
def test_maintenance_settings_are_bounded(values: dict[str, int], says: str) -> None:
    """An audit of every open task each second, or a retention whose date overflows the purge, is
    refused at start with what to set."""
    with pytest.raises(ValidationError, match=says):
        Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values", [{"maintenance_interval_seconds": 0}, {"maintenance_interval_seconds": 60}]
)
def test_maintenance_settings_at_their_bounds_are_taken(values: dict[str, int]) -> None:
    assert Settings(**values).maintenance_interval_seconds == values["maintenance_interval_seconds"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--since", "2026-01-01T00:00:00Z", "--until", "2027-06-01T00:00:00Z"], "spans 516 days"),
        (["--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z"], "is not before --until"),
        (["--since", "1990-01-01T00:00:00Z"], "ask for 366 at most"),
    ],
)
def test_tickler_stats_refuses_a_window_it_would_scan_for_long(arguments: list[str], says: str) -> None:
    """Refused before it connects to anything: the addresses here lead nowhere."""
    done = subprocess.run(
        [sys.executable, "-m", "tickler", "stats", "--org", "org-1", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ
        | {"TICKLER_ENV": "dev", "TICKLER_DATABASE_URL": "postgresql+asyncpg://x@127.0.0.1:1/x"},
    )
    assert done.returncode == 1
    assert says in done.stderr
    assert done.stderr.startswith("tickler stats: ")


def test_the_heartbeat_interval_has_a_floor_and_a_ceiling() -> None:
    """A microsecond interval would spin the event loop; the hub keeps a group of streams per 25 ms of
    half an interval, so an hour's interval would hold 72,000 groups (and proxies cut a silent stream
    after about a minute anyway)."""
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.1"):
        Settings(sse_heartbeat_seconds=0.0001)
    with pytest.raises(ValidationError, match=r"less than or equal to 300"):
        Settings(sse_heartbeat_seconds=3600)
