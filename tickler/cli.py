"""`tickler`: run the development stack, or one process of it, apply migrations, mint dev tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from core.auth import mint_token
from core.settings import DEV_JWT_SECRET, Settings, get_settings


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic announces each of its plugins at INFO on every `tickler migrate` and `tickler run`.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _refuse_dev_secret(settings: Settings) -> None:
    if settings.env != "dev" and settings.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
        sys.exit(
            "TICKLER_JWT_SECRET is not set: the development secret is only allowed with TICKLER_ENV=dev."
        )


def _run(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process's main coroutine, on uvloop unless told not to (or not installed)."""
    loop_factory = None
    if settings.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.run import run_stack

    return run_stack(settings, args.replicas)


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.worker import run_worker

    _run(settings, run_worker(settings))
    return 0


def _cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from web.server import serve_web

    _refuse_dev_secret(settings)
    _run(settings, serve_web(settings))
    return 0


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.migrate import upgrade

    upgrade(settings.database_url, args.revision)
    return 0


def _cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    print(mint_token(settings, user_id=args.user, organization_id=args.org, ttl_seconds=args.ttl))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="the whole development stack: PostgreSQL, Redis, Temporal, migrations, worker, web"
    )
    run.add_argument(
        "--replicas",
        type=_positive,
        default=1,
        metavar="N",
        help=(
            "N >= 2: N workers and N web processes (on the N ports after TICKLER_WEB_PORT) behind HAProxy, "
            "which takes TICKLER_WEB_PORT (default: 1, no proxy)"
        ),
    )
    run.set_defaults(func=_cmd_run)
    commands.add_parser("worker", help="the Temporal worker").set_defaults(func=_cmd_worker)
    commands.add_parser("web", help="the REST API and the stream (Hypercorn)").set_defaults(func=_cmd_web)
    migrate = commands.add_parser("migrate", help="apply the database migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=_cmd_migrate)
    token = commands.add_parser("token", help="print a bearer token signed with TICKLER_JWT_SECRET")
    token.add_argument("--user", required=True, help="user id (the `sub` claim)")
    token.add_argument("--org", required=True, help="organization id (the `org` claim)")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default: a day)")
    token.set_defaults(func=_cmd_token)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    _configure_logging(settings)
    sys.exit(args.func(settings, args))
