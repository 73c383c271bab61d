"""The exception tree of mellea_actors.

Every error the library raises on purpose is a :class:`MelleaActorsError`. Errors caused by a
backend keep the original exception (from the ``ollama`` client or ``httpx``) as ``__cause__``.

::

    MelleaActorsError
    ├── InvalidInputError (also ValueError)   bad argument, option value, alias, verdict …
    ├── BackendError                          anything that went wrong talking to Ollama
    │   ├── BackendUnavailableError (also ConnectionError)   the host did not answer
    │   │   └── CircuitOpenError              failing fast: the host's circuit breaker is open
    │   ├── ModelNotFoundError                the host answered; it does not have the model
    │   ├── BackendResponseError              HTTP 4xx/5xx, or an ``{"error": …}`` line mid-stream
    │   ├── ProtocolMismatchError             the host answered, but not in Ollama's protocol
    │   ├── QueueTimeoutError                 no free slot to the host within queue_timeout
    │   ├── StreamDroppedError                the connection closed before the final object
    │   └── StreamTimeoutError                nothing arrived for ``STREAM_TIMEOUT`` seconds
    ├── ThunkError
    │   ├── SingleReaderError (also RuntimeError)   a second reader while another one waits
    │   └── GenerationCancelledError          waiting for a value that a cancel made final
    ├── ValidatorError                        a validator gave no verdict (streaming validation)
    │   ├── ValidatorTimeoutError (also TimeoutError)   no verdict within validator_timeout
    │   └── InvalidVerdictError (also InvalidInputError)  answered with a non-verdict
    ├── RuntimeClosedError (also RuntimeError)      the session / runtime was closed
    └── AskTimeoutError (also TimeoutError)         a blocking call passed its timeout

Backend errors mark whether they are *transient* (worth a restart before any text was
delivered: refused or dropped connections, HTTP 5xx) in :attr:`BackendError.transient`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AskTimeoutError",
    "BackendError",
    "BackendResponseError",
    "BackendUnavailableError",
    "CircuitOpenError",
    "GenerationCancelledError",
    "InvalidInputError",
    "InvalidVerdictError",
    "MelleaActorsError",
    "ModelNotFoundError",
    "ProtocolMismatchError",
    "QueueTimeoutError",
    "RuntimeClosedError",
    "SingleReaderError",
    "StreamDroppedError",
    "StreamTimeoutError",
    "ThunkError",
    "ValidatorError",
    "ValidatorTimeoutError",
]


class MelleaActorsError(Exception):
    """Base class of every error raised on purpose by mellea_actors.

    Every subclass pickles with its attributes (``host``, ``model``, ``status_code`` …), also
    those whose ``__init__`` takes keyword-only arguments: the Ray engine sends them across
    processes. (``__cause__`` and the traceback do not cross, as for any pickled exception.)
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class InvalidInputError(MelleaActorsError, ValueError):
    """An argument, option value, alias or verdict is not acceptable; raised before any request."""


class BackendError(MelleaActorsError):
    """Talking to the Ollama server failed.

    Attributes:
        host: the Ollama base URL the request went to.
        model: the model asked for, when known.
        transient: True when retrying the same request may succeed (connection refused or
            dropped, HTTP 5xx); the generation supervisor only restarts transient failures.
    """

    transient: bool = False

    def __init__(self, message: str, *, host: str | None = None, model: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.model = model


class BackendUnavailableError(BackendError, ConnectionError):
    """The Ollama host could not be reached (connection refused, unresolvable, connect timeout).

    Also a builtin ``ConnectionError``, which is what Mellea raises there (SPEC §2).
    """

    transient = True


class CircuitOpenError(BackendUnavailableError):
    """The circuit breaker of this host is open: recent connections failed, so we fail fast."""

    transient = False


class ModelNotFoundError(BackendError):
    """The host answered but has no such model (``ollama list`` does not show it)."""


class BackendResponseError(BackendError):
    """The server answered with an error: HTTP 4xx/5xx, or an ``{"error": …}`` line mid-stream.

    ``status_code`` is the HTTP status, or -1 for an error line inside a 200 stream.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        host: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message, host=host, model=model)
        self.status_code = status_code

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.status_code >= 500


class ProtocolMismatchError(BackendError):
    """The host answered HTTP 200, but not with Ollama's NDJSON (e.g. an HTML page, or a proxy).

    The message names the host and shows the first bytes of what came back.
    """


class QueueTimeoutError(BackendError):
    """The request waited ``queue_timeout`` seconds for one of the host's ``max_in_flight``
    slots and got none (nothing was sent)."""


class StreamDroppedError(BackendError):
    """The connection closed (or broke) before Ollama sent its final ``done`` chunk."""

    transient = True


class StreamTimeoutError(BackendError):
    """No chunk arrived within the stream timeout (``ModelOption.STREAM_TIMEOUT``)."""


class ThunkError(MelleaActorsError):
    """Misuse of a thunk (a pending model output)."""


class SingleReaderError(ThunkError, RuntimeError):
    """A second reader of a single-reader stream: ``astream()`` of a thunk while another reader
    waits on it, or a second iteration of ``events()``/``astream()`` of a streaming result."""


class GenerationCancelledError(ThunkError):
    """A cancelled generation has no value to offer here (e.g. parsing structured output)."""


class ValidatorError(MelleaActorsError):
    """A validator gave no verdict: its check raised, answered with a non-verdict, or timed out.

    Attributes:
        validator: the validator actor's id.
        chunk_index: the chunk being judged, or None for the final validation.
    """

    validator: str | None = None
    chunk_index: int | None = None


class ValidatorTimeoutError(ValidatorError, TimeoutError):
    """A validator did not answer within its deadline (``validator_timeout``)."""


class InvalidVerdictError(ValidatorError, InvalidInputError):
    """A check answered with something that is not a verdict (also a ``ValueError``)."""


class RuntimeClosedError(MelleaActorsError, RuntimeError):
    """The session or actor runtime was closed; no new work is accepted."""


class AskTimeoutError(MelleaActorsError, TimeoutError):
    """A blocking call did not get its answer within its timeout."""


def _rebuild(cls: type[MelleaActorsError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Unpickle an error without calling its ``__init__`` (see :class:`MelleaActorsError`)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error
