"""Running like a production sidecar on real SPIRE: drain, admin, agent loss and late agents."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from harness.proxy import ProxyProcess, free_port, inbound_config, port_open
from harness.spire import SpireAgent, make_workdir
from tests.integration.conftest import CLIENT_ID, raw_exchange

pytestmark = pytest.mark.spire

LOSS_ID = "spiffe://example.org/agent-loss"
LATE_ID = "spiffe://example.org/late-agent"


def admin_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def read_response(sock: socket.socket) -> bytes:
    """Read one response that has a Content-Length, and nothing after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def slow_upload(port: int, svid, seconds: float) -> bytes:
    """POST to the app's slow /sink so that the exchange lasts about ``seconds``."""
    blocks = max(int(seconds / 0.1), 1)
    body_size = blocks * 65536
    request = (
        b"POST /sink?delay_ms=100 HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % body_size
    )
    return raw_exchange(port, svid, request + b"s" * body_size, timeout=seconds + 30)


@pytest.fixture
def admin_inbound(lab, app_port, start_proxy):
    port, admin_port = free_port(), free_port()
    config = inbound_config(lab.node_b.socket_path, port, app_port, access_log=True)
    config["admin"] = {"listen_addr": f"127.0.0.1:{admin_port}"}
    config["drain_timeout"] = "20s"
    proxy = start_proxy("inbound-admin", config, port, admin_port)
    return proxy, port, admin_port


def test_healthz_ok(admin_inbound):
    _, _, admin_port = admin_inbound
    assert admin_get(admin_port, "/healthz") == (200, "ok\n")


def test_readyz_ok_with_valid_svid(admin_inbound):
    _, _, admin_port = admin_inbound
    assert admin_get(admin_port, "/readyz") == (200, "ready\n")


