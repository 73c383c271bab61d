"""``python -m mellea_actors …``: the ``mellea-actors`` command line (see :mod:`mellea_actors.cli`).

``run PROMPT`` (generate, then show the actor tree and the supervision log), ``ollama install`` /
``ollama serve`` (the project's own local Ollama), ``top URL`` (a live view over HTTP of a process
that called ``session.system.serve(...)``) and ``--version``. In-process inspection needs no
command line: ``session.system.tree()`` (the live actor tree) and
``session.system.log.events(thunk=…, actor=…, event=…)`` (the supervision log).
"""

from __future__ import annotations

import sys

from mellea_actors.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m mellea_actors"))
