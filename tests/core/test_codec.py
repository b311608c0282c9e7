"""The payload codec without a server: sealing, rotation by key id, tampering, and where keys come from."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from core.codec import (
    DEV_KEY_FILE,
    ENCODING,
    KEY_ID,
    NONCE_BYTES,
    EncryptionCodec,
    EncryptionConfigError,
    EncryptionKey,
    PayloadDecryptionError,
    configured_keys,
    data_converter,
    ensure_key_file,
    parse_keys,
)
from core.settings import Settings

TITLE = b"Call Ana about the Lisbon offer"
OLD = EncryptionKey("old", bytes(range(32)))
NEW = EncryptionKey("new", bytes(range(32, 64)))


def plain(data: bytes = b'{"title": "' + TITLE + b'"}') -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


async def test_a_payload_round_trips_sealed_under_the_first_key() -> None:
    codec = EncryptionCodec([NEW, OLD])
    original = [plain(), plain(b"null")]
    sealed = await codec.encode(original)
    for payload in sealed:
        assert payload.metadata["encoding"] == ENCODING
        assert payload.metadata[KEY_ID] == b"new"
        assert TITLE not in payload.data
        assert set(payload.metadata) == {"encoding", KEY_ID}, "the original metadata is sealed too"
    assert await codec.decode(sealed) == original


async def test_the_format_is_the_samples_one_nonce_then_ciphertext_of_the_serialized_payload() -> None:
    # What samples-python's encryption/codec.py writes, so its codec servers (Go, TypeScript) read ours.
    (sealed,) = await EncryptionCodec([OLD]).encode([plain()])
    data = sealed.data
    opened = AESGCM(OLD.secret).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
    assert Payload.FromString(opened) == plain()


async def test_every_payload_gets_a_nonce_of_its_own() -> None:
    codec = EncryptionCodec([OLD])
    sealed = await codec.encode([plain()] * 2000)
    nonces = {p.data[:NONCE_BYTES] for p in sealed}
    assert len(nonces) == 2000
    assert all(len(n) == 12 for n in nonces)
    assert len({p.data for p in sealed}) == 2000


async def test_an_altered_payload_is_refused() -> None:
    codec = EncryptionCodec([OLD, NEW])
    (sealed,) = await codec.encode([plain()])
    for position in (0, NONCE_BYTES, len(sealed.data) - 1):
        altered = bytearray(sealed.data)
        altered[position] ^= 0x01
        with pytest.raises(PayloadDecryptionError, match="altered"):
            await codec.decode([Payload(metadata=sealed.metadata, data=bytes(altered))])
    # Relabelled with another key's id that is held: GCM's tag fails just the same.
    relabelled = Payload(metadata={"encoding": ENCODING, KEY_ID: b"new"}, data=sealed.data)
    with pytest.raises(PayloadDecryptionError, match="'new' does not decrypt"):
        await codec.decode([relabelled])
    with pytest.raises(PayloadDecryptionError):
        await codec.decode([Payload(metadata=sealed.metadata, data=sealed.data[:5])])


async def test_an_unknown_key_id_fails_and_names_the_keys_held() -> None:
    (sealed,) = await EncryptionCodec([OLD]).encode([plain()])
    with pytest.raises(PayloadDecryptionError) as failure:
        await EncryptionCodec([NEW]).decode([sealed])
    message = str(failure.value)
    for part in ("'old'", "held: new", "TICKLER_ENCRYPTION_KEYS"):
        assert part in message


async def test_rotation_new_key_first_old_one_kept() -> None:
    (before,) = await EncryptionCodec([OLD]).encode([plain()])
    rotated = EncryptionCodec([NEW, OLD])
    (after,) = await rotated.encode([plain()])
    assert after.metadata[KEY_ID] == b"new"
    assert await rotated.decode([before, after]) == [plain(), plain()]


async def test_payloads_in_clear_pass_through() -> None:
    # Histories written before encryption, and the replay test's recordings.
    payloads = [plain(), Payload(metadata={"encoding": b"binary/null"}), Payload()]
    assert await EncryptionCodec([OLD]).decode(payloads) == payloads


def test_keys_are_parsed_from_commas_lines_and_comments() -> None:
    older = EncryptionKey("older", b"x" * 32)
    text = f"# rotated 2026-11-30\n{NEW.entry()}  # current\n\n{OLD.entry()}, {older.entry()}\n"
    assert [k.kid for k in parse_keys(text, "file")] == ["new", "old", "older"]
    assert parse_keys(text, "file")[0].secret == NEW.secret


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("nocolon", "no colon"),
        ("k:not base64!", "not valid base64"),
        (f"k:{base64.b64encode(b'short').decode()}", "AES-256 needs 32"),
        (f"bad id:{base64.b64encode(bytes(32)).decode()}", "key id 'bad id'"),
        (f"{OLD.entry()},{OLD.entry()}", "listed twice"),
    ],
)
def test_a_malformed_key_is_refused_by_name(text: str, complaint: str) -> None:
    with pytest.raises(EncryptionConfigError, match=complaint) as failure:
        parse_keys(text, "TICKLER_ENCRYPTION_KEYS")
    assert "TICKLER_ENCRYPTION_KEYS" in str(failure.value)


def test_a_key_never_shows_its_secret() -> None:
    assert base64.b64encode(OLD.secret).decode() not in repr(OLD)
    assert repr([OLD]) == "[EncryptionKey(kid='old')]"


def test_keys_come_from_the_variable_or_the_file(tmp_path: Path) -> None:
    from_env = Settings(encryption_keys=SecretStr(f"{NEW.entry()},{OLD.entry()}"))
    assert [k.kid for k in configured_keys(from_env) or []] == ["new", "old"]
    path = tmp_path / "keys"
    path.write_text(f"{OLD.entry()}\n")
    assert [k.kid for k in configured_keys(Settings(env="production", encryption_key_file=path)) or []] == [
        "old"
    ]
    with pytest.raises(EncryptionConfigError, match="No such file"):
        configured_keys(Settings(encryption_key_file=tmp_path / "missing"))
    path.write_text("# nothing yet\n")
    with pytest.raises(EncryptionConfigError, match="holds no key"):
        configured_keys(Settings(encryption_key_file=path))
    with pytest.raises(ValidationError, match="not both"):
        Settings(encryption_keys=SecretStr(OLD.entry()), encryption_key_file=path)


def test_production_without_a_key_refuses_to_start_unless_encryption_is_off(tmp_path: Path) -> None:
    with pytest.raises(EncryptionConfigError) as failure:
        configured_keys(Settings(env="production", data_dir=tmp_path))
    for hint in (
        "TICKLER_ENCRYPTION_KEYS",
        "TICKLER_ENCRYPTION_KEY_FILE",
        "TICKLER_PAYLOAD_ENCRYPTION=false",
    ):
        assert hint in str(failure.value)
    assert not (tmp_path / DEV_KEY_FILE).exists(), "production never makes a key of its own"
    off = Settings(env="production", data_dir=tmp_path, payload_encryption=False)
    assert configured_keys(off) is None
    assert data_converter(pydantic_data_converter, off) is pydantic_data_converter


def test_development_keeps_a_generated_key_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(env="dev", data_dir=tmp_path / "data")
    first = configured_keys(settings)
    path = tmp_path / "data" / DEV_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first is not None
    assert len(first) == 1
    again = configured_keys(settings)
    assert again is not None
    assert again[0].secret == first[0].secret, "the next start reads the same key"


def test_processes_racing_to_make_the_development_key_all_get_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / DEV_KEY_FILE
    barrier = threading.Barrier(8)
    secrets: list[bytes] = []

    def start() -> None:
        barrier.wait()
        ensure_key_file(path)
        secrets.append(parse_keys(path.read_text(), str(path))[0].secret)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(secrets) == 8
    assert len(set(secrets)) == 1
    assert os.listdir(tmp_path) == [DEV_KEY_FILE], "no temporary file is left behind"


async def test_the_converter_keeps_pydantic_and_encrypts_failure_messages() -> None:
    converter = data_converter(pydantic_data_converter, Settings(encryption_keys=SecretStr(OLD.entry())))
    assert converter.payload_converter_class is pydantic_data_converter.payload_converter_class
    assert isinstance(converter.payload_codec, EncryptionCodec)
    # A failure's message can quote a title (an SQL error's parameters, say): it is sealed as well.
    failure = Failure()
    error = ApplicationError(f"could not save {TITLE.decode()}", type="SaveFailed")
    await converter.encode_failure(error, failure)
    assert TITLE not in failure.SerializeToString()
    assert failure.message == "Encoded failure"
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert decoded.message == f"could not save {TITLE.decode()}"
    assert decoded.type == "SaveFailed"
