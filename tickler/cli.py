"""`tickler`: run the development stack, or one process of it, apply migrations, mint dev tokens, and
audit, repair, purge and report on a deployment (docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from core.auth import ADMIN_ROLE, OPERATOR_ROLE, mint_token
from core.logs import configure_logging
from core.settings import DEV_ENV, DEV_JWT_SECRET, Settings, get_settings

log = logging.getLogger("tickler")


def _refuse_dev_secret(settings: Settings) -> None:
    if settings.env != DEV_ENV and settings.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
        sys.exit(
            "TICKLER_JWT_SECRET is not set: the development secret is only allowed with TICKLER_ENV=dev."
        )


def _refuse_unusable_temporal_settings(settings: Settings) -> None:
    """Missing or malformed encryption keys, an unreadable TLS file, no channel key: one line at start,
    not a traceback from the first call to Temporal or the first publication."""
    from core.codec import EncryptionConfigError, configured_keys
    from core.db import OrganizationKeyError, organization_keys
    from core.pubsub import ChannelConfigError, channel_key
    from core.temporal import TemporalConfigError, tls_config

    try:
        configured_keys(settings)
        tls_config(settings)
        channel_key(settings)
        organization_keys(settings)
    except (EncryptionConfigError, TemporalConfigError, ChannelConfigError, OrganizationKeyError) as exc:
        sys.exit(str(exc))


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

    _refuse_unusable_temporal_settings(settings)
    _run(settings, run_worker(settings))
    return 0


def _cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from web.server import serve_web

    _refuse_dev_secret(settings)
    _refuse_unusable_temporal_settings(settings)
    _run(settings, serve_web(settings))
    return 0


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from core.db import OrganizationKeyError, organization_keys
    from tickler.migrate import upgrade

    try:
        keys = organization_keys(settings)
    except OrganizationKeyError as exc:
        sys.exit(str(exc))
    upgrade(settings.migration_url(), args.revision, organization_keys=keys)
    return 0


def _cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    if args.org is None and not args.operator:
        sys.exit("tickler token: --org is required (only an --operator token may go without one)")
    roles = [OPERATOR_ROLE] if args.operator else []
    if args.admin:
        roles.append(ADMIN_ROLE)
    token = mint_token(
        settings, user_id=args.user, organization_id=args.org, ttl_seconds=args.ttl, roles=roles
    )
    print(token)
    return 0


def _cmd_encryption_key(settings: Settings, args: argparse.Namespace) -> int:
    from core.codec import EncryptionConfigError, EncryptionKey

    try:
        print(EncryptionKey.generate(args.kid).entry())
    except EncryptionConfigError as exc:
        sys.exit(str(exc))
    return 0


# The operations commands (docs/operations.md): their work is in tickler/ops/.


def _cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.ops import commands

    return asyncio.run(commands.audit(settings, args.org, args.json))


def _cmd_repair(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.ops import commands

    return asyncio.run(commands.repair(settings, args.org, args.dry_run, args.json))


def _cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.ops import commands

    return asyncio.run(commands.purge(settings, args.older_than, args.batch_size))


# The figures are computed from every row of the organization's window: a year at the most.
MAX_STATS_DAYS = 366


def _cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.ops import commands

    if problem := _stats_window_problem(args.since, args.until):
        sys.exit(f"tickler stats: {problem}")
    return asyncio.run(commands.stats(settings, args.org, args.since, args.until, args.json))


def _stats_window_problem(since: datetime | None, until: datetime | None) -> str | None:
    """What is wrong with the window [since, until) (the defaults: until now, since a day before)."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=1)
    if since >= until:
        return f"--since {since.isoformat()} is not before --until {until.isoformat()}"
    if until - since > timedelta(days=MAX_STATS_DAYS):
        return f"the window spans {(until - since).days} days; ask for {MAX_STATS_DAYS} at most"
    return None


