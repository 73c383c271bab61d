"""The floor: the least a Python client on this box spends on a streamed Ollama chat.

A minimal asyncio client (no pooling, no pydantic, no httpx): one raw socket per stream
(``asyncio.open_connection``), HTTP/1.1 with ``Transfer-Encoding: chunked`` decoded by hand,
``json.loads`` per NDJSON line, one task per stream. It knows only the scripted server's answer
shape and is the reference the issue's targets are ratios to. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from common import MODEL


class FloorClient:
    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 11434

    async def stream(self, prompt: str) -> AsyncIterator[dict[str, Any]]:
        """``await`` it, then iterate: the shape of ``ollama.AsyncClient.chat(stream=True)``."""
        return self._objects(prompt)

    async def _objects(self, prompt: str) -> AsyncIterator[dict[str, Any]]:
        """The streamed objects of one ``/api/chat`` call, one fresh connection."""
        body = json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": True}
        ).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                b"POST /api/chat HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (self.host.encode(), self.port, len(body), body)
            )
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"floor client: {status!r}")
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # headers: the server always answers chunked
            pending = b""
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    return
                pending += await reader.readexactly(size + 2)  # the data and its CRLF
                pending = pending[:-2]
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line:
                        yield json.loads(line)
        finally:
            writer.close()

    async def collect(self, prompt: str) -> str:
        parts = [part["message"].get("content", "") async for part in self._objects(prompt)]
        return "".join(parts)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        yield  # no cap: one connection per stream

    async def aclose(self) -> None:
        return None
