"""``python -m mellea_actors run PROMPT …``: see :mod:`mellea_actors.cli`.

In-process inspection needs no command line: ``session.system.tree()`` (the live actor tree) and
``session.system.log.events(thunk=…, actor=…, event=…)`` (the supervision log).
"""

from __future__ import annotations

import sys

from mellea_actors.cli import main

if __name__ == "__main__":
    sys.exit(main())
