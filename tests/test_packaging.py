"""The wheel, as a user gets it: built with pip from a copy of the checkout, then installed.

A copy (not the checkout itself) is built so that the build's ``build/`` and ``*.egg-info`` never
land in the work tree, and it holds tests/, bench/, examples/ and docs/ so that leaving them out
of the wheel is really checked. pip builds in an isolated environment with the setuptools that
``[build-system] requires`` names, as it does for a user; ``-v`` shows the backend's warnings.
"""

from __future__ import annotations

import email
import email.message
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import mellea_actors

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
DIST_INFO = f"mellea_actors-{VERSION}.dist-info"

#: What the copy of the checkout leaves out: local state, caches and earlier build output.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".ollama-local",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "build",
    "dist",
)


def _run(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Built:
    def __init__(self, wheel: Path, log: str, site: Path) -> None:
        self.wheel = wheel
        self.log = log
        self.site = site  # the wheel installed with ``pip install --target``
        with zipfile.ZipFile(wheel) as archive:
            self.names = set(archive.namelist())
            self.metadata = email.message_from_bytes(archive.read(f"{DIST_INFO}/METADATA"))
            self.entry_points = archive.read(f"{DIST_INFO}/entry_points.txt").decode()
            self.license = archive.read(f"{DIST_INFO}/licenses/LICENSE").decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("packaging")
    src, out, site = base / "src", base / "wheels", base / "site"
    shutil.copytree(ROOT, src, ignore=_NOT_COPIED)
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(src)],
        cwd=base,
        env={"PIP_NO_INPUT": "1"},
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-4000:]
    (wheel,) = out.glob("mellea_actors-*.whl")
    pip_install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    install = _run([*pip_install, "--target", str(site), str(wheel)], cwd=base)
    assert install.returncode == 0, install.stdout + install.stderr
    return Built(wheel, log, site)


@pytest.mark.timeout(600)
def test_the_wheel_builds_without_deprecation_warnings(built: Built) -> None:
    # the backend's own output is in the log (so an absent warning is really absent)
    assert "Running command Building wheel for mellea_actors" in built.log, built.log[-2000:]
    assert "setuptools" in built.log
    offending = [line for line in built.log.splitlines() if "deprecat" in line.lower()]
    assert not offending, "\n".join(offending)
    assert "SetuptoolsDeprecationWarning" not in built.log


def test_the_wheel_holds_the_package_and_nothing_else(built: Built) -> None:
    assert "mellea_actors/py.typed" in built.names
    assert "mellea_actors/__init__.py" in built.names
    assert "mellea_actors/cli.py" in built.names
    assert "mellea_actors/local/__main__.py" in built.names
    # every data file of the package ships too (the live view's page, the py.typed marker)
    data = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "mellea_actors").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data and data <= built.names, sorted(data - built.names)
    tops = {name.split("/", 1)[0] for name in built.names}
    assert tops == {"mellea_actors", DIST_INFO}, tops  # no tests/, bench/, examples/, docs/
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in built.names)


def test_the_license_is_an_spdx_expression_with_its_text(built: Built) -> None:
    assert built.metadata["License-Expression"] == "Apache-2.0"
    assert built.metadata.get_all("License-File") == ["LICENSE"]
    assert built.metadata["License"] is None  # the old free-text field is gone
    assert built.license == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in built.license and "Version 2.0, January 2004" in built.license
    assert "END OF TERMS AND CONDITIONS" in built.license
    # PEP 639: a license expression and a license classifier never go together
    classifiers = built.metadata.get_all("Classifier") or []
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_the_metadata_a_package_index_shows(built: Built) -> None:
    metadata = built.metadata
    assert metadata["Name"] == "mellea_actors"
    assert metadata["Version"] == VERSION == mellea_actors.__version__
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "## Set-up on a fresh machine" in str(metadata.get_payload())  # the README
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {"Typing :: Typed", "Programming Language :: Python :: 3.11"} <= classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Repository", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
    assert urls["Changelog"].endswith("CHANGELOG.md")


def test_the_console_script_is_declared_and_runs(built: Built) -> None:
    lines = [line.strip() for line in built.entry_points.splitlines()]
    assert lines[lines.index("[console_scripts]") + 1] == "mellea-actors = mellea_actors.cli:main"
    script = built.site / "bin" / "mellea-actors"
    assert script.is_file()
    env = {"PYTHONPATH": str(built.site)}  # the installed wheel, before the checkout
    version = _run([str(script), "--version"], cwd=built.site, env=env, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mellea-actors {VERSION}"
    usage = _run([str(script), "--help"], cwd=built.site, env=env, timeout=60)
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("usage: mellea-actors ")
    for command in ("run", "ollama", "top"):
        assert f"    {command} " in usage.stdout, usage.stdout


USER_CODE = """\
import mellea_actors
from mellea_actors.backends import ModelOption

session = mellea_actors.start_session(check=False)
reveal_type(session)
reveal_type(ModelOption.STREAM)
"""


def _mypy_strict_on_user_code(site: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on a user's file, in a folder of its own (no project config)."""
    work.mkdir()
    (work / "user.py").write_text(USER_CODE, encoding="utf-8")
    (work / "mypy.ini").write_text("[mypy]\n", encoding="utf-8")
    mypy = Path(sys.executable).parent / "mypy"
    return _run(
        [str(mypy), "--strict", "--cache-dir", str(work / ".mypy_cache"), "user.py"],
        cwd=work,
        env={"PYTHONPATH": str(site)},
    )


@pytest.mark.timeout(300)
def test_mypy_strict_on_user_code_sees_the_package_types(built: Built, tmp_path: Path) -> None:
    proc = _mypy_strict_on_user_code(built.site, tmp_path / "typed")
    out = proc.stdout + proc.stderr
    assert "import-untyped" not in out and "import-not-found" not in out, out
    assert 'Revealed type is "mellea_actors.stdlib.session.MelleaSession"' in out, out
    assert proc.returncode == 0, out


@pytest.mark.timeout(300)
def test_without_py_typed_mypy_would_report_import_untyped(built: Built, tmp_path: Path) -> None:
    """The control: the check above is sensitive to the marker (and so to this very install)."""
    site = tmp_path / "site"
    shutil.copytree(built.site / "mellea_actors", site / "mellea_actors")
    shutil.copytree(built.site / DIST_INFO, site / DIST_INFO)
    (site / "mellea_actors" / "py.typed").unlink()
    proc = _mypy_strict_on_user_code(site, tmp_path / "untyped")
    assert "[import-untyped]" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1


def test_the_checkout_ships_its_marker_and_license() -> None:
    assert (ROOT / "mellea_actors" / "py.typed").is_file()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert PYPROJECT["project"]["scripts"] == {"mellea-actors": "mellea_actors.cli:main"}
    requires = PYPROJECT["build-system"]["requires"]
    assert requires == ["setuptools>=77"], requires  # PEP 639 metadata needs setuptools 77
