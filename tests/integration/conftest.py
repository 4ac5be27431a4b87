"""Fixtures that run real SPIRE, the Go echo app and e5s-proxy processes on loopback.

One SPIRE lab serves the whole session: node-a issues the client's SVID,
node-b the server's, node-c an intruder's, all with a 30 s X.509-SVID TTL
so that every test runs across rotations. A second SPIRE server for
other.org issues a foreign client's SVID.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.apps import start_echo_app
from harness.proxy import ProxyProcess, free_port, inbound_config, outbound_config
from harness.spire import SpireAgent, SpireLab, SpireServer, make_workdir

CLIENT_ID = "spiffe://example.org/client"
SERVER_ID = "spiffe://example.org/server"
INTRUDER_ID = "spiffe://example.org/intruder"
FOREIGN_ID = "spiffe://other.org/client"

# Short enough that a one-minute test sees several rotations (SPIRE's agent
# renews at half the TTL), long enough for a loaded 2-core machine.
SVID_TTL_SECONDS = 30


@pytest.fixture(scope="session")
def lab():
    with SpireLab() as lab:
        intruder_agent = lab.add_agent("node-c")
        lab.register_workload(lab.node_a, CLIENT_ID, x509_svid_ttl=SVID_TTL_SECONDS)
        lab.register_workload(lab.node_b, SERVER_ID, x509_svid_ttl=SVID_TTL_SECONDS)
        lab.register_workload(intruder_agent, INTRUDER_ID, x509_svid_ttl=SVID_TTL_SECONDS)
        lab.wait_for_svid(lab.node_a, CLIENT_ID)
        lab.wait_for_svid(lab.node_b, SERVER_ID)
        lab.wait_for_svid(intruder_agent, INTRUDER_ID)
        yield lab


@pytest.fixture(scope="session")
def foreign_agent(lab):
    """An agent of a separate SPIRE server whose trust domain is other.org."""
    server = SpireServer(make_workdir("other-server"), "other.org", lab.bin_dir)
    server.start()
    agent = SpireAgent(make_workdir("other-agent"), server, server.join_token(), lab.bin_dir)
    try:
        agent.start()
        server.create_entry(FOREIGN_ID, parent_id=agent.spiffe_id, selectors=[f"unix:uid:{os.getuid()}"])
        lab.wait_for_svid(agent, FOREIGN_ID)
        yield agent
    finally:
        agent.stop()
        server.stop()


@pytest.fixture(scope="session")
def workdir():
    return Path(tempfile.mkdtemp(prefix="e5s-it-", dir="/tmp"))


@pytest.fixture(scope="session")
def app_port(workdir):
    port = free_port()
    app = start_echo_app(port, log_path=workdir / "echo-app.log")
    yield port
    app.terminate()
    app.wait()


@dataclass
class Running:
    proxy: ProxyProcess
    port: int


@pytest.fixture(scope="session")
def inbound(lab, workdir, app_port):
    port = free_port()
    proxy = ProxyProcess(workdir, "inbound", inbound_config(lab.node_b.socket_path, port, app_port))
    with proxy.start((port,)):
        yield Running(proxy, port)


@pytest.fixture(scope="session")
def outbound(lab, workdir, inbound):
    port = free_port()
    config = outbound_config(lab.node_a.socket_path, port, inbound.port, expected_server_spiffe_id=SERVER_ID)
    proxy = ProxyProcess(workdir, "outbound", config)
    with proxy.start((port,)):
        yield Running(proxy, port)


@pytest.fixture
def start_proxy(workdir):
    """Start a proxy for one test; stopped at the end of the test."""
    started: list[ProxyProcess] = []

    def start(name: str, config: dict, *ports: int) -> ProxyProcess:
        """Start a proxy and wait until every one of ``ports`` accepts connections."""
        proxy = ProxyProcess(workdir, name, config)
        started.append(proxy)
        return proxy.start(ports)

    yield start
    for proxy in started:
        proxy.stop()


@dataclass
class SvidFiles:
    cert: Path
    key: Path
    bundle: Path


def write_svid(agent: SpireAgent, directory: Path) -> SvidFiles:
    directory.mkdir(parents=True, exist_ok=True)
    agent.fetch_x509(write_dir=directory)
    return SvidFiles(directory / "svid.0.pem", directory / "svid.0.key", directory / "bundle.0.pem")


@pytest.fixture
def svid_files(tmp_path):
    """Write an agent's current SVID to files for a plain ssl client."""
    return lambda agent: write_svid(agent, tmp_path / Path(str(agent.workdir)).name)


def tls_client_context(svid: SvidFiles | None) -> ssl.SSLContext:
    """A TLS client that presents ``svid`` and does not check the server.

    Tests of the inbound side's client checks need a client that gets that
    far; the server side of the check is tested through the outbound proxy.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if svid is not None:
        context.load_cert_chain(svid.cert, svid.key)
    return context


def raw_exchange(port: int, svid: SvidFiles | None, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw request bytes over mTLS to the inbound proxy and return all it sends back."""
    context = tls_client_context(svid)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        with context.wrap_socket(plain) as tls:
            tls.sendall(request)
            chunks = []
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                chunks.append(data)
    return b"".join(chunks)


def get_json(port: int, path: str = "/", headers: dict | None = None) -> tuple[int, dict | str]:
    """GET through the outbound proxy; return the status and the echo app's JSON (or the text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body.decode(errors="replace")
