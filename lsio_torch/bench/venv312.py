"""Peers that need a newer Python than ours (insitubatch, the icechunk 2 line): a venv of
their own, made with a Python >= 3.12 found on this machine (pyenv's included)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def python_312() -> str | None:
    """A Python >= 3.12 on this machine (pyenv's included), or None."""
    candidates = [shutil.which(f"python3.{m}") for m in (13, 12)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        for version in sorted(pyenv.iterdir(), reverse=True):
            candidates.append(str(version / "bin" / "python"))
    for python in candidates:
        if not python or not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            return python
    return None


def venv_with(venv: Path, packages: Sequence[str]) -> tuple[str | None, str]:
    """The Python of ``venv`` with ``packages`` installed (made once), or None and why not."""
    python = venv / "bin" / "python"
    if python.exists():
        return str(python), ""
    base = python_312()
    if base is None:
        return None, "missing: no Python >= 3.12 on this machine"
    made = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode == 0:
        made = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages],
            capture_output=True,
            text=True,
        )
    if made.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        what = " ".join(packages)
        return None, f"missing: installing {what} failed: {made.stderr.strip()[-300:]}"
    return str(python), ""
