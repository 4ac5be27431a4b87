"""The full path on real SPIRE: app -> outbound -> mTLS -> inbound -> app."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import pytest

from harness.proxy import free_port, inbound_config, outbound_config
from tests.integration.conftest import (
    CLIENT_ID,
    FOREIGN_ID,
    INTRUDER_ID,
    SERVER_ID,
    get_json,
    raw_exchange,
)

pytestmark = pytest.mark.spire


def wait_for_log(proxy, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proxy.log_text()
        if text in log:
            return log
        time.sleep(0.1)
    return proxy.log_text()


def test_request_reaches_app_with_verified_peer_id(outbound):
    status, seen = get_json(outbound.port, "/hello")
    assert status == 200
    assert seen["peer_spiffe_id"] == CLIENT_ID


def test_request_keeps_method_and_path(outbound):
    status, seen = get_json(outbound.port, "/a/b?c=d")
    assert seen["path"] == "/a/b"
    assert seen["method"] == "GET"


def test_spoofed_peer_headers_replaced(outbound):
    # http.client sends each of these as its own header field.
    connection = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
    connection.putrequest("GET", "/spoof")
    for name in ("X-Peer-SPIFFE-ID", "x-peer-spiffe-id", "X_Peer_SPIFFE_ID", "x_peer-spiffe_id"):
        connection.putheader(name, "spiffe://evil.example/forged")
    connection.endheaders()
    response = connection.getresponse()
    seen = json.loads(response.read())
    connection.close()

    peer_like = {
        name: values
        for name, values in seen["headers"].items()
        if name.lower().replace("_", "-") == "x-peer-spiffe-id"
    }
    assert list(peer_like) == ["X-Peer-Spiffe-Id"]
    assert peer_like["X-Peer-Spiffe-Id"] == [CLIENT_ID]


def test_keep_alive_carries_several_requests(outbound):
    connection = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
    statuses = []
    for index in range(5):
        connection.request("GET", f"/keepalive/{index}")
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    connection.close()
    assert statuses == [200] * 5


def test_post_body_with_content_length_streams_to_app(outbound):
    body = b"x" * 300_000
    connection = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
    connection.request("POST", "/echo", body=body)
    response = connection.getresponse()
    echoed = response.read()
    connection.close()
    assert echoed == body


def test_post_chunked_body_streams_to_app(outbound):
    pieces = [b"first piece ", b"second piece ", b"x" * 70_000]
    connection = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
    connection.request("POST", "/echo", body=iter(pieces), encode_chunked=True)
    response = connection.getresponse()
    echoed = response.read()
    connection.close()
    assert echoed == b"".join(pieces)


def test_head_request_gets_no_body(outbound):
    connection = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
    connection.request("HEAD", "/head")
    response = connection.getresponse()
    body = response.read()
    connection.request("GET", "/after-head")
    second = connection.getresponse()
    second.read()
    connection.close()
    assert body == b""
    assert second.status == 200


def test_direct_client_with_svid_reaches_app(inbound, lab, svid_files):
    reply = raw_exchange(
        inbound.port,
        svid_files(lab.node_a),
        b"GET /direct HTTP/1.1\r\nHost: app\r\nX-Peer-SPIFFE-ID: forged\r\nConnection: close\r\n\r\n",
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["headers"]["X-Peer-Spiffe-Id"] == [CLIENT_ID]


def test_malformed_request_gets_400(inbound, lab, svid_files):
    reply = raw_exchange(
        inbound.port,
        svid_files(lab.node_a),
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 400")


def test_client_without_certificate_rejected(inbound):
    with pytest.raises(OSError):
        raw_exchange(inbound.port, None, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")


def test_client_without_certificate_logged(inbound):
    with pytest.raises(OSError):
        raw_exchange(inbound.port, None, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    log = wait_for_log(inbound.proxy, "no client certificate")
    assert "rejected TLS handshake from 127.0.0.1" in log


def test_client_of_other_trust_domain_rejected(inbound, foreign_agent, svid_files):
    with pytest.raises(OSError):
        raw_exchange(inbound.port, svid_files(foreign_agent), b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    log = wait_for_log(inbound.proxy, f"presented SPIFFE ID {FOREIGN_ID}")
    assert "no bundle for trust domain 'other.org'" in log


def test_client_with_wrong_id_rejected(lab, app_port, start_proxy, svid_files):
    port = free_port()
    proxy = start_proxy(
        "inbound-only-client",
        inbound_config(lab.node_b.socket_path, port, app_port, allowed_client_spiffe_id=CLIENT_ID),
        port,
    )
    with pytest.raises(OSError):
        raw_exchange(port, svid_files(lab.agents["node-c"]), b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    log = wait_for_log(proxy, f"presented SPIFFE ID {INTRUDER_ID}")
    assert f"not one of the allowed IDs: {CLIENT_ID}" in log


def test_client_with_allowed_id_accepted(lab, app_port, start_proxy, svid_files):
    port = free_port()
    start_proxy(
        "inbound-allowed-client",
        inbound_config(lab.node_b.socket_path, port, app_port, allowed_client_spiffe_id=[INTRUDER_ID, CLIENT_ID]),
        port,
    )
    reply = raw_exchange(port, svid_files(lab.node_a), b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")


def test_app_unreachable_gives_502(lab, start_proxy, svid_files):
    port, closed_port = free_port(), free_port()
    start_proxy("inbound-no-app", inbound_config(lab.node_b.socket_path, port, closed_port), port)
    reply = raw_exchange(port, svid_files(lab.node_a), b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 502")


def test_app_unreachable_502_hides_app_address(lab, start_proxy, svid_files):
    port, closed_port = free_port(), free_port()
    proxy = start_proxy("inbound-no-app-address", inbound_config(lab.node_b.socket_path, port, closed_port), port)
    reply = raw_exchange(port, svid_files(lab.node_a), b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    log = wait_for_log(proxy, "cannot reach the app")
    assert str(closed_port).encode() not in reply
    assert f"127.0.0.1:{closed_port}" in log


def test_outbound_id_mismatch_gives_502_naming_both_ids(lab, inbound, start_proxy):
    port = free_port()
    expected = "spiffe://example.org/orders"
    start_proxy(
        "outbound-wrong-server",
        outbound_config(lab.node_a.socket_path, port, inbound.port, expected_server_spiffe_id=expected),
        port,
    )
    status, body = get_json(port, "/")
    assert status == 502
    assert expected in body
    assert SERVER_ID in body


def test_outbound_server_unreachable_gives_502(lab, start_proxy):
    port, closed_port = free_port(), free_port()
    start_proxy("outbound-no-server", outbound_config(lab.node_a.socket_path, port, closed_port), port)
    status, body = get_json(port, "/")
    assert status == 502
    assert f"127.0.0.1:{closed_port}" in body


def test_outbound_path_prefix_prepended(lab, inbound, start_proxy):
    port = free_port()
    config = outbound_config(lab.node_a.socket_path, port, inbound.port)
    config["client"]["server_url"] = f"https://127.0.0.1:{inbound.port}/api/v1"
    start_proxy("outbound-prefix", config, port)
    status, seen = get_json(port, "/orders")
    assert seen["path"] == "/api/v1/orders"


def test_start_without_agent_exits_nonzero_naming_socket(workdir):
    socket_path = workdir / "no-agent.sock"
    config = workdir / "no-agent.yaml"
    config.write_text(
        "spire:\n"
        f"  workload_socket: unix://{socket_path}\n"
        "  initial_fetch_timeout: 2s\n"
        "server:\n"
        f"  listen_addr: 127.0.0.1:{free_port()}\n"
        "  target: 127.0.0.1:9\n"
        "  allowed_client_trust_domain: example.org\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "e5s_proxy.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert str(socket_path) in result.stderr
    assert "registration entry" in result.stderr
    assert elapsed < 30


def test_identity_command_prints_svid(lab):
    result = subprocess.run(
        [sys.executable, "-m", "e5s_proxy.cli", "identity", "--socket", f"unix://{lab.node_b.socket_path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert f"SVID 0 (default): {SERVER_ID}" in result.stdout
