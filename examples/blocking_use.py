"""mellea_actors from plain code: no ``async``, no event loop, every blocking call bounded.

Run with ``python examples/blocking_use.py`` (host and model as ``start_session`` resolves them:
``OLLAMA_HOST``, ``MELLEA_ACTORS_MODEL`` …). Every call below works from any plain thread.
"""

from __future__ import annotations

from typing import cast

import pykka

import mellea_actors
from mellea_actors.backends import ModelOption
from mellea_actors.errors import AskTimeoutError
from mellea_actors.runtime.messages import AwaitOutcome, CancelGeneration, ThunkOutcome

STREAM = {ModelOption.STREAM: True}


def main() -> None:
    with mellea_actors.start_session() as m:  # closing it cancels whatever still runs
        # 1. submit returns at once with an uncomputed thunk; wait() blocks, with a timeout.
        thunk = m.submit("Name three colours.", model_options={ModelOption.MAX_NEW_TOKENS: 32})
        try:
            print("answer:", thunk.wait(timeout=60))
        except AskTimeoutError:
            print("no answer within 60 s (the generation goes on)")

        # 2. iterate the chunks as they arrive (timeout = the longest wait for new text).
        story = m.submit("Tell a very short story.", model_options=STREAM)
        print("story: ", end="")
        for chunk in story.iter_chunks(timeout=60):
            print(chunk, end="", flush=True)
        print()

        # 3. cancel: leaving iter_chunks early cancels; cancel_sync() cancels from anywhere.
        long_one = m.submit("Write a long essay about rivers.", model_options=STREAM)
        for chunk in long_one.iter_chunks(timeout=60):
            print("first chunk of the essay:", repr(chunk))
            break  # this asks for the cancel; the HTTP stream to Ollama closes right after
        long_one.cancel_sync(timeout=10)  # wait (bounded) until the thunk has really ended
        print("essay status:", long_one.status, "- partial text:", repr(long_one.value))

        another = m.submit("Write a long essay about mountains.", model_options=STREAM)
        another.cancel_sync("changed my mind", timeout=10)
        print("second essay status:", another.status)

        # 4. talk to the runtime's actors directly: pykka refs, ask/tell with timeouts.
        thunk = m.submit("Say hello.", model_options={ModelOption.MAX_NEW_TOKENS: 16})
        ref = thunk.actor_ref
        assert ref is not None
        try:
            outcome = cast(ThunkOutcome, ref.ask(AwaitOutcome(), timeout=60))
            print("outcome:", outcome.status.value, repr(outcome.text))
        except pykka.Timeout:
            print("the thunk did not answer within 60 s")
        except pykka.ActorDeadError:  # it had already ended (and stopped): read the thunk
            print("outcome:", thunk.status, repr(thunk.value))

        # the generation supervisor takes CancelGeneration by tell (fire and forget) or ask
        # (the reply says whether that generation was still running).
        last = m.submit("Count to one hundred.", model_options=STREAM)
        rid = last.request_id
        assert rid is not None
        was_running = m.system.supervisor.ask(CancelGeneration(rid, "demo"), timeout=5)
        print("cancel via the supervisor; was it running?", was_running)
        last.cancel_sync(timeout=10)  # no-op if already over; waits until it has ended
        print("last status:", last.status)

        # 5. what happened, and why: the supervision log and the live actor tree.
        for record in m.system.log.events(event="generation_cancelled"):
            print("cancelled:", record["thunk"], "-", record["reason"])
        print("live thunks:", m.system.live_thunks())


if __name__ == "__main__":
    main()
