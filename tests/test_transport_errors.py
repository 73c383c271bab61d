"""The transport's error mapping, as one table: what the client raised → what we raise.

Each row builds a real instance of what the ``ollama`` client or httpx raises (no mock) and
checks the class from :mod:`mellea_actors.errors`, that the message names the host (and the
model, for the errors that are about it), ``status_code`` and ``transient``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import ollama
import pytest

from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    CircuitOpenError,
    ModelNotFoundError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.transport.ollama_http import map_error

HOST = "http://ollama.example:11434"
MODEL = "smollm2:135m"


@dataclass(frozen=True)
class Row:
    raised: Callable[[], BaseException]
    expected: type[BackendError]
    transient: bool
    status_code: int | None = None  # BackendResponseError only
    names_model: bool = False  # the message names the model
    says: str = ""  # a piece of the original message the mapped one must keep


TABLE = {
    "httpx.ConnectError": Row(
        lambda: httpx.ConnectError("[Errno 111] Connection refused"),
        BackendUnavailableError,
        transient=True,
        says="Connection refused",
    ),
    "httpx.ConnectTimeout": Row(
        lambda: httpx.ConnectTimeout("timed out"), BackendUnavailableError, transient=True
    ),
    "ConnectionRefusedError": Row(
        lambda: ConnectionRefusedError(111, "Connection refused"),
        BackendUnavailableError,
        transient=True,
    ),
    "ConnectionError": Row(
        lambda: ConnectionError("Failed to connect to Ollama"),
        BackendUnavailableError,
        transient=True,
        says="Failed to connect",
    ),
    "ResponseError 404 model not found": Row(
        lambda: ollama.ResponseError("model 'x' not found", 404),
        ModelNotFoundError,
        transient=False,
        names_model=True,
        says="model 'x' not found",
    ),
    "ResponseError 500": Row(
        lambda: ollama.ResponseError("boom", 500),
        BackendResponseError,
        transient=True,
        status_code=500,
        names_model=True,
        says="boom",
    ),
    "ResponseError 400": Row(
        lambda: ollama.ResponseError("invalid options", 400),
        BackendResponseError,
        transient=False,
        status_code=400,
        names_model=True,
        says="invalid options",
    ),
    "ResponseError -1 (error line mid-stream)": Row(
        lambda: ollama.ResponseError("mid", -1),
        BackendResponseError,
        transient=False,
        status_code=-1,
        names_model=True,
        says="mid",
    ),
    "httpx.RemoteProtocolError": Row(
        lambda: httpx.RemoteProtocolError("peer closed connection without sending complete body"),
        StreamDroppedError,
        transient=True,
        says="peer closed",
    ),
    "httpx.ReadError": Row(lambda: httpx.ReadError(""), StreamDroppedError, transient=True),
    "ConnectionResetError": Row(
        lambda: ConnectionResetError(104, "Connection reset by peer"),
        StreamDroppedError,
        transient=True,
    ),
    "httpx.WriteError": Row(
        lambda: httpx.WriteError("broken pipe"), StreamDroppedError, transient=True
    ),
    "httpx.ReadTimeout": Row(
        lambda: httpx.ReadTimeout("read timed out"),
        StreamTimeoutError,
        transient=False,
        says="read timed out",
    ),
    "RuntimeError": Row(
        lambda: RuntimeError("something else"), BackendError, transient=False, says="something"
    ),
}


@pytest.mark.parametrize("row", list(TABLE.values()), ids=list(TABLE))
def test_map_error(row: Row) -> None:
    original = row.raised()
    mapped = map_error(original, host=HOST, model=MODEL)

    assert type(mapped) is row.expected, f"{original!r} → {type(mapped).__name__}"
    assert HOST in str(mapped), f"the message does not name the host: {mapped}"
    if row.names_model:
        assert MODEL in str(mapped), f"the message does not name the model: {mapped}"
    if row.says:
        assert row.says in str(mapped), f"the original's message was lost: {mapped}"
    assert str(mapped).strip(), "an empty message"
    assert mapped.host == HOST and mapped.model == MODEL
    assert mapped.transient is row.transient
    if row.status_code is not None:
        assert isinstance(mapped, BackendResponseError)
        assert mapped.status_code == row.status_code


@pytest.mark.parametrize(
    "original",
    [httpx.ReadError(""), httpx.ConnectError(""), httpx.RemoteProtocolError("")],
    ids=lambda e: type(e).__name__,
)
def test_an_empty_exception_message_still_says_what_happened(original: Exception) -> None:
    mapped = map_error(original, host=HOST, model=MODEL)
    assert type(original).__name__ in str(mapped), str(mapped)


def test_the_model_may_be_unknown() -> None:
    mapped = map_error(ollama.ResponseError("boom", 503), host=HOST, model=None)
    assert type(mapped) is BackendResponseError and mapped.status_code == 503
    assert mapped.model is None and HOST in str(mapped)


@pytest.mark.parametrize(
    "error",
    [
        BackendError("plain", host=HOST),
        BackendUnavailableError("down", host=HOST),
        CircuitOpenError("open", host=HOST),
        ModelNotFoundError("nope", host=HOST, model=MODEL),
        BackendResponseError("bad", status_code=418, host=HOST),
        StreamDroppedError("dropped", host=HOST),
        StreamTimeoutError("stalled", host=HOST),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_backend_error_passes_through_unchanged(error: BackendError) -> None:
    assert map_error(error, host="http://other:1", model="other") is error
    assert error.host == HOST
