"""A minimal HTTP/1.1 client on asyncio streams, for the load generator only.

With many requests in flight httpx's pool scans its connections at each step: its CPU made the bench,
not the server, the bottleneck (docs/performance.md, "The load generator"). This one keeps each
connection alive, prebuilds its request bytes and parses only what it needs: Content-Length or chunked
bodies, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class HTTPError(Exception):
    pass


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def build_request(
    method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise HTTPError(f"bad status line {lines[0]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The chunks of a chunked body, as they arrive."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


class Connection:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, base_url: str) -> None:
        self.host, self.port = address(base_url)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        payload = build_request(method, self.host, self.port, path, headers, body)
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            try:
                self.writer.write(payload)
                status, head = await read_head(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection the server closed meanwhile: once more on a fresh one.
                await self.close()
                if attempt == 2:
                    raise
                continue
            if "content-length" in head:
                data = await self.reader.readexactly(int(head["content-length"]))
            elif head.get("transfer-encoding", "").lower() == "chunked":
                data = b"".join([c async for c in chunks(self.reader)])
            else:
                data = await self.reader.read()
                await self.close()
            if head.get("connection", "").lower() == "close":
                await self.close()
            return status, data
        raise HTTPError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def stream_lines(base_url: str, path: str, headers: dict[str, str]) -> AsyncIterator[str]:
    """The lines of a streamed (chunked) response, as they arrive; raises HTTPError on a non-200."""
    host, port = address(base_url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(build_request("GET", host, port, path, headers))
        status, head = await read_head(reader)
        if status != 200:
            raise HTTPError(f"HTTP {status}")
        buffer = ""
        body = chunks(reader) if head.get("transfer-encoding", "").lower() == "chunked" else _raw(reader)
        async for chunk in body:
            buffer += chunk.decode()
            *complete, buffer = buffer.split("\n")
            for line in complete:
                yield line.removesuffix("\r")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


async def _raw(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(65536):
        yield data
