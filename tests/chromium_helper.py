"""A real headless Chromium for the live view's tests (Debian package ``chromium``).

:func:`ensure_chromium` finds the binary, or installs it with ``apt-get install -y chromium``
(as root, or through ``sudo -n`` when that works), and fails the test with a message that says
what to do when it cannot. :func:`dump_dom` and :func:`screenshot` run it once each, bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser")
#: Bound of one Chromium run (it is slow to start on a busy 2-core machine).
RUN_TIMEOUT = 120.0


def _find() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        [*prefix, "apt-get", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )


def ensure_chromium() -> str:
    """The path of a Chromium binary; installs the Debian package when it is missing."""
    found = _find()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail("Chromium is not installed and there is no apt-get: install 'chromium'")
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif (
        shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0
    ):
        prefix = ["sudo", "-n"]
    else:
        pytest.fail(
            "Chromium is not installed, and installing it needs root: run "
            "'apt-get install -y chromium' (as root) and run the tests again"
        )
    proc = _apt(prefix, "install", "-y", "--no-install-recommends", "chromium")
    if proc.returncode != 0:  # the package lists may be missing or stale: update, then retry
        _apt(prefix, "update")
        proc = _apt(prefix, "install", "-y", "--no-install-recommends", "chromium")
    found = _find()
    if proc.returncode != 0 or not found:
        pytest.fail(
            "could not install Chromium with 'apt-get install -y chromium' "
            f"(exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}"
        )
    return found


def _run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="mellea-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",  # root in a container: the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--no-proxy-server",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    if proc.returncode != 0:
        raise AssertionError(f"chromium failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return proc


def dump_dom(binary: str, url: str, *, budget_ms: int = 3000) -> str:
    """The DOM of ``url`` after ``budget_ms`` of the page's (virtual) time, as HTML."""
    return _run(binary, f"--virtual-time-budget={budget_ms}", "--dump-dom", url).stdout


def screenshot(
    binary: str,
    url: str,
    path: Path,
    *,
    size: tuple[int, int] = (1440, 1200),
    budget_ms: int = 3000,
) -> Path:
    """A PNG of ``url`` after ``budget_ms`` of the page's (virtual) time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(
        binary,
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={size[0]},{size[1]}",
        "--hide-scrollbars",
        f"--screenshot={path}",
        url,
    )
    return path
