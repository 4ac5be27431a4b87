"""Fixtures shared by the packaging and Dockerfile tests."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory):
    """A fresh virtualenv with e5s-proxy installed from a wheel built from this tree.

    These are the Dockerfile's install steps: ``pip wheel --no-deps``, then
    ``pip install`` of that wheel, which pulls in its dependencies. Returns
    the venv's bin folder.
    """
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True,
        timeout=300,
    )
    wheel = next((work / "dist").glob("e5s_proxy-*.whl"))
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)
    return work / "venv" / "bin"