def _cmd_schedule(settings: Settings, args: argparse.Namespace) -> int:
    from tickler.ops import commands

    return asyncio.run(commands.schedule(settings, args.delete))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _up_to(maximum: int) -> Callable[[str], int]:
    """A positive number no larger than ``maximum``: what a larger one would cost is not worth it."""

    def parse(text: str) -> int:
        value = _positive(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is more than {maximum}")
        return value

    return parse


# A purge batch holds the row locks of what it deletes until its statement ends; a longer age than a
# century is no retention (and overflows the cutoff's date past about 2,000 years).
PURGE_BATCH_MAX = 10_000
PURGE_DAYS_MAX = 36_500
# Each replica is two more processes with their pools, on one machine: the development stack, no more.
REPLICAS_MAX = 16


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from exc
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: add Z or +01:00")
    return value


def _add_operations(commands: Any) -> None:
    audit = commands.add_parser(
        "audit", help="compare the tasks table with Temporal; exit 1 if anything is off"
    )
    repair = commands.add_parser("repair", help="fix what `tickler audit` finds")
    repair.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")
    for command in (audit, repair):
        command.add_argument("--org", help="one organization only")
        command.add_argument("--json", action="store_true", help="print JSON")
    audit.set_defaults(func=_cmd_audit)
    repair.set_defaults(func=_cmd_repair)
    purge = commands.add_parser(
        "purge", help="delete read notifications and webhook delivery attempts older than the retention"
    )
    purge.add_argument(
        "--older-than",
        type=_up_to(PURGE_DAYS_MAX),
        metavar="DAYS",
        help="age in days (default: TICKLER_NOTIFICATION_RETENTION_DAYS)",
    )
    purge.add_argument(
        "--batch-size",
        type=_up_to(PURGE_BATCH_MAX),
        default=1000,
        help=f"rows per statement, at most {PURGE_BATCH_MAX} (default: 1000)",
    )
    purge.set_defaults(func=_cmd_purge)
    stats = commands.add_parser(
        "stats", help="one organization's lateness, pending reminders and counts, from its rows"
    )
    stats.add_argument("--org", required=True, help="the organization id")
    stats.add_argument("--since", type=_instant, help="ISO 8601 with offset (default: a day before --until)")
    stats.add_argument("--until", type=_instant, help="ISO 8601 with offset (default: now)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_cmd_stats)
    schedule = commands.add_parser(
        "schedule", help="create or update the maintenance Schedule in Temporal (the worker does at start)"
    )
    schedule.add_argument("--delete", action="store_true", help="delete it instead")
    schedule.set_defaults(func=_cmd_schedule)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="the whole development stack: PostgreSQL, Redis, Temporal, migrations, worker, web"
    )
    run.add_argument(
        "--replicas",
        type=_up_to(REPLICAS_MAX),
        default=1,
        metavar="N",
        help=(
            f"N >= 2 (at most {REPLICAS_MAX}): N workers and N web processes (on the N ports after "
            "TICKLER_WEB_PORT) behind HAProxy, which takes TICKLER_WEB_PORT (default: 1, no proxy)"
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
    token.add_argument("--org", help="organization id (the `org` claim); required but with --operator")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default: a day)")
    token.add_argument(
        "--operator",
        action="store_true",
        help="with the `operator` role, which the codec endpoint (/codec) requires",
    )
    token.add_argument(
        "--admin",
        action="store_true",
        help="with the `admin` role: its organization's webhooks (/v1/webhooks)",
    )
    token.set_defaults(func=_cmd_token)
    key = commands.add_parser(
        "encryption-key",
        help="print a new payload encryption key entry (`kid:base64`) for TICKLER_ENCRYPTION_KEYS",
    )
    key.add_argument("--kid", help="its id (default: k<UTC time>, so that ids sort by age)")
    key.set_defaults(func=_cmd_encryption_key)
    _add_operations(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    if args.func is _cmd_run and "env" not in settings.model_fields_set:
        # `tickler run` is the development stack: it and every child it starts run as dev, unless
        # TICKLER_ENV says otherwise. Every other command defaults to production.
        os.environ["TICKLER_ENV"] = DEV_ENV
        get_settings.cache_clear()
        settings = get_settings()
    configure_logging(settings)
    if settings.env == DEV_ENV and args.func in (_cmd_run, _cmd_web, _cmd_worker):
        _warn_development(args.command)
    sys.exit(args.func(settings, args))


def _warn_development(command: str) -> None:
    log.warning(
        "TICKLER_ENV=dev: `tickler %s` runs in DEVELOPMENT mode, never expose it: POST /v1/session/dev "
        "signs anyone in as any user of any organization (operators too), the public development JWT "
        "secret is accepted when TICKLER_JWT_SECRET is unset, and a payload key is generated into "
        "TICKLER_DATA_DIR. Unset TICKLER_ENV (production) for a deployment.",
        command,
    )
