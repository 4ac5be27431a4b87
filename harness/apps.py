"""Build and start the Go echo backend (harness/echo_app) for demos and tests.

``build_echo_app`` compiles main.go once per content hash into a cache
folder. ``start_echo_app`` runs it on 127.0.0.1 and returns only once the
port accepts TCP connections. The caller stops the returned process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ECHO_APP_DIR = Path(__file__).resolve().parent / "echo_app"
DEFAULT_CACHE_DIR = Path(
    os.environ.get("E5S_SPIRE_CACHE", Path.home() / ".cache" / "e5s-proxy")
) / "echo-app"
# A cold `go build` of a stdlib-only program takes a few seconds. The margin
# is for a cold Go build cache on a loaded machine.
BUILD_TIMEOUT_SECONDS = 300.0
# The binary listens within milliseconds of starting.
STARTUP_TIMEOUT_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.05
# Hex digits of the SHA-256 of main.go and go.mod in the binary's name.
SOURCE_HASH_LENGTH = 16


def find_go() -> str:
    """Return the path of the go tool, or raise RuntimeError."""
    go_tool = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go_tool, os.X_OK):
        raise RuntimeError("Go is not installed. Install Go 1.22 or later to build the echo app")
    return go_tool


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "main.go"):
        digest.update((ECHO_APP_DIR / name).read_bytes())
    return digest.hexdigest()[:SOURCE_HASH_LENGTH]


def build_echo_app(cache_dir: Path | None = None) -> Path:
    """Build the echo app into ``cache_dir`` unless this source is already built, and return the binary."""
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    binary = cache_dir / f"echo_app-{source_hash()}"
    if os.access(binary, os.X_OK):
        return binary

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename, so that a concurrent build or
    # an interrupted one never leaves a partial binary under the final name.
    descriptor, partial_name = tempfile.mkstemp(prefix=".echo_app-", dir=cache_dir)
    os.close(descriptor)
    command = [find_go(), "build", "-o", partial_name, "."]
    try:
        completed = subprocess.run(
            command,
            cwd=ECHO_APP_DIR,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"command {' '.join(command)} in {ECHO_APP_DIR} exited with code "
                f"{completed.returncode}. stderr:\n{completed.stderr[-4000:]}"
            )
        os.replace(partial_name, binary)
    finally:
        if os.path.exists(partial_name):
            os.unlink(partial_name)
    return binary


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections, or raise RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"echo app exited with code {process.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"echo app did not listen on 127.0.0.1:{port} within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL_SECONDS)


def start_echo_app(
    port: int, *, cache_dir: Path | None = None, log_path: Path | None = None
) -> subprocess.Popen:
    """Start the echo app on 127.0.0.1:``port`` and return it once it accepts connections.

    Its per-request log goes to ``log_path`` when given, else to this process's stderr.
    """
    binary = build_echo_app(cache_dir)
    log_file = open(log_path, "ab") if log_path is not None else None
    try:
        process = subprocess.Popen(
            [str(binary), "-listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file else None,
        )
    finally:
        if log_file is not None:
            log_file.close()
    try:
        wait_for_port(port, process, STARTUP_TIMEOUT_SECONDS)
    except RuntimeError:
        process.kill()
        process.wait()
        raise
    return process
