"""Payload encryption: every payload a Tickler client or worker writes to Temporal is sealed with AES-256-GCM.

The format is samples-python's `encryption` sample (and its Go and TypeScript twins): metadata
``encoding: binary/encrypted`` and ``encryption-key-id: <kid>``, data the 96-bit random nonce followed by
the ciphertext and its tag, the plaintext the serialized original Payload. Several keys are held, so keys
rotate: the first encrypts, every one decrypts what names its id. A payload without the encrypted
encoding is passed through as it is (histories written before encryption, the replay test's recordings).

Keys come from TICKLER_ENCRYPTION_KEYS or TICKLER_ENCRYPTION_KEY_FILE (``kid:base64`` entries, newest
first); with neither, TICKLER_ENV=dev keeps a generated key in TICKLER_DATA_DIR, and any other env refuses
to start unless TICKLER_PAYLOAD_ENCRYPTION is false. docs/deployment.md has the rotation procedure.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from core.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
# What `tickler run` (TICKLER_ENV=dev) keeps in TICKLER_DATA_DIR when no key is configured.
DEV_KEY_FILE = "encryption.keys"

_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class EncryptionConfigError(ValueError):
    """The keys are missing or malformed: the process refuses to start, and this says what to set."""


class PayloadDecryptionError(ValueError):
    """A payload cannot be decrypted: its key is not held, or it was altered."""


@dataclass(frozen=True, repr=False)
class EncryptionKey:
    kid: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KID.fullmatch(self.kid):
            raise EncryptionConfigError(
                f"encryption key id {self.kid!r}: use 1 to 64 of the characters A-Z a-z 0-9 . _ -"
            )
        if len(self.secret) != KEY_BYTES:
            raise EncryptionConfigError(
                f"encryption key {self.kid!r} is {len(self.secret)} bytes; AES-256 needs {KEY_BYTES}"
            )

    def __repr__(self) -> str:
        # Never the secret, in a traceback or a log line.
        return f"EncryptionKey(kid={self.kid!r})"

    def entry(self) -> str:
        """The ``kid:base64`` line this key is written as."""
        return f"{self.kid}:{base64.b64encode(self.secret).decode()}"

    @classmethod
    def generate(cls, kid: str | None = None) -> EncryptionKey:
        """A new random key; its default id is the time it was made, so ids sort by age."""
        return cls(kid or datetime.now(UTC).strftime("k%Y%m%dT%H%M%S"), secrets.token_bytes(KEY_BYTES))


def parse_keys(text: str, source: str) -> list[EncryptionKey]:
    """The keys of ``text``: ``kid:base64`` entries separated by commas or new lines, ``#`` starting a
    comment; the first is the one that encrypts. ``source`` names where the text came from, for errors."""
    keys: list[EncryptionKey] = []
    for line in text.splitlines():
        for entry in line.split("#", 1)[0].split(","):
            entry = entry.strip()
            if not entry:
                continue
            kid, sep, encoded = entry.partition(":")
            if not sep:
                raise EncryptionConfigError(f"{source}: an entry is not `kid:base64key` (no colon)")
            try:
                secret = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error as exc:
                raise EncryptionConfigError(f"{source}: key {kid.strip()!r} is not valid base64") from exc
            try:
                keys.append(EncryptionKey(kid.strip(), secret))
            except EncryptionConfigError as exc:
                raise EncryptionConfigError(f"{source}: {exc}") from None
    kids = [key.kid for key in keys]
    if duplicates := sorted({kid for kid in kids if kids.count(kid) > 1}):
        raise EncryptionConfigError(f"{source}: key id {duplicates[0]!r} is listed twice")
    return keys


def ensure_key_file(path: Path) -> Path:
    """Create ``path`` with one new key, readable by its owner only, unless it exists. Safe when several
    processes race: the file appears whole, once, and every one of them reads the same key."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(
                "# Payload encryption keys of this development stack (core/codec.py), newest first.\n"
                f"{EncryptionKey.generate().entry()}\n"
            )
        # link() fails if the file exists by now: the first writer wins, the others read its key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def configured_keys(settings: Settings) -> list[EncryptionKey] | None:
    """The keys the settings give, newest first; None when encryption is off. Raises
    EncryptionConfigError, with what to set, when it is on and there are none."""
    if not settings.payload_encryption:
        return None
    if settings.encryption_keys is not None:
        keys = parse_keys(settings.encryption_keys.get_secret_value(), "TICKLER_ENCRYPTION_KEYS")
        source = "TICKLER_ENCRYPTION_KEYS"
    elif settings.encryption_key_file is not None:
        path = settings.encryption_key_file
        try:
            text = path.read_text()
        except OSError as exc:
            raise EncryptionConfigError(f"TICKLER_ENCRYPTION_KEY_FILE {path}: {exc.strerror}") from exc
        keys, source = parse_keys(text, f"TICKLER_ENCRYPTION_KEY_FILE {path}"), str(path)
    elif settings.env == "dev":
        path = ensure_key_file(settings.data_dir / DEV_KEY_FILE)
        keys, source = parse_keys(path.read_text(), str(path)), str(path)
    else:
        raise EncryptionConfigError(
            "Workflow payloads are encrypted, and no key is configured: set TICKLER_ENCRYPTION_KEYS or "
            "TICKLER_ENCRYPTION_KEY_FILE (`tickler encryption-key` prints a new entry; "
            "docs/deployment.md), or TICKLER_PAYLOAD_ENCRYPTION=false to store task titles and notes in "
            "clear in Temporal. Against `make run`'s stack, set TICKLER_ENV=dev: it uses that stack's key."
        )
    if not keys:
        raise EncryptionConfigError(f"{source} holds no key")
    return keys


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM under the first of ``keys``; decodes with any of them, chosen by the payload's key id."""

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        super().__init__()
        if not keys:
            raise EncryptionConfigError("an encryption codec needs at least one key")
        self.current = keys[0].kid
        self._ciphers = {key.kid: AESGCM(key.secret) for key in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: self.current.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            # Written in clear (before encryption was on, or by a client without it): as it is.
            return payload
        kid = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key {kid!r}, which is not configured (held: "
                f"{', '.join(self._ciphers)}): add it back to TICKLER_ENCRYPTION_KEYS or the key file"
            )
        data = payload.data
        try:
            if len(data) < NONCE_BYTES + TAG_BYTES:
                raise InvalidTag
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key {kid!r} does not decrypt: it was altered, or the key of that "
                "id is not the one that encrypted it"
            ) from None
        return Payload.FromString(plain)


def data_converter(base: DataConverter, settings: Settings) -> DataConverter:
    """``base`` (its payload converter kept) with the settings' codec, and failure messages and stack
    traces moved into the encoded attributes so that they are encrypted too; ``base`` itself when
    encryption is off."""
    keys = configured_keys(settings)
    if keys is None:
        return base
    return dataclasses.replace(
        base,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