def test_metrics_count_requests_and_handshakes(admin_inbound, lab, svid_files):
    _, port, admin_port = admin_inbound
    raw_exchange(port, svid_files(lab.node_a), b"GET /m HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    _, text = admin_get(admin_port, "/metrics")
    assert 'e5s_requests_total{direction="inbound",status="200"} 1.0' in text
    assert 'e5s_handshakes_total{outcome="accepted"} 1.0' in text
    assert "e5s_svid_expiry_timestamp_seconds " in text


def test_metrics_count_rejected_handshake(admin_inbound):
    _, port, admin_port = admin_inbound
    with pytest.raises(OSError):
        raw_exchange(port, None, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    time.sleep(0.5)
    _, text = admin_get(admin_port, "/metrics")
    assert 'e5s_rejections_total{direction="inbound",reason="no_certificate"} 1.0' in text


def test_access_log_line_names_peer(admin_inbound, lab, svid_files):
    proxy, port, _ = admin_inbound
    raw_exchange(port, svid_files(lab.node_a), b"GET /logged HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert wait_until(lambda: '"GET /logged" 200' in proxy.log_text(), 5)
    line = next(line for line in proxy.log_text().splitlines() if '"GET /logged"' in line)
    assert CLIENT_ID in line


def test_sigterm_lets_in_flight_request_finish(admin_inbound, lab, svid_files):
    proxy, port, admin_port = admin_inbound
    svid = svid_files(lab.node_a)
    result: dict[str, bytes] = {}
    worker = threading.Thread(target=lambda: result.setdefault("reply", slow_upload(port, svid, 3)))
    worker.start()
    time.sleep(1)

    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = not port_open(port)
    readyz = admin_get(admin_port, "/readyz")
    worker.join(30)
    exit_code = proxy.process.wait(30)

    assert result["reply"].startswith(b"HTTP/1.1 200")
    assert refused
    assert readyz[0] == 503
    assert exit_code == 0


def test_second_signal_stops_at_once(admin_inbound, lab, svid_files):
    proxy, port, _ = admin_inbound
    svid = svid_files(lab.node_a)
    worker = threading.Thread(target=lambda: _ignore_errors(lambda: slow_upload(port, svid, 8)))
    worker.start()
    time.sleep(1)

    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    exit_code = proxy.process.wait(30)
    elapsed = time.monotonic() - started
    worker.join(30)

    assert exit_code == 0
    assert elapsed < 3


def _ignore_errors(call) -> None:
    try:
        call()
    except OSError:
        pass


def test_agent_loss_keeps_serving_and_recovers(lab, app_port, start_proxy, svid_files):
    agent = lab.add_agent("node-loss")
    lab.register_workload(agent, LOSS_ID)
    lab.wait_for_svid(agent, LOSS_ID)
    port = free_port()
    proxy = start_proxy("inbound-agent-loss", inbound_config(agent.socket_path, port, app_port), port)
    svid = svid_files(lab.node_a)
    request = b"GET /loss HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"

    agent.kill()
    assert wait_until(lambda: "unavailable" in proxy.log_text(), 15)
    during = [raw_exchange(port, svid, request) for _ in range(3)]
    updates_before = proxy.log_text().count("New X.509 identity")
    agent.restart()
    reconnected = wait_until(lambda: proxy.log_text().count("New X.509 identity") > updates_before, 30)
    after = raw_exchange(port, svid, request)

    assert all(reply.startswith(b"HTTP/1.1 200") for reply in during)
    assert "retry 2 in" in proxy.log_text()
    assert reconnected
    assert after.startswith(b"HTTP/1.1 200")


def test_agent_started_after_proxy_is_picked_up(lab, app_port, workdir):
    agent_dir = make_workdir("node-late")
    lab.workdirs.append(agent_dir)
    agent = SpireAgent(agent_dir, lab.server, lab.server.join_token(), lab.bin_dir)
    port = free_port()
    config = inbound_config(agent.socket_path, port, app_port)
    config["spire"]["initial_fetch_timeout"] = "60s"
    proxy = ProxyProcess(workdir, "inbound-late-agent", config)
    proxy.start()
    try:
        time.sleep(2)
        agent.start()
        lab.register_workload(agent, LATE_ID)
        listening = wait_until(lambda: port_open(port), 60)
        still_running = proxy.process.poll() is None
    finally:
        proxy.stop()
        agent.stop()
    assert still_running
    assert listening


def test_single_thread_mode_serves_hostname_target(lab, app_port, workdir, svid_files):
    port = free_port()
    config = inbound_config(lab.node_b.socket_path, port, app_port)
    config["server"]["target"] = f"localhost:{app_port}"
    proxy = ProxyProcess(workdir, "inbound-single-thread", config, environment={"E5S_DEBUG_SINGLE_THREAD": "1"})
    with proxy.start((port,)):
        reply = raw_exchange(
            port, svid_files(lab.node_a), b"GET /single HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        )
        log = proxy.log_text()
    assert reply.startswith(b"HTTP/1.1 200")
    assert "Single-thread debug mode" in log
    assert f"as {CLIENT_ID}" in log


def test_keep_alive_connection_closed_when_client_certificate_expires(inbound, lab, svid_files):
    from cryptography import x509
    from tests.integration.conftest import tls_client_context

    svid = svid_files(lab.node_a)
    expires = x509.load_pem_x509_certificate(svid.cert.read_bytes()).not_valid_after_utc.timestamp()
    request = b"GET /expiry HTTP/1.1\r\nHost: app\r\n\r\n"
    with socket.create_connection(("127.0.0.1", inbound.port), timeout=60) as plain:
        with tls_client_context(svid).wrap_socket(plain) as sock:
            sock.sendall(request)
            first = read_response(sock)
            time.sleep(max(expires - time.time(), 0) + 1.5)
            try:
                sock.sendall(request)
                after_expiry = sock.recv(65536)
            except OSError:
                after_expiry = b""
    assert first.startswith(b"HTTP/1.1 200")
    assert after_expiry == b""


EXPIRY_ID = "spiffe://example.org/expiry"


def test_svid_expiry_fails_readyz_until_agent_returns(lab, app_port, start_proxy, svid_files):
    agent = lab.add_agent("node-expiry")
    lab.register_workload(agent, EXPIRY_ID, x509_svid_ttl=30)
    lab.wait_for_svid(agent, EXPIRY_ID)
    port, admin_port = free_port(), free_port()
    config = inbound_config(agent.socket_path, port, app_port)
    config["admin"] = {"listen_addr": f"127.0.0.1:{admin_port}"}
    proxy = start_proxy("inbound-expiry", config, port, admin_port)
    request = b"GET /expired HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"

    agent.kill()
    failed = wait_until(lambda: admin_get(admin_port, "/readyz")[0] == 503, 45, interval=1)
    readyz_text = admin_get(admin_port, "/readyz")[1]
    agent.restart()
    recovered = wait_until(lambda: admin_get(admin_port, "/readyz")[0] == 200, 45, interval=1)
    reply = raw_exchange(port, svid_files(lab.node_a), request)

    assert failed
    assert "expired" in readyz_text
    assert "sent no new one" in proxy.log_text()
    assert recovered
    assert reply.startswith(b"HTTP/1.1 200")


def test_json_log_format_writes_one_object_per_line(lab, app_port, workdir):
    import json

    port = free_port()
    proxy = ProxyProcess(
        workdir, "inbound-json-logs", inbound_config(lab.node_b.socket_path, port, app_port),
        extra_args=("--log-format", "json"),
    )
    with proxy.start((port,)):
        lines = [line for line in proxy.log_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    listening = [event for event in events if event.get("log_format", "").startswith("Inbound listening")]
    assert listening[0]["target"] == f"127.0.0.1:{app_port}"


def test_workers_share_the_inbound_port(lab, app_port, workdir, svid_files):
    port = free_port()
    config = inbound_config(lab.node_b.socket_path, port, app_port)
    config["workers"] = 2
    proxy = ProxyProcess(workdir, "inbound-workers", config)
    proxy.start((port,))
    svid = svid_files(lab.node_a)
    try:
        assert wait_until(lambda: proxy.log_text().count("Inbound listening on") == 2, 30)
        replies = [
            raw_exchange(port, svid, b"GET /worker HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            for _ in range(20)
        ]
    finally:
        exit_code = proxy.stop()
    log = proxy.log_text()
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
    assert "Started worker 1" in log
    assert exit_code == 0
    assert "All workers stopped" in log


def test_workers_without_agent_exit_nonzero(workdir):
    import subprocess
    import sys

    import yaml

    config_path = workdir / "workers-no-agent.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "spire": {"workload_socket": str(workdir / "missing-agent.sock"), "initial_fetch_timeout": "2s"},
                "server": {
                    "listen_addr": f"127.0.0.1:{free_port()}",
                    "target": "127.0.0.1:9",
                    "allowed_client_trust_domain": "example.org",
                },
                "workers": 2,
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "e5s_proxy.cli", "run", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "failed to start" in result.stderr
