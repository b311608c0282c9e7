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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTES
from tickler.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

PREFIX = "TICKLER_"
SETTINGS_FIELDS = frozenset(Settings.model_fields)

# Subcommands of the `tickler` console script (tickler.cli:main) that a container may run; not `run`,
# which starts the embedded servers of the devstack extra that the image does not install.
CLI_SUBCOMMANDS = frozenset({"web", "worker", "migrate"})
# Service of the app image -> the subcommand it runs.
APP_SERVICES = {"migrate": "migrate", "worker": "worker", "web": "web"}
EXPECTED_SERVICES = frozenset(
    {"postgres", "redis", "temporal", "temporal-setup", "temporal-ui", *APP_SERVICES}
)
NEEDS_HEALTHCHECK = ("postgres", "redis", "temporal", "worker", "web")
DEPENDS_ON_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})

# `${NAME}`, `${NAME:-default}`, `${NAME:?error}`; `$${...}` is an escaped literal, not a reference.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
ENV_EXAMPLE_LINE = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_]*)=")


# ---- helpers ----


def load_compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"create {COMPOSE_FILE.name} at the project root"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), f"{COMPOSE_FILE.name} must be a YAML mapping with a `services:` key"
    return data


def services_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict), f"{COMPOSE_FILE.name} needs a `services:` mapping"
    return services


def setting_of(env_name: str) -> str:
    """The Settings field an environment variable sets: TICKLER_WEB_PORT -> web_port."""
    return env_name.removeprefix(PREFIX).lower()


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
        assert env == first, (
            f"service {name!r} has a different environment from 'web'; "
            "give every app service `environment: *tickler-env`"
        )
    assert first.get("TICKLER_ENV") not in (None, "dev"), (
        "set TICKLER_ENV to something other than `dev` (e.g. production) in x-tickler-env, "
        "or `tickler web` accepts the development JWT secret"
    )
    secret = first.get("TICKLER_JWT_SECRET") or ""
    assert re.fullmatch(r"\$\{TICKLER_JWT_SECRET:\?[^}]*\}", secret), (
        "set `TICKLER_JWT_SECRET: ${TICKLER_JWT_SECRET:?set TICKLER_JWT_SECRET}` in x-tickler-env, so "
        "compose refuses to start without a secret instead of falling back to a default"
    )
    for var in ("TICKLER_DATABASE_URL", "TICKLER_REDIS_URL", "TICKLER_TEMPORAL_ADDRESS"):
        value = first.get(var)
        assert value, f"set {var} in x-tickler-env; its default is a loopback address of the dev stack"
        host = host_of(value)
        assert host in services, (
            f"{var}={value!r} points at host {host!r}; use the compose service name instead "
            "(postgres, redis or temporal)"
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
    published = [str(p).rpartition(":")[2] for p in web.get("ports", [])]
    assert port in published, f"service 'web': publish the container port {port}, e.g. `- \"{port}:{port}\"`"


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


def test_dockerignore_keeps_local_state_out() -> None:
    assert DOCKERIGNORE.is_file(), f"create {DOCKERIGNORE.name} next to {DOCKERFILE.name}"
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for needed in (".venv", ".data", ".git", ".env", "tests/artifacts"):
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
    keys = env.get("TICKLER_ENCRYPTION_KEYS") or ""
    assert re.fullmatch(r"\$\{TICKLER_ENCRYPTION_KEYS:\?[^}]*\}", keys), (
        "set `TICKLER_ENCRYPTION_KEYS: ${TICKLER_ENCRYPTION_KEYS:?...}` in x-tickler-env: the workers refuse "
        "to start without keys (TICKLER_ENV is not dev), and a default key would be no secret"
    )
    ui = environment_of(services["temporal-ui"])
    endpoint = urlsplit(str(ui.get("TEMPORAL_CODEC_ENDPOINT", "")))
    assert endpoint.path == "/codec", "point the UI's TEMPORAL_CODEC_ENDPOINT at the web's /codec"
    published = {str(p).split(":")[-2] for p in services["web"].get("ports", [])}
    assert str(endpoint.port) in published, (
        "the browser calls the codec endpoint: use the web's published port"
    )
    ui_port = {str(p).split(":")[-2] for p in services["temporal-ui"].get("ports", [])}
    origins = {o.strip() for o in str(env.get("TICKLER_CODEC_CORS_ORIGINS", "")).split(",")}
    assert {f"http://localhost:{port}" for port in ui_port} <= origins, (
        "allow the UI's origin in TICKLER_CODEC_CORS_ORIGINS, or browsers refuse the codec's answers"
    )
