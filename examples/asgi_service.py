"""An ASGI service (Starlette, run by uvicorn) that streams a generation to its HTTP client.

::

    pip install starlette uvicorn
    python examples/asgi_service.py [PORT]          # default: $PORT, else 8000
    curl -N 'http://127.0.0.1:8000/haiku?topic=the+sea'

``GET /haiku?topic=…`` starts ``await m.ainstruct(…, model_options={ModelOption.STREAM: True})``
and sends every delta of ``async for delta in mot`` to the client as soon as it arrives (a
``StreamingResponse``, chunked). ``GET /health`` answers ``ok``. One session serves every
request: it is started in the app's lifespan, against the Ollama that ``start_session()``
resolves (``OLLAMA_HOST``, else the default host, else the embedded local one; the model from
``MELLEA_ACTORS_MODEL``), and closed at shutdown, which cancels whatever still runs.

A client that leaves stops the generation: when the HTTP client disconnects, Starlette cancels
the task that streams the body; the cancel reaches the ``async for`` inside the body, which
leaves the loop early, and leaving an ``async for`` over a thunk before its end cancels the
generation — its HTTP stream to Ollama is closed, so Ollama stops computing. No disconnect
watcher, no ``try``/``finally``: the loop owns the consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, MelleaSession]]:
    m = await asyncio.to_thread(start_session)  # may look for (or start) Ollama: off the loop
    async with m:  # leaving it at shutdown cancels running generations, stops the actors
        yield {"session": m}


async def haiku(request: Request) -> StreamingResponse:
    m: MelleaSession = request.state.session
    topic = request.query_params.get("topic", "the sea")

    async def deltas() -> AsyncIterator[str]:
        # Started by the streaming task itself: a client gone before the body starts costs nothing.
        mot = await m.ainstruct(
            f"Write a haiku about {topic}.", model_options={ModelOption.STREAM: True}
        )
        async for delta in mot:  # the client leaving cancels this task, hence the generation
            yield delta

    return StreamingResponse(deltas(), media_type="text/plain; charset=utf-8")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[Route("/haiku", haiku), Route("/health", health)],
    lifespan=lifespan,
)


if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8000"))
    uvicorn.run(app, host="127.0.0.1", port=port)
