"""Interop with the Go e5s library v0.2.0 on real SPIRE.

The Go side is e5s's own example programs (examples/basic-server and
examples/basic-client), built by scripts/install-e5s-examples:

- basic-server reads an e5s server config from -config, waits for its SVID,
  and serves GET /healthz ("ok") and GET /time ("Server time: <RFC 3339>")
  over mTLS. It logs "Authenticated request from: <client SPIFFE ID>".
- basic-client reads an e5s client config from -e5s-config and the URL from
  -url, the SERVER_URL variable or server_url in -app-config (a relative
  path, because it rejects absolute ones), sends one GET and prints the body.

The e5s configs are the samples in e5s_configs/ with the socket and
addresses of this lab filled in. The proxy's own keys (server.target,
client.listen_addr) stay in the files that the Go programs read, which checks
that e5s ignores them.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.proxy import free_port, inbound_config, outbound_config, port_open
from harness.spire import read_log_tail
from tests.integration.conftest import CLIENT_ID, SERVER_ID

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-e5s-examples"
SAMPLES = Path(__file__).resolve().parent / "e5s_configs"

GO_CLIENT_ID = "spiffe://example.org/e5s-go-client"

# A cold build of both examples takes under a minute on 2 cores (about 30 s
# measured with an empty Go module and build cache). The margin is for a
# loaded CI machine.
INSTALL_TIMEOUT_SECONDS = 600.0
# basic-server listens only after its first SVID arrives, and e5s waits for
# it up to initial_fetch_timeout (30 s in the samples).
GO_SERVER_STARTUP_SECONDS = 40.0
# One request plus the client's own SVID fetch.
GO_CLIENT_TIMEOUT_SECONDS = 60.0


@pytest.fixture(scope="session")
def e5s_bin() -> Path:
    """The folder with basic-server and basic-client, built on first use.

    A failed build fails the test instead of skipping it, so that CI never
    passes without running the Go side.
    """
    result = subprocess.run(
        [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS
    )
    if result.returncode != 0:
        pytest.fail(
            f"{INSTALL_SCRIPT} exited with code {result.returncode}, so the Go e5s "
            f"examples are missing. stderr:\n{result.stderr}",
            pytrace=False,
        )
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def go_client_agent(lab):
    """An extra agent whose only workload is the Go client, so that it has its own ID."""
    agent = lab.add_agent("node-go")
    lab.register_workload(agent, GO_CLIENT_ID)
    lab.wait_for_svid(agent, GO_CLIENT_ID)
    return agent


def load_sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e5s_proxy.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def http_get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


class GoServer:
    """basic-server running on 127.0.0.1 with its log in a file."""

    def __init__(self, binary: Path, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + GO_SERVER_STARTUP_SECONDS
        while not port_open(port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"basic-server exited with code {self.process.returncode}:\n"
                    f"{read_log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"basic-server did not listen on {port} within "
                    f"{GO_SERVER_STARTUP_SECONDS:.0f} s:\n{read_log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def go_server(lab, e5s_bin, tmp_path):
    """Start basic-server on node-b (SPIFFE ID .../server) and yield it with its port.

    Only the proxy's client ID may connect.
    """
    port = free_port()
    config = load_sample("server.yaml")
    config["spire"]["workload_socket"] = f"unix://{lab.node_b.socket_path}"
    config["server"]["listen_addr"] = f"127.0.0.1:{port}"
    config["server"]["allowed_client_spiffe_id"] = CLIENT_ID
    # The proxy's key; e5s ignores it.
    config["server"]["target"] = "127.0.0.1:8080"
    config_path = write_yaml(tmp_path / "e5s-server.yaml", config)

    server = GoServer(e5s_bin / "basic-server", config_path, tmp_path / "basic-server.log")
    try:
        server.wait_listening(port)
        yield server, port
    finally:
        server.stop()


def run_go_client(
    binary: Path, socket_path: Path, url: str, expected_server_id: str, workdir: Path
) -> subprocess.CompletedProcess:
    """Run basic-client once against url and return the finished process."""
    config = load_sample("client.yaml")
    config["spire"]["workload_socket"] = f"unix://{socket_path}"
    config["client"]["server_url"] = url
    config["client"]["expected_server_spiffe_id"] = expected_server_id
    # The proxy's key; e5s ignores it.
    config["client"]["listen_addr"] = "127.0.0.1:15001"
    e5s_config = write_yaml(workdir / "e5s-client.yaml", config)
    # basic-client loads this file even when -url is given, and only by a
    # relative path, so it runs in workdir.
    write_yaml(workdir / "app-config.yaml", {"server_url": url})
    return subprocess.run(
        [str(binary), "-app-config", "app-config.yaml", "-e5s-config", str(e5s_config)],
        capture_output=True,
        text=True,
        timeout=GO_CLIENT_TIMEOUT_SECONDS,
        cwd=workdir,
        env={**os.environ, "SERVER_URL": ""},
    )


# ---------------------------------------------------------------------------
# (a) e5s-proxy outbound -> Go e5s server


@pytest.mark.spire
def test_outbound_reaches_go_server(lab, go_server, start_proxy):
    server, server_port = go_server
    port = free_port()
    config = outbound_config(lab.node_a.socket_path, port, server_port, expected_server_spiffe_id=SERVER_ID)
    start_proxy("outbound-to-go", config, port)

    status, body = http_get(port, "/time")

    assert status == 200, body
    assert body.startswith("Server time: "), body
    log = server.log_text()
    assert f"Authenticated request from: {CLIENT_ID}" in log, log


@pytest.mark.spire
def test_outbound_go_server_healthz(lab, go_server, start_proxy):
    _, server_port = go_server
    port = free_port()
    config = outbound_config(lab.node_a.socket_path, port, server_port, expected_server_trust_domain="example.org")
    start_proxy("outbound-to-go-td", config, port)

    status, body = http_get(port, "/healthz")

    assert status == 200, body
    assert body == "ok"


@pytest.mark.spire
def test_outbound_rejects_go_server_with_other_id(lab, go_server, start_proxy):
    _, server_port = go_server
    port = free_port()
    expected = "spiffe://example.org/orders"
    config = outbound_config(lab.node_a.socket_path, port, server_port, expected_server_spiffe_id=expected)
    start_proxy("outbound-to-go-wrong-id", config, port)

    status, body = http_get(port, "/time")

    assert status == 502, body
    assert expected in body
    assert SERVER_ID in body


# ---------------------------------------------------------------------------
# (b) Go e5s client -> e5s-proxy inbound -> Go echo app


@pytest.mark.spire
def test_go_client_reaches_app_with_its_id(lab, go_client_agent, e5s_bin, app_port, start_proxy, tmp_path):
    port = free_port()
    config = inbound_config(lab.node_b.socket_path, port, app_port, allowed_client_spiffe_id=GO_CLIENT_ID)
    start_proxy("inbound-from-go", config, port)

    result = run_go_client(
        e5s_bin / "basic-client",
        go_client_agent.socket_path,
        f"https://127.0.0.1:{port}/interop",
        SERVER_ID,
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == "/interop"
    assert report["peer_spiffe_id"] == GO_CLIENT_ID


@pytest.mark.spire
def test_go_client_rejects_proxy_with_other_id(lab, go_client_agent, e5s_bin, app_port, start_proxy, tmp_path):
    port = free_port()
    config = inbound_config(lab.node_b.socket_path, port, app_port, allowed_client_spiffe_id=GO_CLIENT_ID)
    start_proxy("inbound-from-go-wrong-id", config, port)

    result = run_go_client(
        e5s_bin / "basic-client",
        go_client_agent.socket_path,
        f"https://127.0.0.1:{port}/interop",
        "spiffe://example.org/orders",
        tmp_path,
    )

    assert result.returncode == 1, result.stdout
    assert "Request failed" in result.stderr
    assert result.stdout == ""


@pytest.mark.spire
def test_proxy_rejects_go_client_not_allowed(lab, go_client_agent, e5s_bin, app_port, start_proxy, tmp_path):
    port = free_port()
    config = inbound_config(lab.node_b.socket_path, port, app_port, allowed_client_spiffe_id=CLIENT_ID)
    start_proxy("inbound-from-go-not-allowed", config, port)

    result = run_go_client(
        e5s_bin / "basic-client",
        go_client_agent.socket_path,
        f"https://127.0.0.1:{port}/interop",
        SERVER_ID,
        tmp_path,
    )

    assert result.returncode == 1, result.stdout
    assert "Request failed" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------
# (c) e5s config files and `e5s-proxy validate`; no SPIRE needed


def test_e5s_server_config_needs_target(tmp_path):
    result = validate(SAMPLES / "server.yaml")

    assert result.returncode == 1
    assert "server.target must be set" in result.stderr


def test_e5s_server_config_with_target_valid(tmp_path):
    config = load_sample("server.yaml")
    config["server"]["target"] = "127.0.0.1:8080"

    result = validate(write_yaml(tmp_path / "server.yaml", config))

    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert "only spiffe://example.org/client" in result.stdout


def test_e5s_client_config_needs_listen_addr(tmp_path):
    result = validate(SAMPLES / "client.yaml")

    assert result.returncode == 1
    assert "client.listen_addr must be set" in result.stderr


def test_e5s_client_config_with_listen_addr_valid(tmp_path):
    config = load_sample("client.yaml")
    config["client"]["listen_addr"] = "127.0.0.1:15001"

    result = validate(write_yaml(tmp_path / "client.yaml", config))

    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert "only spiffe://example.org/server" in result.stdout


def test_e5s_client_config_needs_server_url(tmp_path):
    # e5s v0.2.0 client files need no server_url, because basic-client takes
    # the URL from elsewhere; the proxy needs it.
    config = load_sample("client.yaml")
    del config["client"]["server_url"]
    config["client"]["listen_addr"] = "127.0.0.1:15001"

    result = validate(write_yaml(tmp_path / "client.yaml", config))

    assert result.returncode == 1
    assert "client.server_url must be set" in result.stderr
