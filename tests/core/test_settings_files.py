"""Secrets from files: `TICKLER_<FIELD>_FILE` names a file (a compose or Kubernetes secret) with the value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.auth import mint_token, verify_token
from core.errors import Unauthorized
from core.settings import Settings

FILE_SECRET = "a-secret-that-only-the-file-knows-0123456789"


@pytest.fixture(autouse=True)
def no_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [name for name in os.environ if name.startswith("TICKLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / "run-secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    path.chmod(0o400)
    return path


def test_secrets_read_from_files_take_effect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = "postgresql+asyncpg://tickler_app:s3cr%40t@postgres:5432/tickler"
    # `echo secret > file` leaves a line break; it is not part of the secret.
    monkeypatch.setenv("TICKLER_JWT_SECRET_FILE", str(secret_file(tmp_path, "jwt", FILE_SECRET + "\n")))
    monkeypatch.setenv("TICKLER_DATABASE_URL_FILE", str(secret_file(tmp_path, "db", url)))
    monkeypatch.setenv(
        "TICKLER_REDIS_URL_FILE", str(secret_file(tmp_path, "redis", "redis://:pw@redis:6379/0"))
    )
    monkeypatch.setenv("TICKLER_TEMPORAL_API_KEY_FILE", str(secret_file(tmp_path, "api", "key-123\n")))
    settings = Settings()
    assert settings.jwt_secret.get_secret_value() == FILE_SECRET
    assert settings.database_url == url
    assert settings.redis_url == "redis://:pw@redis:6379/0"
    assert settings.temporal_api_key is not None
    assert settings.temporal_api_key.get_secret_value() == "key-123"

    # The file's secret is the one tokens are checked with.
    token = mint_token(settings, user_id="7", organization_id="42", ttl_seconds=60)
    assert verify_token(settings, token).organization_id == "42"
    with pytest.raises(Unauthorized):
        verify_token(Settings(jwt_secret=FILE_SECRET[::-1]), token)


def test_a_file_outranks_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TICKLER_JWT_SECRET=a-secret-from-dotenv-that-is-long-enough\n")
    monkeypatch.setenv("TICKLER_JWT_SECRET_FILE", str(secret_file(tmp_path, "jwt", FILE_SECRET)))
    assert Settings().jwt_secret.get_secret_value() == FILE_SECRET


def test_a_value_and_its_file_together_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TICKLER_JWT_SECRET", FILE_SECRET)
    monkeypatch.setenv("TICKLER_JWT_SECRET_FILE", str(secret_file(tmp_path, "jwt", FILE_SECRET)))
    with pytest.raises(ValueError, match="not both"):
        Settings()


def test_an_unreadable_file_is_an_error_not_a_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TICKLER_JWT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="TICKLER_JWT_SECRET_FILE"):
        Settings()


def test_a_file_value_is_validated_like_any_other(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TICKLER_JWT_SECRET_FILE", str(secret_file(tmp_path, "jwt", "short")))
    with pytest.raises(ValidationError, match="jwt_secret"):
        Settings()
