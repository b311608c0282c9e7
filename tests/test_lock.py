"""The locks agree with pyproject.toml: every dependency pinned, with hashes, inside its declared range.

`make lock` writes requirements/dev.lock (every extra: what make installs) and requirements/runtime.lock
(the Docker image's). A dependency added, removed or re-bounded in pyproject.toml without `make lock`
fails here, before an install quietly takes whatever PyPI has that day. No network.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEV_LOCK = ROOT / "requirements" / "dev.lock"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
# How uv's annotations name a requirement taken from pyproject.toml.
FROM_PYPROJECT = f"{PYPROJECT['project']['name']} (pyproject.toml)"

RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
EXTRAS = [Requirement(r) for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs]
BUILD = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass
class Pin:
    version: Version
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> dict[NormalizedName, Pin]:
    """Name -> pin of a `uv pip compile --generate-hashes` output; any line it cannot place fails."""
    pins: dict[NormalizedName, Pin] = {}
    current: Pin | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or (current is None and stripped.startswith("#")):
            continue  # the header
        if not line[0].isspace():
            match = PIN.match(line)
            assert match, f"{path.name}:{number}: not a `name==version` pin: {line!r}"
            name = canonicalize_name(match["name"])
            assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
            current = pins[name] = Pin(Version(match["version"]))
        elif current is None:
            raise AssertionError(f"{path.name}:{number}: indented line before any pin")
        elif stripped.startswith("--hash="):
            current.hashes += HASH.findall(stripped)
        elif stripped.startswith("#"):
            current.via.append(stripped.lstrip("#").strip().removeprefix("via").strip())
        else:
            raise AssertionError(f"{path.name}:{number}: unexpected line {line!r}")
    return pins


LOCKS = {DEV_LOCK.name: read_lock(DEV_LOCK), RUNTIME_LOCK.name: read_lock(RUNTIME_LOCK)}
# What each lock must hold: make installs every extra; the image only the runtime dependencies. Both hold
# the build backend, for `pip install --no-build-isolation`.
EXPECTED = {DEV_LOCK.name: RUNTIME + EXTRAS + BUILD, RUNTIME_LOCK.name: RUNTIME + BUILD}


@pytest.mark.parametrize(
    ("lock", "requirement"),
    [(lock, req) for lock, reqs in EXPECTED.items() for req in reqs],
    ids=lambda value: str(value.name) if isinstance(value, Requirement) else str(value),
)
def test_every_dependency_is_pinned_within_its_range(lock: str, requirement: Requirement) -> None:
    pin = LOCKS[lock].get(canonicalize_name(requirement.name))
    assert pin is not None, f"{lock} does not pin {requirement.name}: run `make lock`"
    assert requirement.specifier.contains(pin.version, prereleases=True), (
        f"{lock} pins {requirement.name}=={pin.version}, outside `{requirement}` of pyproject.toml: "
        "run `make lock`"
    )


@pytest.mark.parametrize("lock", list(LOCKS))
def test_every_pin_has_hashes(lock: str) -> None:
    unhashed = [name for name, pin in LOCKS[lock].items() if not pin.hashes]
    assert unhashed == [], f"{lock}: pins without hashes (pip --require-hashes refuses them): {unhashed}"


@pytest.mark.parametrize("lock", list(LOCKS))
def test_no_pin_outlives_its_dependency(lock: str) -> None:
    """A dependency removed from pyproject.toml leaves the lock too (its own dependencies follow it)."""
    direct = {canonicalize_name(r.name) for r in EXPECTED[lock] if r not in BUILD}
    annotated = {name for name, pin in LOCKS[lock].items() if FROM_PYPROJECT in pin.via}
    stale = annotated - direct
    assert stale == set(), f"{lock} still pins {stale}, which pyproject.toml dropped: run `make lock`"


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    dev, runtime = LOCKS[DEV_LOCK.name], LOCKS[RUNTIME_LOCK.name]
    differ = {
        name: (str(pin.version), str(dev[name].version) if name in dev else None)
        for name, pin in runtime.items()
        if name not in dev or dev[name].version != pin.version
    }
    assert differ == {}, f"runtime.lock and dev.lock disagree (runtime, dev): {differ}; run `make lock`"


def test_the_image_has_no_development_extra() -> None:
    runtime_names = {canonicalize_name(r.name) for r in RUNTIME + BUILD}
    extras_only = {canonicalize_name(r.name) for r in EXTRAS} - runtime_names
    assert extras_only & set(LOCKS[RUNTIME_LOCK.name]) == set()


def test_zero_major_dependencies_have_an_upper_bound() -> None:
    """For a 0.x release any minor may break (docs/decisions.md, "Dependencies"): a bump is an edit."""
    dev = LOCKS[DEV_LOCK.name]
    unbounded = [
        str(req)
        for req in RUNTIME + EXTRAS
        if dev[canonicalize_name(req.name)].version.major == 0
        and not any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier)
    ]
    assert unbounded == [], f"bound these 0.x dependencies `<0.N` in pyproject.toml: {unbounded}"


def test_make_and_the_image_install_from_the_locks_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r $(DEV_LOCK)" in makefile
    assert f"DEV_LOCK := {DEV_LOCK.relative_to(ROOT)}" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"pip install --require-hashes -r {RUNTIME_LOCK.relative_to(ROOT)}" in dockerfile
