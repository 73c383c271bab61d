"""`Context`: the immutable history a session generates against.

A context is a persistent (immutable) singly linked list: every node holds one item (a
``CBlock``, a ``Component`` or a ``ModelOutputThunk``) and a link to the node it was made
from; the root node holds nothing. ``ctx.add(x)`` never changes ``ctx``; it returns a new node
of the same type (carrying the same configuration, e.g. a chat window) whose previous node is
``ctx``. Two contexts made from the same parent share that parent safely.

The two concrete kinds live here too, below everything that needs them: ``SimpleContext`` (no
history in the view) and ``ChatContext`` (the conversation). They decide what
:meth:`Context.view_for_generation` shows a backend; their Mellea import path is
:mod:`mellea_actors.stdlib.context`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from mellea_actors.core.cblock import CBlock, Component, is_component, is_model_output_thunk
from mellea_actors.errors import InvalidInputError

if TYPE_CHECKING:
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = [
    "EMPTY_SIMPLE_CONTEXT",
    "SIMPLE_CONTEXT_KEEP",
    "ChatContext",
    "Context",
    "ContextItem",
    "ContextTurn",
    "SimpleContext",
]

ContextItem: TypeAlias = "CBlock | Component[Any] | ModelOutputThunk"
"""What one context node holds."""

ContextT = TypeVar("ContextT", bound="Context")


@dataclass(frozen=True)
class ContextTurn:
    """One input/output turn; either side may be ``None`` for a partial turn."""

    model_input: ContextItem | None
    output: ModelOutputThunk | None


def _check_item(data: object) -> None:
    if data is None:
        raise InvalidInputError("cannot add None to a context")
    if not (isinstance(data, CBlock) or is_model_output_thunk(data) or is_component(data)):
        hint = " (wrap text in a CBlock or a Message)" if isinstance(data, str) else ""
        raise InvalidInputError(
            "a context holds CBlocks, Components and ModelOutputThunks, "
            f"got {type(data).__name__}: {data!r}{hint}"
        )


class Context(abc.ABC):
    """The state a session generates against: an immutable linked list of items.

    Subclasses implement :meth:`view_for_generation` and may carry configuration in instance
    attributes set in ``__init__``; :meth:`add` copies that configuration into every new node.

    Attributes:
        is_root_node: True for the empty root node.
        previous_node: the node this one was made from (``None`` for the root).
        node_data: the item this node holds (``None`` for the root).
        is_chat_context: whether this context keeps a multi-turn conversation.
    """

    _previous: Context | None
    _data: ContextItem | None
    _is_root: bool
    _is_chat_context: bool = True

    def __init__(self) -> None:
        """Create an empty (root) context."""
        self._previous = None
        self._data = None
        self._is_root = True

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_previous(cls: type[ContextT], previous: Context, data: ContextItem) -> ContextT:
        """A new node of type ``cls`` holding ``data`` whose previous node is ``previous``.

        When ``previous`` is a ``cls``, its configuration (instance attributes) is carried over.
        """
        if not isinstance(previous, Context):
            raise InvalidInputError(
                f"previous must be a Context, got {type(previous).__name__}: {previous!r}"
            )
        _check_item(data)
        node = cls.__new__(cls)
        if isinstance(previous, cls):
            node.__dict__.update(previous.__dict__)
        else:
            Context.__init__(node)
        node._previous = previous
        node._data = data
        node._is_root = False
        node._is_chat_context = previous._is_chat_context
        return node

    @classmethod
    def reset_to_new(cls: type[ContextT]) -> ContextT:
        """A new empty root context of this type (default configuration)."""
        return cls()

    def new_instance(self) -> Context:
        """A new empty root context; subclasses with configuration keep it."""
        return self.reset_to_new()

    def add(self, c: ContextItem) -> Context:
        """A new context with ``c`` appended; ``self`` is left unchanged."""
        return type(self).from_previous(self, c)

    # -- node access ----------------------------------------------------------------------

    @property
    def is_root_node(self) -> bool:
        """Whether this is the empty root node."""
        return self._is_root

    @property
    def previous_node(self) -> Context | None:
        """The node this one was made from (``None`` for the root)."""
        return self._previous

    @property
    def node_data(self) -> ContextItem | None:
        """The item this node holds (``None`` for the root)."""
        return self._data

    @property
    def is_chat_context(self) -> bool:
        """Whether this context keeps a multi-turn conversation."""
        return self._is_chat_context

    # -- queries --------------------------------------------------------------------------

    def as_list(self, last_n_components: int | None = None) -> list[ContextItem]:
        """The items from oldest to newest; only the newest ``last_n_components`` if given."""
        if last_n_components is not None and (
            isinstance(last_n_components, bool)
            or not isinstance(last_n_components, int)
            or last_n_components < 0
        ):
            raise InvalidInputError(
                f"last_n_components must be a non-negative int or None, got {last_n_components!r}"
            )
        items: list[ContextItem] = []
        node: Context = self
        while not node.is_root_node and (
            last_n_components is None or len(items) < last_n_components
        ):
            items.append(cast("ContextItem", node.node_data))
            previous = node.previous_node
            if previous is None:  # pragma: no cover - only a malformed subclass gets here
                raise RuntimeError("malformed context: a non-root node has no previous node")
            node = previous
        items.reverse()
        return items

    def actions_for_available_tools(self) -> list[ContextItem] | None:
        """The items whose tools a generation may use (by default its view)."""
        return self.view_for_generation()

    def last_output(self, check_last_n_components: int = 3) -> ModelOutputThunk | None:
        """The newest ``ModelOutputThunk`` among the last ``check_last_n_components`` items."""
        for item in reversed(self.as_list(last_n_components=check_last_n_components)):
            if is_model_output_thunk(item):
                return cast("ModelOutputThunk", item)
        return None

    def last_turn(self) -> ContextTurn | None:
        """The last input/output turn (partial if the newest item is an input), or ``None``."""
        history = self.as_list(last_n_components=2)
        if not history:
            return None
        last = history[-1]
        if is_model_output_thunk(last):
            output = cast("ModelOutputThunk", last)
            return ContextTurn(history[-2] if len(history) == 2 else None, output)
        return ContextTurn(last, None)

    @abc.abstractmethod
    def view_for_generation(self) -> list[ContextItem] | None:
        """The items (oldest first) a backend renders before the action; ``None`` if impossible."""

    def __repr__(self) -> str:
        n = len(self.as_list())
        return f"{type(self).__name__}(items={n})"


#: How many of its newest items a :class:`SimpleContext` keeps: what ``last_output()`` (its
#: default looks at 3) and ``last_turn()`` (2) read. Older items are dropped.
SIMPLE_CONTEXT_KEEP = 3


class SimpleContext(Context):
    """Each interaction is an independent turn: generation sees no history.

    It keeps only its newest :data:`SIMPLE_CONTEXT_KEEP` items (so ``last_output()`` and
    ``last_turn()`` work) and drops the rest: a session that runs for days on a SimpleContext
    must not hold every request it ever made. :meth:`view_for_generation` is always empty.
    """

    _is_chat_context = False

    def add(self, c: ContextItem) -> SimpleContext:
        """A new ``SimpleContext`` with ``c`` appended (and the oldest item dropped when it
        already held :data:`SIMPLE_CONTEXT_KEEP`)."""
        if type(self) is not SimpleContext or not self.__dict__.keys() <= _PLAIN_NODE:
            # configuration (a subclass's, or attributes set on a node) is copied
            kept = self.as_list(last_n_components=SIMPLE_CONTEXT_KEEP)
            if len(kept) < SIMPLE_CONTEXT_KEEP:
                return SimpleContext.from_previous(self, c)
            node: SimpleContext = SimpleContext()
            for item in kept[1:]:
                node = SimpleContext.from_previous(node, item)
            return SimpleContext.from_previous(node, c)
        # Every request adds twice (its action, then its thunk), so this is on each call's
        # path: the kept items were checked when they were added, and a plain SimpleContext
        # has no configuration to copy — the nodes are linked directly.
        _check_item(c)
        newest: list[ContextItem | None] = []  # newest first
        node = self
        while not node._is_root and len(newest) < SIMPLE_CONTEXT_KEEP:
            newest.append(node._data)
            node = cast("SimpleContext", node._previous)
        if len(newest) < SIMPLE_CONTEXT_KEEP:
            return _simple_node(self, c)
        chain = _SIMPLE_ROOT
        for item in reversed(newest[:-1]):
            chain = _simple_node(chain, item)
        return _simple_node(chain, c)

    def view_for_generation(self) -> list[ContextItem]:
        """Always ``[]``: no prior turn is sent to the model."""
        return []


#: The attributes of a node without configuration (``_is_chat_context`` is the class's).
_PLAIN_NODE = frozenset({"_previous", "_data", "_is_root", "_is_chat_context"})


def _simple_node(previous: SimpleContext, data: ContextItem | None) -> SimpleContext:
    node = object.__new__(SimpleContext)
    node._previous = previous
    node._data = data
    node._is_root = False
    return node


#: The empty root that :meth:`SimpleContext.add` rebuilds its kept items on (immutable, like
#: every node: sharing it changes nothing a context shows).
_SIMPLE_ROOT = SimpleContext()
EMPTY_SIMPLE_CONTEXT = _SIMPLE_ROOT
"""An empty :class:`SimpleContext`, shared (contexts are immutable)."""


def _is_system_message(item: object) -> bool:
    return getattr(item, "role", None) == "system"


class ChatContext(Context):
    """A conversation: generation sees every earlier turn, oldest first.

    Args:
        window_size: when set, the view keeps the leading system message(s) plus the newest
            ``window_size`` other items (Mellea 0.7.0's ``WindowCompactor`` default pinning).
            The window applies to the view only; :meth:`as_list` keeps the whole history.
        model_id: the model this conversation is bound to (informational).
    """

    _is_chat_context = True

    def __init__(self, window_size: int | None = None, *, model_id: str | None = None) -> None:
        super().__init__()
        if window_size is not None and (
            isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 0
        ):
            raise InvalidInputError(
                f"window_size must be a non-negative int or None, got {window_size!r}"
            )
        self._window_size = window_size
        self._model_id = model_id

    @property
    def window_size(self) -> int | None:
        """How many non-system items the view keeps (``None``: all)."""
        return self._window_size

    @property
    def model_id(self) -> str | None:
        """The model this conversation is bound to, if any."""
        return self._model_id

    def new_instance(self) -> ChatContext:
        """A new empty ``ChatContext`` with the same window and model."""
        return ChatContext(self._window_size, model_id=self._model_id)

    def add(self, c: ContextItem) -> ChatContext:
        """A new ``ChatContext`` (same configuration) with ``c`` appended."""
        return ChatContext.from_previous(self, c)

    def view_for_generation(self) -> list[ContextItem]:
        """The conversation so far, oldest first, windowed by ``window_size``."""
        items = self.as_list()
        if self._window_size is None:
            return items
        pinned = 0
        while pinned < len(items) and _is_system_message(items[pinned]):
            pinned += 1
        body = items[pinned:]
        kept = body[-self._window_size :] if self._window_size > 0 else []
        return items[:pinned] + kept
