"""A built wheel gives both entry points: ``e5s-proxy`` and the twistd plugin."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh virtualenv with e5s-proxy installed from a wheel built from this tree."""
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


def test_wheel_contains_twistd_plugin(wheel_venv):
    listing = subprocess.run(
        [str(wheel_venv / "python"), "-m", "pip", "show", "--files", "e5s-proxy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "twisted/plugins/e5s_proxy_plugin.py" in listing


def test_wheel_console_script_runs(wheel_venv):
    result = subprocess.run([str(wheel_venv / "e5s-proxy"), "version"], capture_output=True, text=True, cwd="/")
    assert result.stdout.startswith("e5s-proxy ")


def test_wheel_twistd_lists_plugin(wheel_venv):
    result = subprocess.run([str(wheel_venv / "twistd"), "--help"], capture_output=True, text=True, cwd="/")
    assert "e5s-proxy" in result.stdout


def test_wheel_twistd_plugin_parses_options(wheel_venv):
    result = subprocess.run(
        [str(wheel_venv / "twistd"), "-n", "e5s-proxy", "--help"], capture_output=True, text=True, cwd="/"
    )
    assert "--config" in result.stdout
