"""Runs e5s-proxy as a real process for the demo and the integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

# A proxy with a live agent starts in about a second; the margin covers a
# loaded 2-core CI machine and the agent's first sync.
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ProxyProcess:
    """``e5s-proxy run --config FILE`` with its log in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: dict,
        *,
        extra_args: tuple[str, ...] = (),
        environment: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.config = config
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.extra_args = extra_args
        self.environment = environment
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "e5s_proxy.cli", "run", "--config", str(self.config_path), *self.extra_args]

    def start(self, wait_ports: tuple[int, ...] = ()) -> ProxyProcess:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(self.log_path, "ab") as log:
            environment = None if self.environment is None else {**os.environ, **self.environment}
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        for port in wait_ports:
            while not port_open(port):
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not listen on {port} in time:\n{self.log_text()}")
                time.sleep(0.1)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def inbound_config(socket_path: Path, listen_port: int, app_port: int, **server: object) -> dict:
    section = {"listen_addr": f"127.0.0.1:{listen_port}", "target": f"127.0.0.1:{app_port}"}
    section.update(server)
    if "allowed_client_spiffe_id" not in section and "allowed_client_trust_domain" not in section:
        section["allowed_client_trust_domain"] = "example.org"
    return {
        "version": 1,
        "spire": {"workload_socket": f"unix://{socket_path}", "initial_fetch_timeout": "30s"},
        "server": section,
    }


def outbound_config(socket_path: Path, listen_port: int, server_port: int, **client: object) -> dict:
    section = {"listen_addr": f"127.0.0.1:{listen_port}", "server_url": f"https://127.0.0.1:{server_port}"}
    section.update(client)
    if "expected_server_spiffe_id" not in section and "expected_server_trust_domain" not in section:
        section["expected_server_trust_domain"] = "example.org"
    return {
        "version": 1,
        "spire": {"workload_socket": f"unix://{socket_path}", "initial_fetch_timeout": "30s"},
        "client": section,
    }
