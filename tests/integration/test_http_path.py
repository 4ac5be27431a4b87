"""The HTTP path on real SPIRE: upgrades, 100-continue, pipelining, strict framing, bounded memory."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import socketserver
import ssl
import threading
import time

import h11
import pytest

from harness.proxy import free_port, inbound_config
from tests.integration.conftest import CLIENT_ID, tls_client_context

pytestmark = pytest.mark.spire

MIB = 1024 * 1024


def read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        assert len(data) < limit
    return data


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_response(raw: bytes, method: str = "GET") -> tuple[int, bytes]:
    """Parse one complete final response with h11; return its status and decoded body."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "app")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    status, body = 0, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.NEED_DATA:
            return status, body


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 section 5.2) with a short payload."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def ws_read_frame(sock: socket.socket, buffered: bytes) -> tuple[int, bytes, bytes]:
    """Read one unmasked server frame; return (opcode, payload, bytes left over)."""
    data = buffered
    while len(data) < 2:
        data += sock.recv(65536)
    length = data[1] & 0x7F
    assert length < 126
    while len(data) < 2 + length:
        data += sock.recv(65536)
    return data[0] & 0x0F, data[2 : 2 + length], data[2 + length :]


def test_websocket_echo_through_both_proxies(outbound):
    with socket.create_connection(("127.0.0.1", outbound.port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET /websocket HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
        )
        head = read_until(sock, b"\r\n\r\n")
        _, _, rest = head.partition(b"\r\n\r\n")
        sock.sendall(ws_frame(0x1, b"hello through the tunnel"))
        opcode, payload, rest = ws_read_frame(sock, rest)
        sock.sendall(ws_frame(0x8, b"\x03\xe8"))
        close_opcode, _, _ = ws_read_frame(sock, rest)

    assert head.startswith(b"HTTP/1.1 101")
    assert opcode == 0x1
    assert payload == b"hello through the tunnel"
    assert close_opcode == 0x8


def test_websocket_upgrade_reaches_app_with_peer_header(outbound, workdir):
    with socket.create_connection(("127.0.0.1", outbound.port), timeout=10) as sock:
        sock.sendall(
            b"GET /websocket HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"X-Peer-SPIFFE-ID: forged\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            + base64.b64encode(os.urandom(16))
            + b"\r\n\r\n"
        )
        read_until(sock, b"\r\n\r\n")
        sock.sendall(ws_frame(0x8, b""))
    time.sleep(0.5)
    log = (workdir / "echo-app.log").read_text()
    switched = [line for line in log.splitlines() if "switched" in line]
    assert f'peer="{CLIENT_ID}"' in switched[-1]


def test_declined_upgrade_keeps_http(outbound):
    connection = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=10)
    connection.request("GET", "/not-a-websocket", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    first = connection.getresponse()
    first.read()
    connection.request("GET", "/after-declined-upgrade")
    second = connection.getresponse()
    second.read()
    connection.close()
    assert first.status == 200
    assert second.status == 200


def test_expect_continue_relayed(outbound):
    body = b"z" * 5000
    with socket.create_connection(("127.0.0.1", outbound.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        interim = read_until(sock, b"\r\n\r\n")
        sock.sendall(body)
        status, echoed = parse_response(read_all(sock), "POST")
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert status == 200
    assert echoed == body


def test_pipelined_requests_answered_in_order(outbound):
    paths = [f"/pipelined/{index}" for index in range(4)]
    requests = b"".join(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode() for path in paths)
    requests = requests[:-4] + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", outbound.port), timeout=10) as sock:
        sock.sendall(requests)
        raw = read_all(sock)

    client = h11.Connection(h11.CLIENT)
    client.receive_data(raw)
    seen = []
    for path in paths:
        client.send(h11.Request(method="GET", target=path, headers=[("Host", "app")]))
        client.send(h11.EndOfMessage())
        body = b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            if isinstance(event, h11.EndOfMessage):
                break
        seen.append(json.loads(body)["path"])
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
    assert seen == paths


def test_http10_client_gets_response_and_close(outbound):
    with socket.create_connection(("127.0.0.1", outbound.port), timeout=10) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200")
    assert b'"path":"/old"' in raw


# --- a recording app: h11 parses exactly what the proxy forwards ----------------


class RecordingApp:
    """A plaintext HTTP/1.1 app on 127.0.0.1 that records every request h11 parses."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.connections = 0
        self.raw = bytearray()
        app = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                app.connections += 1
                connection = h11.Connection(h11.SERVER)
                request, body = None, b""
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = self.request.recv(65536)
                        app.raw += data
                        connection.receive_data(data)
                        if not data and connection.their_state is not h11.DONE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request, body = event, b""
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        app.requests.append((request.method, request.target, list(request.headers), body))
                        reply = connection.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                        if request.method != b"HEAD":
                            reply += connection.send(h11.Data(data=b"ok"))
                        reply += connection.send(h11.EndOfMessage())
                        self.request.sendall(reply)
                        if connection.our_state is h11.MUST_CLOSE:
                            return
                        connection.start_next_cycle()
                    elif isinstance(event, h11.ConnectionClosed):
                        return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_inbound(lab, start_proxy):
    app = RecordingApp()
    port = free_port()
    start_proxy("inbound-recording", inbound_config(lab.node_b.socket_path, port, app.port), port)
    yield port, app
    app.close()


@pytest.fixture
def client_svid(lab, svid_files):
    return svid_files(lab.node_a)


def tls_exchange(port: int, svid, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        with tls_client_context(svid).wrap_socket(plain) as sock:
            sock.sendall(data)
            try:
                return read_all(sock)
            except (ConnectionResetError, ssl.SSLError):
                return b""


MALFORMED = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Peer-SPIFFE-ID : forged\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n", 400),
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED, ids=[f"case{index}" for index in range(len(MALFORMED))])
def test_malformed_request_rejected_before_app(recording_inbound, client_svid, request_bytes, status):
    port, app = recording_inbound
    reply = tls_exchange(port, client_svid, request_bytes)
    assert reply.startswith(b"HTTP/1.1 %d" % status)
    assert app.connections == 0


SAMPLES = [
    (
        b"GET /plain?q=1 HTTP/1.1\r\nHost: app\r\nAccept: */*\r\nX-Peer-SPIFFE-ID: forged\r\n"
        b"Connection: close\r\n\r\n",
        b"",
    ),
    (
        b"POST /length HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nX_Peer_SPIFFE_ID: x\r\n"
        b"Connection: close\r\n\r\nhello",
        b"hello",
    ),
    (
        b"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: x-custom, close\r\n"
        b"X-Custom: hop\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Peer-SPIFFE-ID: trailer\r\n\r\n",
        b"hello world",
    ),
    (b"OPTIONS * HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", b""),
    (b"HEAD /head HTTP/1.1\r\nHost: app\r\nTE: trailers\r\nConnection: TE, close\r\n\r\n", b""),
]


@pytest.mark.parametrize(("request_bytes", "body"), SAMPLES, ids=["get", "length", "chunked", "options", "head"])
def test_forwarded_request_parses_identically_with_h11(recording_inbound, client_svid, request_bytes, body):
    port, app = recording_inbound
    reply = tls_exchange(port, client_svid, request_bytes)
    method, target = request_bytes.split(b" ")[:2]
    recorded_method, recorded_target, headers, recorded_body = app.requests[0]
    names = [name for name, _ in headers]
    peer = [value for name, value in headers if name.replace(b"_", b"-") == b"x-peer-spiffe-id"]
    assert reply.startswith(b"HTTP/1.1 200")
    assert recorded_method == method
    assert recorded_target == target
    assert recorded_body == body
    assert peer == [CLIENT_ID.encode()]
    assert b"x-custom" not in names
    assert b"te" not in names


# --- flow control -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


class RssSampler:
    """Samples a process's resident set every 20 ms and keeps the maximum.

    VmHWM would be simpler, but start-up (gRPC, imports) can set a peak that
    hides the transfer, so the transfer is sampled against the RSS before it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_kib = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.max_kib = max(self.max_kib, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.max_kib


def test_streaming_64_mib_keeps_memory_bounded(lab, app_port, start_proxy, client_svid):
    port = free_port()
    proxy = start_proxy("inbound-memory", inbound_config(lab.node_b.socket_path, port, app_port), port)
    size = 64 * MIB
    block = b"u" * MIB

    # Warm up: one small request, so imports and first-use allocations are in the baseline.
    tls_exchange(port, client_svid, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    before = rss_kib(proxy.process.pid)
    sampler = RssSampler(proxy.process.pid)

    with socket.create_connection(("127.0.0.1", port), timeout=60) as plain:
        with tls_client_context(client_svid).wrap_socket(plain) as sock:
            # Upload to a slow reader (2 ms per 64 KiB), so the proxy must pause the client.
            sock.sendall(b"POST /sink?delay_ms=2 HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // MIB):
                sock.sendall(block)
            upload_reply = read_until(sock, b"}")

            # Download, but read nothing for 3 s, so the proxy must pause the app.
            sock.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % size)
            time.sleep(3)
            received = 0
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)

    growth_mib = (sampler.stop() - before) / 1024
    print(f"RSS growth during the transfer: {growth_mib:.1f} MiB")
    assert b'"body_length":%d' % size in upload_reply
    assert received > size
    assert growth_mib <= 32


def test_valid_request_before_bad_one_is_answered(recording_inbound, client_svid):
    port, app = recording_inbound
    reply = tls_exchange(
        port,
        client_svid,
        b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 400" in reply
    assert [target for _, target, _, _ in app.requests] == [b"/first"]
