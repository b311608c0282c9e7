"""The README stays true to the code: every setting in its table, every signal and every doc named."""

from __future__ import annotations

import re
from pathlib import Path

from core.payloads import SIGNALS
from core.settings import Settings
from tickler.settings_doc import readme_with_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_settings_table_is_generated_from_the_settings() -> None:
    assert readme_with_table(README) == README, "run `python -m tickler.settings_doc` to update the README"


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `TICKLER_([A-Z0-9_]+)` \|", README, flags=re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - documented == set(), "add these settings to the README's Settings table"
    assert documented - fields == set(), "the README's Settings table names settings that do not exist"


def test_every_signal_is_documented() -> None:
    for name in SIGNALS:
        assert f"| `{name}` |" in README, f"document the `{name}` signal and its payload in the README"


def test_the_readme_names_every_file_in_docs() -> None:
    docs = Path(__file__).parent.parent / "docs"
    for path in sorted(docs.iterdir()):
        assert f"`{path.name}`" in README or f"docs/{path.name}" in README, (
            f"name docs/{path.name} in the README"
        )
