"""A pool of two real local Ollama instances: stop one while 20 generations run (SPEC §11).

The first instance is the suite's (``local_ollama``); the second is started here on another
free loopback port from the same installation and models folder, and stopped mid-run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import BackendError

from .conftest import E2E_OPTIONS, LOCAL_MODEL

pytestmark = pytest.mark.ollama


@pytest.fixture
def second_ollama(local_ollama: Any) -> Iterator[Any]:
    from mellea_actors.local.server import LocalOllama

    server = LocalOllama(model=LOCAL_MODEL)
    server.start(timeout=180)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def test_stopping_one_of_two_hosts_mid_run_the_rest_finish_on_the_other(
    local_ollama: Any, second_ollama: Any
) -> None:
    survivor, victim = str(local_ollama.base_url), str(second_ollama.base_url)
    options = {**E2E_OPTIONS, "num_predict": 48, ModelOption.STREAM: True}
    with start_session(
        model_id=LOCAL_MODEL, base_url=[survivor, victim], model_options=options
    ) as m:
        mots = [m.submit(f"Count from 1 to 20, item {i}.") for i in range(20)]
        started = m.system.log.wait_for("first_chunk", count=2, timeout=120)
        assert started
        second_ollama.stop()
        completed, failed = 0, 0
        for mot in mots:
            try:
                assert mot.wait(timeout=180)
                completed += 1
            except BackendError as exc:  # only those that had text on the stopped host
                failed += 1
                assert mot.partial_value, f"failed without text: {exc!r}"
                assert victim in str(exc)
        assert completed + failed == 20 and completed >= 10
        after = [m.submit(f"After the stop, item {i}.") for i in range(4)]
        assert all(mot.wait(timeout=120) for mot in after)
        ids = {mot.request_id for mot in after}
        moved = [e for e in m.system.log.events(event="failover") if e["thunk"] in ids]
        assert all(e["from_host"] == victim and e["to_host"] == survivor for e in moved)
