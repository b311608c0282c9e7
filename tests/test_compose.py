"""Static checks of the container setup: docker-compose.yml, Dockerfile, .dockerignore and .env.example.

Nothing here needs a Docker engine. The checks catch what `docker compose up` would only reveal at run
time, or never: a TICKLER_* variable that is not a setting (pydantic-settings ignores unknown names, so a
typo silently falls back to the development default), a command that is not a CLI subcommand, a
depends_on on a service that does not exist or cannot become healthy.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTES
from tickler.cli import build_parser
from tickler.worker import HAND_BACK_SECONDS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
HAPROXY_CONF = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
POSTGRES_INIT = ROOT / "deploy" / "postgres" / "10-logins.sh"
MAKE_SECRETS = ROOT / "deploy" / "make-secrets.sh"

PREFIX = "TICKLER_"
SETTINGS_FIELDS = frozenset(Settings.model_fields)

# Subcommands of the `tickler` console script (tickler.cli:main) that a container may run; not `run`,
# which starts the embedded servers of the devstack extra that the image does not install.
CLI_SUBCOMMANDS = frozenset({"web", "worker", "migrate"})
# Service of the app image -> the subcommand it runs.
APP_SERVICES = {"migrate": "migrate", "worker": "worker", "web": "web"}
EXPECTED_SERVICES = frozenset(
    {
        "postgres",
        "redis",
        "temporal-schema",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "proxy",
        *APP_SERVICES,
    }
)
NEEDS_HEALTHCHECK = ("postgres", "redis", "temporal", "temporal-ui", "worker", "web", "proxy")
# Published ports: service -> the `host_ip:host:container` entries it may have. Only the proxy is public;
# the UI is on the host's loopback. Everything else publishes nothing.
PUBLISHED = {
    "proxy": {"443:443", "80:80", "127.0.0.1:8233:8233"},
}
# `${NAME:-default}` is allowed for these only: none is a secret.
DEFAULTED_VARIABLES = frozenset({"TICKLER_LOG_LEVEL", "IMAGE_TAG"})
SECRETISH = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|API_KEY|ENCRYPTION_KEYS|_URL$", re.IGNORECASE)
DEPENDS_ON_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})

# `${NAME}`, `${NAME:-default}`, `${NAME:?error}`; `$${...}` is an escaped literal, not a reference.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
ENV_EXAMPLE_LINE = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_]*)=")


# ---- helpers ----


class _UniqueKeys(yaml.SafeLoader):
    """Refuses a key given twice in one mapping, as `docker compose` does (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Before the merge keys (`<<: *anchor`) are flattened: a key may override a merged one.
        keys = [key.value for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
        twice = sorted({str(key) for key in keys if keys.count(key) > 1})
        assert not twice, f"{COMPOSE_FILE.name} line {node.start_mark.line + 1}: keys given twice: {twice}"
        return super().construct_mapping(node, deep=deep)


def load_compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"create {COMPOSE_FILE.name} at the project root"
    data = yaml.load(COMPOSE_FILE.read_text(), Loader=_UniqueKeys)
    assert isinstance(data, dict), f"{COMPOSE_FILE.name} must be a YAML mapping with a `services:` key"
    return data


def services_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict), f"{COMPOSE_FILE.name} needs a `services:` mapping"
    return services


def setting_of(env_name: str) -> str:
    """The Settings field an environment variable sets: TICKLER_WEB_PORT -> web_port, and the
    TICKLER_<FIELD>_FILE form (core.settings.FileValuesSource) -> <field>."""
    field = env_name.removeprefix(PREFIX).lower()
    if field not in SETTINGS_FIELDS and field.endswith("_file") and field[: -len("_file")] in SETTINGS_FIELDS:
        return field[: -len("_file")]
    return field


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment:`, in either the mapping or the `- NAME=value` list form."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    result: dict[str, str | None] = {}
    for item in env:
        name, sep, value = str(item).partition("=")
        result[name] = value if sep else None
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    """A service's `command:` as an argv list (the string form is split like a shell would)."""
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def depends_on_of(service: dict[str, Any]) -> dict[str, str]:
    """Service -> condition; the short list form means `service_started`."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(map(str, deps), "service_started")
    return {str(name): str((spec or {}).get("condition", "service_started")) for name, spec in deps.items()}


def builds_app_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    if isinstance(build, str):  # `build: .` uses ./Dockerfile
        return True
    return Path(str(build.get("dockerfile", "Dockerfile"))).name == DOCKERFILE.name


def secrets_of(service: dict[str, Any]) -> list[str]:
    """Names of the secrets a service mounts (short `- name` or long `- source: name` form)."""
    return [str(s["source"]) if isinstance(s, dict) else str(s) for s in service.get("secrets") or []]


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    return not check.get("disable", False) and bool(test) and test != ["NONE"]


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(map(str, test))


def host_of(address: str) -> str | None:
    """Host of a URL (`redis://redis:6379/0`) or of a bare `host:port`."""
    return urlsplit(address if "://" in address else f"//{address}").hostname


def dockerfile_instructions(*, final_stage_only: bool = True) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuations joined, comments dropped.

    By default only the final stage, the one that ends up in the image.
    """
    assert DOCKERFILE.is_file(), f"create {DOCKERFILE.name} at the project root"
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM" and final_stage_only:
            instructions = []
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def exec_form(args: str) -> list[str]:
    """Arguments of CMD / ENTRYPOINT: the JSON (exec) form, or the shell form split into words."""
    if args.startswith("["):
        parsed = json.loads(args)
        assert isinstance(parsed, list), f"{DOCKERFILE.name}: {args!r} is not a JSON array"
        return [str(part) for part in parsed]
    return shlex.split(args)


def parse_cli(argv: list[str]) -> argparse.Namespace | None:
    """The CLI's parse of `tickler ARGV...`, or None when the CLI would reject it."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        return None


def rendered_default(field: str) -> str:
    """A field's default as .env.example shows it: None is empty, a secret is shown in clear."""
    default = Settings.model_fields[field].default
    if default is None:
        return ""
    if isinstance(default, SecretStr):
        return default.get_secret_value()
    return str(default)


def env_example_names() -> list[str]:
    assert ENV_EXAMPLE.is_file(), f"create {ENV_EXAMPLE.name}: one `# TICKLER_NAME=default` line per setting"
    names: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_EXAMPLE_LINE.match(line)
        if match:
            names.append(match.group(1))
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return services_of(compose)


# ---- docker-compose.yml ----


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = sorted(EXPECTED_SERVICES - set(services))
    assert not missing, f"add the services {missing} to {COMPOSE_FILE.name}"


def test_app_services_build_the_dockerfile_and_run_their_subcommand(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, subcommand in APP_SERVICES.items():
        assert builds_app_image(services.get(name, {})), (
            f"service {name!r}: add `build:` with context `.` so it runs the image of {DOCKERFILE.name}"
        )
        assert command_of(services[name]) == ["tickler", subcommand], (
            f"service {name!r}: set `command: [tickler, {subcommand}]`"
        )


def test_every_dockerfile_service_runs_a_cli_subcommand(services: dict[str, dict[str, Any]]) -> None:
    built = {name: svc for name, svc in services.items() if builds_app_image(svc)}
    assert built, (
        f"no service of {COMPOSE_FILE.name} builds {DOCKERFILE.name}; add `build: .` to the app ones"
    )
    for name, service in built.items():
        argv = command_of(service)
        fix = f"use `command: [tickler, X]` with X one of {sorted(CLI_SUBCOMMANDS)}"
        assert argv[:1] == ["tickler"], f"service {name!r}: command {argv!r} does not run the CLI; {fix}"
        parsed = parse_cli(argv[1:])
        assert parsed is not None, f"service {name!r}: tickler.cli rejects the arguments {argv[1:]!r}; {fix}"
        assert parsed.command in CLI_SUBCOMMANDS, (
            f"service {name!r}: {parsed.command!r} is not meant to run in a container; {fix}"
        )


def test_container_subcommands_exist_in_the_cli() -> None:
    for subcommand in sorted(CLI_SUBCOMMANDS):
        parsed = parse_cli([subcommand])
        assert parsed is not None, (
            f"tickler.cli has no subcommand {subcommand!r}; add it, or update CLI_SUBCOMMANDS here and the "
            f"commands of {COMPOSE_FILE.name}"
        )
        assert parsed.command == subcommand, f"tickler.cli maps {subcommand!r} to {parsed.command!r}"


def test_tickler_variables_are_settings(compose: dict[str, Any]) -> None:
    used: dict[str, set[str]] = {}
    for name, service in services_of(compose).items():
        for var in environment_of(service):
            used.setdefault(var, set()).add(f"service {name!r}")
    for anchor, block in compose.items():
        if anchor.startswith("x-") and isinstance(block, dict):
            for var in block:
                used.setdefault(str(var), set()).add(anchor)
    for var in INTERPOLATION.findall(COMPOSE_FILE.read_text()):
        used.setdefault(var, set()).add("a ${...} reference")
    unknown = {
        var: sorted(where)
        for var, where in used.items()
        if var.startswith(PREFIX) and setting_of(var) not in SETTINGS_FIELDS
    }
    assert not unknown, (
        f"{COMPOSE_FILE.name}: {unknown} name no field of core.settings.Settings, so the app ignores them; "
        f"rename them to TICKLER_<FIELD> with a field from {sorted(SETTINGS_FIELDS)}"
    )


def test_app_environment_is_production_and_points_at_the_stack(
    services: dict[str, dict[str, Any]],
) -> None:
    envs = {name: environment_of(services[name]) for name in APP_SERVICES}
    first = envs["web"]
    for name, env in envs.items():
        # migrate alone has the owner's URL, the worker alone the maintenance login's; the rest is shared.
        differs = {k for k in env.keys() | first.keys() if env.get(k) != first.get(k)}
        allowed = {
            "migrate": {"TICKLER_MIGRATION_DATABASE_URL_FILE"},
            "worker": {"TICKLER_MAINTENANCE_DATABASE_URL_FILE"},
        }.get(name, set())
        assert differs <= allowed, (
            f"service {name!r} has a different environment from 'web' in {sorted(differs - allowed)}; "
            "give every app service `environment: *tickler-env`"
        )
    assert first.get("TICKLER_ENV") not in (None, "dev"), (
        "set TICKLER_ENV to something other than `dev` (e.g. production) in x-tickler-env, "
        "or `tickler web` accepts the development JWT secret"
    )
    # Each secret the app refuses to start without in production, as a file: the channel's and the
    # organizations' keys sign what another service (Redis, PostgreSQL) must not be able to forge.
    secrets = ("JWT_SECRET", "DATABASE_URL", "REDIS_URL", "CHANNEL_KEY", "ORGANIZATION_KEYS")
    for var in (*(f"TICKLER_{name}" for name in secrets), "TICKLER_ENCRYPTION_KEYS"):
        assert var not in first, (
            f"x-tickler-env: give {var} as a compose secret, {var}_FILE: /run/secrets/<name>"
        )
    for var in (*(f"TICKLER_{name}_FILE" for name in secrets), "TICKLER_ENCRYPTION_KEY_FILE"):
        assert str(first.get(var, "")).startswith("/run/secrets/"), (
            f"set {var}: /run/secrets/<name> in x-tickler-env, the file of a compose secret"
        )
    address = first.get("TICKLER_TEMPORAL_ADDRESS") or ""
    assert host_of(address) in services, (
        f"TICKLER_TEMPORAL_ADDRESS={address!r}: use the compose service name (temporal)"
    )
    assert first.get("TICKLER_WEB_HOST") == "0.0.0.0", (
        "set TICKLER_WEB_HOST: 0.0.0.0 in x-tickler-env; the default 127.0.0.1 is unreachable from outside "
        "the container"
    )


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in NEEDS_HEALTHCHECK:
        assert has_healthcheck(services.get(name, {})), (
            f"service {name!r}: add a `healthcheck:` with a `test:`"
        )


def test_web_healthcheck_and_port_match_the_web_port(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    port = environment_of(web).get("TICKLER_WEB_PORT") or str(Settings.model_fields["web_port"].default)
    check = healthcheck_text(web)
    fix = f"probe http://localhost:{port}/readyz (TICKLER_WEB_PORT is {port})"
    # Readiness: a compose healthcheck restarts nothing, and /readyz fails for a blocked loop too.
    assert "/readyz" in check, f"web healthcheck {check!r}: {fix}"
    assert f":{port}/" in check, f"web healthcheck {check!r} probes another port: {fix}"
    conf = HAPROXY_CONF.read_text()
    assert f" web:{port} " in conf, f"{HAPROXY_CONF.name}: proxy to web:{port}, the web's port"


def test_the_worker_is_given_time_to_stop_and_hand_its_reminders_back(
    services: dict[str, dict[str, Any]],
) -> None:
    """A stop runs the activities in hand out, then hands the armed reminders back (tickler/worker.py):
    Docker's default of 10 s would kill it first and leave every reminder to its grace timer."""
    raw = str(services["worker"].get("stop_grace_period", "10s"))
    match = re.fullmatch(r"(\d+)s", raw)
    assert match, f"the worker's stop_grace_period in seconds, e.g. 40s (got {raw!r})"
    env = environment_of(services["worker"])
    default = Settings.model_fields["worker_graceful_shutdown_seconds"].default
    graceful = float(env.get("TICKLER_WORKER_GRACEFUL_SHUTDOWN_SECONDS") or default)
    assert int(match.group(1)) > graceful + HAND_BACK_SECONDS


def test_worker_healthcheck_probes_the_worker_health_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    env = environment_of(worker)
    port = env.get("TICKLER_WORKER_HEALTH_PORT")
    assert port not in (None, "", "0"), (
        'set TICKLER_WORKER_HEALTH_PORT (e.g. "9466") in x-tickler-env: its default 0 serves no /healthz'
    )
    assert env.get("TICKLER_WORKER_HEALTH_HOST") == "0.0.0.0", (
        "set TICKLER_WORKER_HEALTH_HOST: 0.0.0.0 in x-tickler-env, so that probes from outside the "
        "container reach the worker's /healthz"
    )
    check = healthcheck_text(worker)
    fix = f"probe http://localhost:{port}/readyz (TICKLER_WORKER_HEALTH_PORT is {port})"
    assert "/readyz" in check, f"worker healthcheck {check!r}: {fix}"
    assert f":{port}/" in check, f"worker healthcheck {check!r} probes another port: {fix}"


def test_depends_on_targets_exist_and_can_meet_the_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in depends_on_of(service).items():
            assert target in services, (
                f"service {name!r} depends on {target!r}, which is not a service; fix the name or add it"
            )
            assert condition in DEPENDS_ON_CONDITIONS, (
                f"service {name!r}: depends_on {target!r} has condition {condition!r}; "
                f"use one of {sorted(DEPENDS_ON_CONDITIONS)}"
            )
            if condition == "service_healthy":
                assert has_healthcheck(services[target]), (
                    f"service {name!r} waits for {target!r} to be healthy; give {target!r} a healthcheck"
                )
            if condition == "service_completed_successfully":
                assert str(services[target].get("restart", "no")) == "no", (
                    f'service {name!r} waits for {target!r} to exit; set `restart: "no"` on {target!r} '
                    "so the one-shot is not restarted"
                )


def test_worker_and_web_wait_for_migrations_and_search_attributes(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("worker", "web"):
        deps = depends_on_of(services[name])
        for target in ("migrate", "temporal-setup"):
            assert deps.get(target) == "service_completed_successfully", (
                f"service {name!r}: add `depends_on: {{{target}: "
                "{condition: service_completed_successfully}}`"
            )


def test_temporal_setup_registers_the_search_attributes(services: dict[str, dict[str, Any]]) -> None:
    """The custom search attributes the task workflows upsert (core/temporal.py), each with its type."""
    script = " ".join(command_of(services["temporal-setup"]))
    assert "search-attribute create" in script, (
        "temporal-setup: register attributes with `temporal operator search-attribute create`"
    )
    for attribute, kind in SEARCH_ATTRIBUTES.items():
        assert re.search(rf"\b{attribute}\b\W+(?:--type\W+)?{kind}\b", script), (
            f"temporal-setup: register the search attribute {attribute} with type {kind}"
        )


def test_yaml_uses_only_keys_of_the_compose_spec(compose: dict[str, Any]) -> None:
    """`docker compose config` would reject unknown keys; no compose plugin here, so check the main ones."""
    top = {"services", "secrets", "volumes", "networks", "configs", "name", "include"}
    unknown = sorted(k for k in compose if k not in top and not str(k).startswith("x-"))
    assert not unknown, f"{COMPOSE_FILE.name}: {unknown} are not top-level keys of the compose spec"
    keys = {
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "expose",
        "volumes",
        "depends_on",
        "restart",
        "healthcheck",
        "deploy",
        "logging",
        "secrets",
        "configs",
        "networks",
        "user",
        "working_dir",
        "init",
        "stop_grace_period",
        "stop_signal",
        "sysctls",
        "read_only",
        "tmpfs",
        "cap_drop",
        "cap_add",
        "security_opt",
        "mem_limit",
        "cpus",
        "ulimits",
        "labels",
        "profiles",
    }
    for name, service in services_of(compose).items():
        extra = sorted(set(service) - keys)
        assert not extra, f"service {name!r}: {extra} are not service keys of the compose spec"
        assert "container_name" not in service, f"service {name!r}: no container_name (scaling, projects)"


def test_ports_are_published_as_intended(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        ports = {str(p) for p in service.get("ports") or []}
        allowed = PUBLISHED.get(name, set())
        assert ports <= allowed, (
            f"service {name!r} publishes {sorted(ports - allowed)}; only the proxy is public, the "
            "Temporal UI goes through the proxy's loopback listener, and databases, Temporal and metrics "
            "are not published"
        )
        for port in ports:
            host_ip = port.split(":")[0] if port.count(":") == 2 else "0.0.0.0"
            container = port.rsplit(":", 1)[1]
            # The UI listener is the only loopback one; the TLS listeners are the only public ones.
            assert (host_ip == "127.0.0.1") == (container == "8233"), f"service {name!r}: {port!r}"
    assert PUBLISHED["proxy"] <= {str(p) for p in services["proxy"].get("ports") or []}


def test_web_scales_behind_the_tls_proxy(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert not web.get("ports"), "service 'web': no published port, or a second replica cannot bind it"
    replicas = int((web.get("deploy") or {}).get("replicas", 1))
    assert replicas >= 2, "service 'web': run several replicas (`deploy.replicas`), as production does"
    conf = HAPROXY_CONF.read_text()
    for needed in (
        "bind :443 ssl crt /run/secrets/tls_pem alpn h2,http/1.1",  # TLS, HTTP/2 for the streams
        "server-template web- ",  # slots filled from the DNS answers: scaled replicas are found
        "resolvers docker",
        "option http-no-delay",  # events are not held (docs/decisions.md §20)
        "http-check send meth GET uri /healthz",
        "on-marked-down shutdown-sessions",
        "balance leastconn",
        "http-request disable-l7-retry if !METH_GET",
    ):
        assert needed in conf, f"{HAPROXY_CONF.relative_to(ROOT)}: add `{needed}`"
    timeout = re.search(r"timeout server (\d+)s", conf)
    heartbeat = Settings.model_fields["sse_heartbeat_seconds"].default
    assert timeout, "set `timeout server`, in seconds"
    assert int(timeout.group(1)) > heartbeat, "the idle timeouts must outlast the SSE heartbeat"
    mounted = " ".join(map(str, services["proxy"].get("volumes") or []))
    assert "deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg" in mounted
    assert "tls_pem" in secrets_of(services["proxy"])


def test_the_proxy_configuration_is_valid(tmp_path: Path) -> None:
    """`haproxy -c` (Debian's 2.6, as in the image) on the file, with a throwaway certificate."""
    haproxy = Path("/usr/sbin/haproxy")
    if not haproxy.exists():
        pytest.skip("no haproxy here (apt-get install haproxy)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "tls_pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONF.read_text().replace("/run/secrets/tls_pem", str(pem)))
    checked = subprocess.run([str(haproxy), "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_secret_has_a_default_or_a_value_in_the_file(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    for match in re.finditer(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?", text):
        name, operator = match.group(1), match.group(2) or ""
        if "-" in operator:
            assert name in DEFAULTED_VARIABLES, (
                f"{COMPOSE_FILE.name}: ${{{name}:-...}} gives a default; secrets come from `secrets:` files, "
                f"and other variables must be set (`:?`) unless listed in DEFAULTED_VARIABLES"
            )
    for name, service in services_of(compose).items():
        for var, value in environment_of(service).items():
            if var.endswith("_FILE") or not SECRETISH.search(var):
                continue
            assert value is None or value.startswith("$"), (
                f"service {name!r}: {var} has a value in {COMPOSE_FILE.name}; give it as a compose secret "
                f"({var}_FILE: /run/secrets/<name>)"
            )


def test_every_secret_referenced_is_declared_and_made(compose: dict[str, Any]) -> None:
    declared = compose.get("secrets") or {}
    made = MAKE_SECRETS.read_text()
    for name, spec in declared.items():
        assert str(spec.get("file", "")).startswith("./secrets/"), f"secret {name!r}: file under ./secrets/"
        assert re.search(rf"\b{name}\b", made), f"{MAKE_SECRETS.relative_to(ROOT)} does not create {name!r}"
    used: set[str] = set()
    for name, service in services_of(compose).items():
        mine = secrets_of(service)
        missing = sorted(set(mine) - set(declared))
        assert not missing, f"service {name!r} uses secrets {missing} that `secrets:` does not declare"
        used.update(mine)
        # A /run/secrets/<x> a service reads must be a secret of that service.
        text = json.dumps(service)
        for read in re.findall(r"/run/secrets/([A-Za-z0-9_.-]+)", text):
            assert read in mine, f"service {name!r} reads /run/secrets/{read} but does not mount it"
    assert used == set(declared), f"declared but unused secrets: {sorted(set(declared) - used)}"
    for read in re.findall(r"secret (\w+)", POSTGRES_INIT.read_text()):
        assert read in secrets_of(services_of(compose)["postgres"]), f"postgres must mount {read}"


def test_database_logins_are_separate_and_unprivileged(services: dict[str, dict[str, Any]]) -> None:
    """Tickler's logins come from migrations/roles.sql (tested on a real server by its own tests), with
    passwords from secrets; Temporal's login owns its databases only; each URL reaches only its service."""
    script = POSTGRES_INIT.read_text()
    mounted = " ".join(map(str, services["postgres"].get("volumes") or []))
    assert "deploy/postgres/10-logins.sh:/docker-entrypoint-initdb.d/" in mounted
    assert "./migrations/roles.sql:/tickler/roles.sql" in mounted
    assert "-f /tickler/roles.sql" in script
    for variable in ("owner_password", "app_password", "maintainer_password"):
        assert f"-v {variable}=" in script, f"{POSTGRES_INIT.name}: give roles.sql :{variable}"
        assert f":'{variable}'" in (ROOT / "migrations" / "roles.sql").read_text()
    create = re.search(r"CREATE ROLE temporal LOGIN ([^;]+);", script)
    assert create, f"{POSTGRES_INIT.name}: create Temporal's login"
    for attribute in ("NOSUPERUSER", "NOBYPASSRLS", "NOCREATEROLE", "PASSWORD :'"):
        assert attribute in create.group(1), f"{POSTGRES_INIT.name}: temporal needs {attribute}"
    assert "CREATE DATABASE tickler OWNER tickler;" in script
    assert "CREATE DATABASE temporal OWNER temporal;" in script
    assert environment_of(services["temporal"]).get("POSTGRES_USER") == "temporal"
    # Each database URL is mounted only where it is used.
    holders = {
        "tickler_owner_database_url": {"migrate"},
        "tickler_maintenance_database_url": {"worker"},
    }
    for secret, allowed in holders.items():
        have = {name for name, service in services.items() if secret in secrets_of(service)}
        assert have == allowed, f"only {sorted(allowed)} may mount {secret}, not {sorted(have - allowed)}"
    made = MAKE_SECRETS.read_text()
    for login in ("tickler", "tickler_login", "tickler_maintainer"):
        assert f"postgresql+asyncpg://{login}:" in made, f"{MAKE_SECRETS.name}: a URL for {login}"


def test_temporal_runs_the_server_image_with_a_one_shot_schema_setup(
    services: dict[str, dict[str, Any]],
) -> None:
    text = COMPOSE_FILE.read_text()
    assert "auto-setup" not in text.replace("not auto-setup", ""), "use temporalio/server, not auto-setup"
    assert str(services["temporal"]["image"]).startswith("temporalio/server:")
    schema = services["temporal-schema"]
    assert str(schema["image"]).startswith("temporalio/admin-tools:")
    script = " ".join(command_of(schema))
    for db in ("temporal", "temporal_visibility"):
        for step in ("setup-schema", "update-schema"):
            assert f"--db {db} {step}" in script, f"temporal-schema: run temporal-sql-tool {step} on {db}"
    assert depends_on_of(services["temporal"]).get("temporal-schema") == "service_completed_successfully"
    shards = environment_of(services["temporal"]).get("NUM_HISTORY_SHARDS")
    assert shards, "choose NUM_HISTORY_SHARDS: it is fixed for the cluster's life"
    assert int(shards) >= 1
    assert f"NUM_HISTORY_SHARDS` is {shards}" in DEPLOYMENT_DOC.read_text(), (
        f'docs/deployment.md: say why the history shard count is {shards} ("NUM_HISTORY_SHARDS` is {shards}")'
    )


def test_temporal_images_match_the_versions_the_tests_run(services: dict[str, dict[str, Any]]) -> None:
    cli = Path(sys.executable).parent / "temporal"
    if not cli.exists():
        pytest.skip("no temporal CLI in this environment")
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=True).stdout
    server = re.search(r"Server (\d+\.\d+\.\d+)", version)
    ui = re.search(r"UI (\d+\.\d+\.\d+)", version)
    assert server, version
    assert ui, version
    for name in ("temporal", "temporal-schema", "temporal-setup"):
        tag = str(services[name]["image"]).partition(":")[2]
        assert tag.split("-")[0] == server.group(1), (
            f"service {name!r}: image tag {tag!r} is not the server the tests run ({server.group(1)}); "
            "change both together, or document the gap in docs/deployment.md"
        )
    assert str(services["temporal-ui"]["image"]).endswith(f":{ui.group(1)}")


def test_temporal_ui_is_read_only(services: dict[str, dict[str, Any]]) -> None:
    env = environment_of(services["temporal-ui"])
    assert str(env.get("TEMPORAL_DISABLE_WRITE_ACTIONS", "")).lower() == "true", (
        'temporal-ui: set TEMPORAL_DISABLE_WRITE_ACTIONS: "true"; the UI has no login of its own'
    )
    assert not services["temporal-ui"].get("ports"), (
        "temporal-ui: reach it through the proxy's loopback listener"
    )


def test_every_service_has_limits_log_rotation_and_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        for limit in ("cpus", "memory"):
            assert limits.get(limit), f"service {name!r}: set deploy.resources.limits.{limit}"
        logging = service.get("logging") or {}
        options = logging.get("options") or {}
        rotated = (logging.get("driver"), bool(options.get("max-size")), bool(options.get("max-file")))
        assert rotated == ("json-file", True, True), (
            f"service {name!r}: rotate its logs (logging: json-file with max-size and max-file)"
        )
        one_shot = str(service.get("restart", "no")) == "no"
        assert one_shot or has_healthcheck(service), f"service {name!r}: add a healthcheck"


def test_one_image_for_the_app_services(services: dict[str, dict[str, Any]]) -> None:
    images = {str(services[name].get("image")) for name in APP_SERVICES}
    assert len(images) == 1, (
        f"give migrate, worker and web one `image:` name (they have {sorted(images)}), built once"
    )
    assert "None" not in images


def test_redis_requires_the_password_of_the_app_url(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    script = " ".join(command_of(redis))
    assert "requirepass" in script
    assert "/run/secrets/redis_password" in script
    assert "/run/secrets/redis_password" in healthcheck_text(redis)
    assert 'redis://:$(cat "$dir/redis_password")@redis' in MAKE_SECRETS.read_text()


# ---- Dockerfile and .dockerignore ----


def test_dockerfile_runs_the_tickler_cli() -> None:
    instructions = dockerfile_instructions()
    argv = [
        word for keyword, args in instructions if keyword in ("ENTRYPOINT", "CMD") for word in exec_form(args)
    ]
    assert "tickler" in argv, f'{DOCKERFILE.name}: end with `CMD ["tickler", "web"]`'
    cmd = [exec_form(args) for keyword, args in instructions if keyword == "CMD"]
    assert cmd, f'{DOCKERFILE.name}: add `CMD ["tickler", "web"]`'
    assert cmd[-1] == ["tickler", "web"], f"{DOCKERFILE.name}: the default command must be `tickler web`"


def test_dockerfile_is_production_shaped() -> None:
    instructions = dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    fix_user = f"{DOCKERFILE.name}: switch to a non-root user (`USER <uid>`) in the final stage"
    assert users, fix_user
    assert users[-1].split(":")[0] not in ("root", "0"), fix_user
    runs = [args for keyword, args in dockerfile_instructions(final_stage_only=False) if keyword == "RUN"]
    installs = [r for r in runs if re.search(r"pip install\b.*\s\.(\s|$)", r)]
    assert installs, f"{DOCKERFILE.name}: install the project with `pip install .`"
    assert not [r for r in runs if re.search(r"pip install\b.*\.\[", r)], (
        f"{DOCKERFILE.name}: install without extras (no devstack/test/lint in the image)"
    )
    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for needed in ("alembic.ini", "migrations"):
        assert needed in copied, (
            f"{DOCKERFILE.name}: COPY {needed} into the runtime stage, for running `alembic` in the container"
        )
    for keyword, args in instructions:
        if keyword != "ENV":
            continue
        words = shlex.split(args)
        names = [w.partition("=")[0] for w in words] if "=" in words[0] else words[:1]
        for var in names:
            assert not var.startswith(PREFIX) or setting_of(var) in SETTINGS_FIELDS, (
                f"{DOCKERFILE.name}: ENV {var} is not a field of core.settings.Settings; fix the name"
            )


def test_dockerfile_installs_the_lock_with_hashes_and_has_a_healthcheck() -> None:
    everything = dockerfile_instructions(final_stage_only=False)
    runs = [args for keyword, args in everything if keyword == "RUN"]
    assert any("--require-hashes" in r and "requirements/runtime.lock" in r for r in runs)
    # The lock is copied and installed before the sources, so a source change reuses that layer.
    order = [args for keyword, args in everything if keyword in ("COPY", "RUN")]
    lock = next(i for i, a in enumerate(order) if "--require-hashes" in a)
    sources = next(i for i, a in enumerate(order) if a.startswith(". "))
    assert lock < sources, "install requirements/runtime.lock before `COPY . .`"
    final = dockerfile_instructions()
    checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert checks, f"{DOCKERFILE.name}: add a HEALTHCHECK"
    assert "/readyz" in checks[-1], f"{DOCKERFILE.name}: the HEALTHCHECK probes /readyz"
    assert sum(keyword == "FROM" for keyword, _ in everything) >= 2, "build in one stage, run in another"


def test_dockerignore_keeps_local_state_out() -> None:
    assert DOCKERIGNORE.is_file(), f"create {DOCKERIGNORE.name} next to {DOCKERFILE.name}"
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for needed in (".venv", ".data", ".git", ".env", "tests/artifacts", "secrets"):
        assert needed in entries, f"{DOCKERIGNORE.name}: add a line `{needed}`"


# ---- .env.example ----


def test_env_example_names_only_real_settings() -> None:
    names = env_example_names()
    not_prefixed = [n for n in names if not n.startswith(PREFIX)]
    assert not not_prefixed, f"{ENV_EXAMPLE.name}: prefix {not_prefixed} with {PREFIX}"
    unknown = [n for n in names if setting_of(n) not in SETTINGS_FIELDS]
    assert not unknown, (
        f"{ENV_EXAMPLE.name}: {unknown} are not fields of core.settings.Settings; remove or rename them"
    )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    assert not duplicated, f"{ENV_EXAMPLE.name}: list {duplicated} once each"


def test_env_example_lists_every_setting() -> None:
    listed = {setting_of(n) for n in env_example_names()}
    missing = [f"{PREFIX}{f.upper()}" for f in Settings.model_fields if f not in listed]
    assert not missing, (
        f"{ENV_EXAMPLE.name}: add `# <description>` and `# NAME=<default>` lines for {missing} "
        "(new fields of core.settings.Settings)"
    )


def test_env_example_matches_descriptions_and_defaults() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = ENV_EXAMPLE_LINE.match(line)
        if not match or setting_of(match.group(1)) not in SETTINGS_FIELDS:
            continue
        field = setting_of(match.group(1))
        expected = [
            f"# {Settings.model_fields[field].description}",
            f"# {PREFIX}{field.upper()}={rendered_default(field)}",
        ]
        actual = lines[index - 1 : index + 1] if index else [line]
        assert actual == expected, (
            f"{ENV_EXAMPLE.name} is out of date with core.settings.Settings for {field}; "
            "replace its two lines with:\n" + "\n".join(expected)
        )


def test_payloads_are_encrypted_and_the_ui_decodes_them_through_the_web(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment_of(services["web"])
    assert str(env.get("TICKLER_PAYLOAD_ENCRYPTION", "true")).lower() not in ("false", "0", "no")
    keys = env.get("TICKLER_ENCRYPTION_KEY_FILE") or ""
    assert keys.startswith("/run/secrets/")
    assert keys.removeprefix("/run/secrets/") in secrets_of(services["web"]), (
        "set `TICKLER_ENCRYPTION_KEY_FILE: /run/secrets/<name>` in x-tickler-env, a secret the web has: the "
        "workers refuse to start without keys (TICKLER_ENV is not dev), and a default key would be no secret"
    )
    ui = environment_of(services["temporal-ui"])
    endpoint = urlsplit(str(ui.get("TEMPORAL_CODEC_ENDPOINT", "")))
    assert endpoint.path == "/codec", "point the UI's TEMPORAL_CODEC_ENDPOINT at the web's /codec"
    assert endpoint.scheme == "https", "the codec endpoint is the proxy's: https"
    # The proxy serves the UI and its /codec on one loopback origin (deploy/haproxy/haproxy.cfg).
    assert f"127.0.0.1:{endpoint.port}:{endpoint.port}" in services["proxy"].get("ports", [])
    assert "use_backend web if { path /codec }" in HAPROXY_CONF.read_text()
    origins = {o.strip() for o in str(env.get("TICKLER_CODEC_CORS_ORIGINS", "")).split(",")}
    assert f"https://localhost:{endpoint.port}" in origins, (
        "allow the UI's origin in TICKLER_CODEC_CORS_ORIGINS, or the web refuses the codec's callers"
    )
