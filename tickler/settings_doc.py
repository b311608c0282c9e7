"""Write the settings' documentation from core/settings.py: `.env.example` and the README's table.

Run `python -m tickler.settings_doc` after adding a setting; tests fail while either file drifts.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Tickler settings: every field of core/settings.py (Settings), read from TICKLER_* variables.
# Generated from that class; tests/test_compose.py fails when this file drifts from it (names,
# descriptions, defaults). Each commented line shows the default. Uncomment and edit what you need, and
# save the result as .env (git-ignored): the app reads it when run from this directory, and
# docker compose reads it only to fill the ${...} references of docker-compose.yml
# (TICKLER_JWT_ISSUER, TICKLER_JWT_AUDIENCE, TICKLER_LOG_LEVEL, IMAGE_TAG); its secrets are files
# (deploy/make-secrets.sh, docs/deployment.md).
# A field whose default is None is shown empty: keep it commented to leave it unset, since an
# uncommented empty value is the empty string.
"""


def _default(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if value is None:
        return ""
    return str(value)


def env_example() -> str:
    blocks = [HEADER]
    for name, field in Settings.model_fields.items():
        blocks.append(f"# {field.description}\n# TICKLER_{name.upper()}={_default(field.default)}\n")
    return "\n".join(blocks)


def readme_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "(development secret)"
            if isinstance(default, SecretStr)
            else ("unset" if default is None else f"`{_default(default)}`")
        )
        rows.append(f"| `TICKLER_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


TABLE = re.compile(r"\| variable \| default \| meaning \|\n(?:\|.*\|\n)+")


def readme_with_table(readme: str) -> str:
    return TABLE.sub(lambda _: readme_table(), readme, count=1)


def main() -> None:
    (ROOT / ".env.example").write_text(env_example())
    readme = ROOT / "README.md"
    readme.write_text(readme_with_table(readme.read_text()))


if __name__ == "__main__":
    main()
