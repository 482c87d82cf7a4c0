"""A minimal keep-alive HTTP/1.1 client for the REST load.

httpx spends several times more CPU per request than Envoy does, so with both on two
cores it would measure itself. This client pre-encodes the request and parses only
what a response needs (status, Content-Length or chunked body), which keeps the load
generator cheap while staying pure Python.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

_HEADER_END = b"\r\n\r\n"
_MAX_HEADER_BYTES = 64 * 1024


class HttpError(Exception):
    """The server answered with something this client cannot use."""


def encode_request(
    *, method: str, host: str, path: str, json_body: bytes, headers: Mapping[str, str]
) -> bytes:
    """One complete HTTP/1.1 request, built once and written as is for every call."""
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "Content-Type: application/json\r\n"
        f"Content-Length: {len(json_body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + json_body


class Http1Connection:
    """One TCP connection sending one request at a time, reused across requests."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, limit=_MAX_HEADER_BYTES
            )
        return self._reader, self._writer

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send a pre-encoded request; (status, body). A broken connection is reopened next time."""
        reader, writer = await self._connect()
        try:
            writer.write(raw)
            head = await reader.readuntil(_HEADER_END)
            status, length, chunked, keep_alive = _parse_head(head)
            body = await (_read_chunked(reader) if chunked else reader.readexactly(length))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError):
            await self.close()
            raise
        if not keep_alive:
            await self.close()
        return status, body

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            # The peer may have closed first; nothing is left to release then.
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """(status, content length, chunked?, keep-alive?) from a response's status line and headers."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    length, chunked, keep_alive = 0, False, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            keep_alive = value != "close"
    return int(parts[1]), length, chunked, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected; skip the final CRLF
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
