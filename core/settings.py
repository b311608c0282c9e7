"""Tickler's configuration: one pydantic-settings class, every field from a ``TICKLER_*`` variable.

The defaults are the addresses of the embedded development stack that ``tickler run`` starts; production
sets each address. Read it once per process with :func:`get_settings`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Used when TICKLER_JWT_SECRET is not set; `tickler web` refuses it unless TICKLER_ENV is "dev".
DEV_ENV = "dev"
DEV_JWT_SECRET = "tickler-dev-secret-do-not-use-in-production"
# A hundred years: a longer retention is "for ever" (0), and would overflow the purge's date arithmetic.
MAX_RETENTION_DAYS = 36_500
# The maintenance Schedule audits every open task: not more often than this.
MIN_MAINTENANCE_INTERVAL_SECONDS = 60


# Suffix of the variable that names a file holding a setting's value: TICKLER_JWT_SECRET_FILE.
FILE_SUFFIX = "_FILE"


class FileValuesSource(PydanticBaseSettingsSource):
    """``TICKLER_<FIELD>_FILE=/run/secrets/x``: the field's value is that file's content, as the official
    images of PostgreSQL and Redis read ``*_FILE``; for compose and Kubernetes secrets, which are files.

    Any field may be given so; setting both ``TICKLER_<FIELD>`` and ``TICKLER_<FIELD>_FILE`` is an error,
    so that nobody wonders which one won. One trailing line break is dropped (``echo`` writes one).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", "")).upper()
        environ = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for field in self.settings_cls.model_fields:
            direct = f"{prefix}{field.upper()}"
            path = environ.get(direct + FILE_SUFFIX)
            if path is None:
                continue
            if direct in environ:
                raise ValueError(f"set {direct} or {direct}{FILE_SUFFIX}, not both")
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"{direct}{FILE_SUFFIX}={path!r} cannot be read: {exc}") from exc
            values[field] = text.removesuffix("\n").removesuffix("\r")
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TICKLER_", env_file=".env", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A *_FILE variable ranks with the environment (both set is refused), above .env.
        return (
            init_settings,
            env_settings,
            FileValuesSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    env: str = Field(
        "production",
        description=(
            '"dev" opens development conveniences: the development JWT secret, the sign-in-as-anyone route '
            "POST /v1/session/dev, a generated payload key, text logs; any other value (the default) "
            "refuses them. `tickler run` sets dev for its stack unless TICKLER_ENV is set."
        ),
    )
    log_level: str = Field("INFO", description="Python log level of every process.")
    log_format: Literal["text", "json"] | None = Field(
        None,
        description=(
            'Log lines of every process: "json" (one object per line) or "text"; unset: "text" when '
            'TICKLER_ENV is "dev", else "json".'
        ),
    )
    data_dir: Path = Field(Path(".data"), description="Where the embedded stack keeps its files.")

    database_url: str = Field(
        "postgresql+asyncpg://tickler_login@127.0.0.1:55432/tickler",
        description=(
            "SQLAlchemy URL (asyncpg driver) of the app's login: neither the tables' owner nor superuser "
            "nor BYPASSRLS, it may only take TICKLER_DATABASE_ROLE (migrations/roles.sql). Unset: `tickler "
            "run` starts PostgreSQL."
        ),
    )
    migration_database_url: str | None = Field(
        None,
        description=(
            "URL of the login that owns the schema, for `tickler migrate` and `tickler run`'s migration "
            "only (never the web or the worker). Unset: with TICKLER_DATABASE_URL unset the embedded "
            "server's owner, else TICKLER_DATABASE_URL (one login for both)."
        ),
    )
    maintenance_database_url: str | None = Field(
        None,
        description=(
            "URL of the maintenance login, which may only take TICKLER_MAINTENANCE_DATABASE_ROLE: the "
            "worker's maintenance Schedule and `tickler audit`, `repair`, `purge`, `stats`. Unset: with "
            "TICKLER_DATABASE_URL unset the embedded server's, else the migration login's."
        ),
    )
    embedded_postgres_port: int = Field(
        55432,
        description="Port of the PostgreSQL server `tickler run` starts when TICKLER_DATABASE_URL is unset.",
    )
    database_role: str = Field(
        "tickler_app",
        description=(
            "Role the app's sessions take at connect; row-level security applies to it (empty: the login's "
            "own). The login must not be able to take the owner's role instead."
        ),
    )
    organization_keys: SecretStr | None = Field(
        None,
        description=(
            "Secrets (32 characters or more each, comma-separated, newest first) with which the web and "
            "the worker sign the organization each transaction names to PostgreSQL; row-level security "
            "shows no row to a transaction whose signature does not match, so SQL run by the app's login "
            "cannot name another organization. The first signs; `tickler migrate` installs every one in "
            "the database. Unset: with TICKLER_ENV=dev one is generated into "
            "TICKLER_DATA_DIR/organization.key, any other env refuses to start."
        ),
    )
    database_pool_size: int = Field(10, ge=1, description="Connections per process in the pool.")
    database_connect_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait for a new PostgreSQL connection, and for a free one in the pool."
    )
    database_statement_timeout_ms: int = Field(
        5000,
        ge=1,
        description=(
            "PostgreSQL cancels a statement of the app that runs (or waits for a lock) longer than this; "
            "the client gives up 1 s later should the server not answer at all. The API then answers 503."
        ),
    )
    redis_url: str = Field(
        "redis://127.0.0.1:56379/0", description="Redis URL. Unset: `tickler run` starts one."
    )
    embedded_redis_port: int = Field(
        56379, description="Port of the Redis server `tickler run` starts when TICKLER_REDIS_URL is unset."
    )
    embedded_smtp_port: int = Field(
        1025,
        description=(
            "Port of the SMTP server `tickler run` starts when TICKLER_SMTP_HOST is unset: every message it "
            "takes becomes an .eml file in TICKLER_DATA_DIR/mail."
        ),
    )
    redis_channel: str = Field("tickler:notifications", description="Pub/sub channel of notifications.")
    channel_key: SecretStr | None = Field(
        None,
        min_length=32,
        description=(
            "Secret (32 bytes or more) with which the worker signs each message on TICKLER_REDIS_CHANNEL; "
            "the web processes drop a message it does not sign. The same value for every worker and web "
            "process. Unset: with TICKLER_ENV=dev one is generated into TICKLER_DATA_DIR/channel.key, "
            "any other env refuses to start."
        ),
    )
    redis_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "Longest wait to connect to Redis and for the answer to a command; the stream hub's "
            "subscription waits for messages without it and is checked by a PING every 30 s instead."
        ),
    )

    temporal_address: str = Field(
        "127.0.0.1:7233", description="Temporal frontend. Unset: `tickler run` starts the dev server."
    )
    embedded_temporal_port: int = Field(
        7233,
        description=(
            "Port of the Temporal dev server `tickler run` starts when TICKLER_TEMPORAL_ADDRESS is unset."
        ),
    )
    temporal_namespace: str = Field("default", description="Temporal namespace.")
    temporal_task_queue: str = Field("tickler", description="Task queue of the task workflows.")
    temporal_ui_port: int = Field(8233, description="Web UI port of the dev server `tickler run` starts.")
    change_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a create or change waits for the worker's confirmation (then 503)."
    )
    undo_window_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description=(
            "How long a task completed or deleted through the API can be reopened (`POST "
            "/v1/tasks/<id>/reopen`, the page's Undo); its workflow waits that long before it closes."
        ),
    )
    # TLS to Temporal (docs/deployment.md, "Connecting to Temporal").
    temporal_tls: bool = Field(
        False,
        description=(
            "Connect to Temporal over TLS, the server verified against the system's roots; implied by "
            "any of the TICKLER_TEMPORAL_TLS_* below."
        ),
    )
    temporal_tls_ca_file: Path | None = Field(
        None,
        description=(
            "PEM file of the CA that signed the Temporal frontend's certificate (unset: the system's roots)."
        ),
    )
    temporal_tls_cert_file: Path | None = Field(
        None,
        description=(
            "PEM file of the client certificate for mTLS to Temporal; needs TICKLER_TEMPORAL_TLS_KEY_FILE."
        ),
    )
    temporal_tls_key_file: Path | None = Field(
        None, description="PEM file of the private key of TICKLER_TEMPORAL_TLS_CERT_FILE."
    )
    temporal_tls_server_name: str | None = Field(
        None,
        description=(
            "Name the frontend's certificate must carry, also sent as SNI, when it is not the host of "
            "TICKLER_TEMPORAL_ADDRESS."
        ),
    )
    temporal_api_key: SecretStr | None = Field(
        None,
        description=(
            "API key sent as a bearer token with every Temporal call (Temporal Cloud); TLS is then on "
            "even without TICKLER_TEMPORAL_TLS."
        ),
    )
    # Payload encryption (core/codec.py; docs/deployment.md, "Encryption of workflow payloads").
    payload_encryption: bool = Field(
        True,
        description=(
            "Encrypt every workflow payload (task titles, notes, failures) before it reaches Temporal, with "
            "TICKLER_ENCRYPTION_KEYS or TICKLER_ENCRYPTION_KEY_FILE. Neither set: with TICKLER_ENV=dev a "
            "key is generated into TICKLER_DATA_DIR/encryption.keys (0600), any other env refuses to start. "
            "false: payloads are stored in clear."
        ),
    )
    encryption_keys: SecretStr | None = Field(
        None,
        description=(
            "Payload encryption keys: `kid:base64` entries (32 random bytes each; `tickler encryption-key` "
            "prints one), comma-separated, newest first. The first encrypts, every one decrypts."
        ),
    )
    encryption_key_file: Path | None = Field(
        None,
        description=(
            "File of payload encryption keys, one `kid:base64` entry per line, newest first (`#` starts a "
            "comment); instead of TICKLER_ENCRYPTION_KEYS."
        ),
    )
    codec_cors_origins: str | None = Field(
        None,
        description=(
            "Origins of the Temporal Web UIs whose pages may call the codec endpoint (/codec), "
            "comma-separated, e.g. `https://temporal.example.com`; unset: the dev server's UI "
            "(http://127.0.0.1 and http://localhost on TICKLER_TEMPORAL_UI_PORT)."
        ),
    )

    metrics_host: str = Field(
        "127.0.0.1",
        description=(
            "Address the Prometheus /metrics of the web and worker processes bind (0.0.0.0 for a "
            "Prometheus on another host; never published to clients)."
        ),
    )
    web_metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description=(
            "Port of the web process's Prometheus /metrics, answered from a thread of its own and never on "
            "TICKLER_WEB_PORT (0: no endpoint). `tickler run --replicas N` gives web process n this port "
            "+ 2(n - 1)."
        ),
    )
    worker_metrics_port: int = Field(
        9465,
        ge=0,
        le=65535,
        description=(
            "Port of the worker's Prometheus /metrics, the Temporal SDK's and Tickler's (0: no endpoint). "
            "`tickler run --replicas N` gives worker n this port + 2(n - 1)."
        ),
    )
    worker_health_host: str = Field("127.0.0.1", description="Address the worker's /healthz binds.")
    worker_health_port: int = Field(
        0,
        ge=0,
        description=(
            "Port of the worker's /healthz and /readyz, answered from a thread of its own: /healthz 503 "
            "while the event loop is blocked for TICKLER_EVENT_LOOP_BLOCK_SECONDS or more; /readyz 503 also "
            "while PostgreSQL, Redis or Temporal does not answer (0: no endpoint)."
        ),
    )
    worker_graceful_shutdown_seconds: float = Field(
        10.0,
        ge=0,
        description=(
            "On SIGTERM the worker stops polling and gives the activities in hand (a delivery) this long "
            "to finish before it cancels them, then takes up to 20 s more to hand the reminders armed in it "
            "back to their workflows (decisions §30); keep the sum below the orchestrator's kill timeout "
            "(compose: `stop_grace_period: 40s`)."
        ),
    )
    # Worker tuning: what each default gave is in docs/performance.md.
    worker_workflow_pollers: int = Field(
        20, ge=2, description="Most concurrent polls for workflow tasks (wake-ups, creates, changes)."
    )
    worker_activity_pollers: int = Field(5, ge=1, description="Most concurrent polls for activity tasks.")
    worker_sticky_poll_ratio: float = Field(
        1.0,
        gt=0,
        description="Polls of the shared queue (new and evicted workflows) per poll of the worker's own.",
    )
    worker_cached_workflows: int = Field(
        10_000, ge=0, description="Workflows kept in memory: a wake-up of a cached one replays nothing."
    )
    worker_sandboxed: bool = Field(
        False,
        description=(
            "Run workflows in the SDK's sandbox: about twice the worker's CPU. The tests run them "
            "sandboxed whatever this says, so a non-deterministic call fails there first."
        ),
    )
    worker_gc_between_deliveries: bool = Field(
        True,
        description=(
            "The worker runs its full garbage collections itself, when no reminder is being delivered, "
            "instead of whenever CPython would."
        ),
    )
    uvloop: bool = Field(True, description="Run the worker and web processes on uvloop where it exists.")
    gc_pause_warning_ms: float = Field(
        100,
        ge=0,
        description=(
            "Log a warning when a garbage collection stops the worker or web process this long "
            "(0: never); the worker also exports every pause as `tickler_gc_pause`."
        ),
    )
    web_gc_refresh_seconds: float = Field(
        600,
        ge=0,
        description=(
            "The web process freezes what each full garbage collection keeps (its open streams), so that "
            "the next one walks only what is new, and collects everything once every this many seconds "
            "to free what died frozen (docs/performance.md). 0: CPython's own schedule."
        ),
    )
    event_loop_block_seconds: float = Field(
        1.0,
        gt=0,
        description=(
            "An event loop of the worker or web process that runs nothing for this long is logged with "
            "the stack where it is stuck and counted (the worker's `tickler_event_loop_blocks`)."
        ),
    )
    # Audit, repair, retention (docs/operations.md, "Audit and repair", "Retention").
    maintenance_database_role: str = Field(
        "tickler_maintenance",
        description=(
            "Role of the sessions of `tickler audit`, `repair`, `purge`, `stats` and the maintenance "
            "Schedule: it reads every organization's rows and deletes read notifications and webhook "
            "delivery attempts, nothing else "
            "(empty: the login role)."
        ),
    )
    audit_overdue_after_seconds: float = Field(
        300.0,
        gt=0,
        description=(
            "An open task whose last reminder is this late without a notification row is an audit "
            "finding (`overdue`)."
        ),
    )
    audit_concurrency: int = Field(
        20, ge=1, description="Most Temporal calls about single tasks an audit or repair has in flight."
    )
    notification_retention_days: int = Field(
        90,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description=(
            "Read notifications created, and webhook delivery attempts made, longer ago than this are "
            "deleted by `tickler purge` and the maintenance Schedule (0: kept for ever; at most 36,500)."
        ),
    )
    maintenance_interval_seconds: int = Field(
        900,
        ge=0,
        description=(
            "Every this many seconds the maintenance Schedule audits and purges; the worker creates or "
            "updates it at start (0: the worker leaves it alone; else at least 60: each run audits every "
            "open task)."
        ),
    )
    maintenance_repair: bool = Field(
        False,
        description=(
            "The maintenance Schedule also repairs what its audit finds, as `tickler repair` does "
            "(default: it reports them in `tickler_audit_findings` only)."
        ),
    )
    maintenance_schedule_id: str = Field(
        "tickler-maintenance", description="Id of the maintenance Schedule in the Temporal namespace."
    )
    web_host: str = Field("127.0.0.1", description="Address the web server binds.")
    web_port: int = Field(8000, description="Port the web server binds.")
    web_backlog: int = Field(
        4096,
        ge=1,
        le=65535,
        description=(
            "Connections the web server's listening socket queues before it accepts them (the kernel caps "
            "it at net.core.somaxconn): a storm of stream reconnections (a web process gone, a deploy) "
            "must not be reset. Hypercorn's own 100 reset 15-50 of 10,000 streams opening at once."
        ),
    )
    public_url: str = Field(
        "http://127.0.0.1:8000/", description="The page's address as its users reach it: the link in emails."
    )

    # Email escalation (issue 18): reminders left unread are mailed by the worker over SMTP.
    smtp_host: str = Field(
        "",
        description=(
            "SMTP server of the email escalation (empty: no email is sent, and the escalations wait for one "
            "with backoff). `tickler run` sets its local server, 127.0.0.1:1025."
        ),
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="`starttls` (plain, then upgraded: port 587), `tls` (TLS from the start: 465), `none`.",
    )
    smtp_username: str | None = Field(None, description="SMTP login, if the server wants one.")
    smtp_password: SecretStr | None = Field(
        None, description="SMTP password (a file with TICKLER_SMTP_PASSWORD_FILE)."
    )
    smtp_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the SMTP server, per message."
    )
    email_from: str = Field("Tickler <tickler@localhost>", description="Sender of the escalation emails.")

    jwt_secret: SecretStr = Field(
        SecretStr(DEV_JWT_SECRET),
        min_length=32,
        description="HS256 secret of bearer tokens (32 bytes or more).",
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM file of the CRM's RS256 public key; when set, tokens must be RS256."
    )
    jwt_jwks_file: Path | None = Field(
        None,
        description="JWKS file of the CRM's RS256 keys, picked by `kid`; when set, tokens must be RS256.",
    )
    jwt_jwks_url: str | None = Field(
        None,
        description=(
            "JWKS URL (http or https) of the CRM's RS256 keys, picked by `kid`; when set, tokens must be "
            "RS256. A `kid` not in the cached set refetches it, at most once per "
            "TICKLER_JWT_JWKS_REFRESH_COOLDOWN_SECONDS."
        ),
    )
    jwt_jwks_cache_seconds: float = Field(
        300.0, gt=0, description="How long a fetched JWKS is used before it is fetched again."
    )
    jwt_jwks_refresh_cooldown_seconds: float = Field(
        30.0,
        ge=0,
        description=(
            "Least time between two fetches of the JWKS caused by tokens with an unknown `kid`, so that "
            "forged tokens cannot hammer the CRM."
        ),
    )
    jwt_jwks_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "Longest wait for the JWKS endpoint; a token whose key is not cached then answers 503, while "
            "tokens of cached keys keep working."
        ),
    )
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, when set.")
    jwt_audience: str | None = Field(None, description="Required `aud` claim, when set.")
    session_cookie_name: str = Field("tickler_session", description="Cookie of the browser session.")
    session_cookie_secure: bool = Field(
        True, description="Mark the session cookie Secure; false only for plain http beyond localhost."
    )

    rate_limit_per_minute: int = Field(
        600, ge=0, description="Requests per user and minute, across all web processes (0: no limit)."
    )
    sse_max_streams_per_user: int = Field(
        10, ge=1, description="Open streams per user and web process; one more answers 429."
    )
    sse_heartbeat_seconds: float = Field(
        15.0,
        ge=0.1,
        le=300.0,
        description=(
            "Comment line sent on idle streams at this interval, 0.1 to 300 (proxies cut a silent stream "
            "after ~60 s); the hub's clock visits the streams in groups, a group every 25 ms."
        ),
    )
    sse_retry_ms: int = Field(2000, ge=0, description="`retry:` the stream tells browsers to wait.")
    sse_queue_size: int = Field(
        256, ge=1, description="Events buffered per stream; a client further behind is cut off."
    )
    sse_retry_jitter: float = Field(
        0.5,
        ge=0,
        lt=1,
        description=(
            "Each stream's `retry:` is TICKLER_SSE_RETRY_MS times a random factor in 1 ± this, so that the "
            "clients of a web process that dies do not all reconnect at once."
        ),
    )
    sse_write_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description=(
            "A stream whose client has not taken a write for this long (it stopped reading) is cut off: "
            "its connection is reset and its slot freed."
        ),
    )

    @model_validator(mode="after")
    def _maintenance_interval_usable(self) -> Self:
        if 0 < self.maintenance_interval_seconds < MIN_MAINTENANCE_INTERVAL_SECONDS:
            raise ValueError(
                f"TICKLER_MAINTENANCE_INTERVAL_SECONDS={self.maintenance_interval_seconds}: set 0 (no "
                f"Schedule) or {MIN_MAINTENANCE_INTERVAL_SECONDS} or more; each run audits every open task"
            )
        return self

    @model_validator(mode="after")
    def _temporal_tls_and_keys_complete(self) -> Self:
        # A certificate without its key (or the other way round) would silently connect without mTLS.
        if (self.temporal_tls_cert_file is None) != (self.temporal_tls_key_file is None):
            raise ValueError(
                "TICKLER_TEMPORAL_TLS_CERT_FILE and TICKLER_TEMPORAL_TLS_KEY_FILE go together: set both "
                "for mTLS, or neither"
            )
        rs256 = [self.jwt_public_key_file, self.jwt_jwks_file, self.jwt_jwks_url]
        if sum(source is not None for source in rs256) > 1:
            raise ValueError(
                "set one of TICKLER_JWT_PUBLIC_KEY_FILE, TICKLER_JWT_JWKS_FILE and TICKLER_JWT_JWKS_URL: "
                "one source of RS256 keys"
            )
        if self.encryption_keys is not None and self.encryption_key_file is not None:
            raise ValueError(
                "set TICKLER_ENCRYPTION_KEYS or TICKLER_ENCRYPTION_KEY_FILE, not both: one list of keys, "
                "in one order"
            )
        return self

    def migration_url(self) -> str:
        """TICKLER_MIGRATION_DATABASE_URL, resolved as its description says."""
        if self.migration_database_url:
            return self.migration_database_url
        if "database_url" not in self.model_fields_set:
            return f"postgresql+asyncpg://tickler@127.0.0.1:{self.embedded_postgres_port}/tickler"
        return self.database_url

    def maintenance_url(self) -> str:
        """TICKLER_MAINTENANCE_DATABASE_URL, resolved as its description says."""
        if self.maintenance_database_url:
            return self.maintenance_database_url
        if "database_url" not in self.model_fields_set:
            return f"postgresql+asyncpg://tickler_maintainer@127.0.0.1:{self.embedded_postgres_port}/tickler"
        return self.migration_url()

    def codec_origins(self) -> list[str]:
        """The origins allowed to call the codec endpoint (TICKLER_CODEC_CORS_ORIGINS)."""
        configured = self.codec_cors_origins or ""
        origins = [o.strip().rstrip("/") for o in configured.split(",") if o.strip()]
        return origins or [f"http://{host}:{self.temporal_ui_port}" for host in ("127.0.0.1", "localhost")]

    @model_validator(mode="after")
    def _metrics_apart_from_the_api(self) -> Self:
        # Metrics say what runs inside; they are never served to the API's clients.
        if self.web_metrics_port and self.web_metrics_port == self.web_port:
            raise ValueError("TICKLER_WEB_METRICS_PORT must differ from TICKLER_WEB_PORT")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def dev_secret(path: Path) -> bytes:
    """A development stack's generated secret: the one in ``path``, made (0600) if need be. Safe when
    several processes race: the file appears whole, once, and every one of them reads the same secret."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
            # link() fails if the file exists by now: the first writer wins, the others read its secret.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()
