"""A built wheel gives both entry points: ``e5s-proxy`` and the twistd plugin.

The ``wheel_venv`` fixture is in tests/conftest.py.
"""

from __future__ import annotations

import subprocess

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
