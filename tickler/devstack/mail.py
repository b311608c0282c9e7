"""The local SMTP server of `tickler run` and the tests (issue 18): aiosmtpd, in a thread of the process
that starts it; every message it takes is written as an `.eml` file, to be opened in any mail reader."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MailDrop:
    """aiosmtpd's handler: each message accepted becomes ``<time>-<random>.eml`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.eml"
        (self.directory / name).write_bytes(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


def start_mail(directory: Path, port: int, host: str = "127.0.0.1") -> Controller:
    """An SMTP server on ``host:port`` writing what it takes into ``directory``; ``.stop()`` ends it."""
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(MailDrop(directory), hostname=host, port=port)
    controller.start()
    return controller
