"""Closing sessions and exiting processes: nothing hangs, nothing is left running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.testing import Script, ScriptedOllama

LONG = Script(tokens=[f"t{i} " for i in range(1000)], delay=0.01)


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def test_closing_a_session_cancels_its_generations(scripted: ScriptedOllama) -> None:
    scripted.enqueue(LONG)
    m = start_session(model_id="scripted", base_url=scripted.base_url)
    mot = m._run(m.ainstruct("x", model_options={ModelOption.STREAM: True}))
    scripted.wait_for_requests(1, timeout=5)
    loop_thread = m.system.loop.thread
    m.close()
    assert scripted.wait_for_disconnect(-1, timeout=5).disconnected_at is not None
    assert mot.cancelled and mot.is_computed()
    assert not loop_thread.is_alive()
    events = m.system.log.events(thunk=mot.request_id, event="generation_cancelled")
    assert events and "session closed" in events[0]["reason"]


def test_process_with_a_running_generation_exits_promptly(scripted: ScriptedOllama) -> None:
    scripted.enqueue(LONG)
    code = textwrap.dedent(
        f"""
        import asyncio
        from mellea_actors import start_session
        from mellea_actors.backends import ModelOption

        async def main():
            m = start_session(model_id="scripted", base_url={scripted.base_url!r})
            mot = await m.ainstruct("x", model_options={{ModelOption.STREAM: True}})
            print(await mot.astream(), flush=True)   # generation under way; never closed

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("t0")
    record = scripted.wait_for_disconnect(-1, timeout=5)
    assert record.tokens_sent < 1000  # the exit closed the stream; Ollama did not go on


def test_hundred_sessions_leave_no_threads_or_sockets(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script(tokens=["a", "b"]))
    with start_session(model_id="scripted", base_url=scripted.base_url) as warm:
        warm.instruct("warm up")  # imports, first connections
    threads, sockets = threading.active_count(), open_sockets()
    for i in range(100):
        with start_session(model_id="scripted", base_url=scripted.base_url) as m:
            if i % 10 == 0:
                assert m.instruct("x").value == "ab"
    assert threading.active_count() == threads
    assert open_sockets() <= sockets
