"""A tiny HTTP/1.1 client for curl-like loops: one new connection per request, like curl."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """What one request got back; ``status`` 0 means the connection itself failed."""

    status: int
    body: str
    headers: dict[str, str]

    @property
    def served_by(self) -> str:
        """The stand-in that answered (``x-served-by``), or "" for Envoy's own replies."""
        return self.headers.get("x-served-by", "")


async def get(
    address: tuple[str, int],
    host: str,
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    method: str = "GET",
    body: bytes = b"",
) -> Reply:
    """Send ``GET path`` (or ``method``, with ``body``) with ``Host: host`` to ``address``
    and read the whole reply."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body or method != "GET":
        extra += f"content-length: {len(body)}\r\n"
    request = (
        f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: extproc-demo\r\n"
        f"{extra}connection: close\r\n\r\n"
    )
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(*address)
            try:
                writer.write(request.encode() + body)
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return Reply(0, f"connection failed: {exc}", {})
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2) if lines and lines[0] else []
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return Reply(status, body.decode("utf-8", "replace"), fields)
