"""The forwarder's protocol logic with Twisted's in-memory transports and clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from e5s_proxy.forward import Forwarder, ListenerSettings, Timeouts
from e5s_proxy.http import request_head_for_upstream
from e5s_proxy.metrics import Metrics
from e5s_proxy.pool import UpstreamConnection

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class FakePool:
    """Hands out in-memory upstream connections and records what comes back."""

    def __init__(self) -> None:
        self.connections: list[UpstreamConnection] = []
        self.idle: list[UpstreamConnection] = []
        self.released: list[UpstreamConnection] = []

    def take_idle(self) -> UpstreamConnection | None:
        if not self.idle:
            return None
        connection = self.idle.pop()
        connection.reused = True
        return connection

    def acquire(self) -> defer.Deferred[UpstreamConnection]:
        connection = self.take_idle()
        if connection is not None:
            return defer.succeed(connection)
        connection = UpstreamConnection(tls=False)
        connection.makeConnection(StringTransport())
        connection.pool = self
        self.connections.append(connection)
        return defer.succeed(connection)

    def release(self, connection: UpstreamConnection) -> None:
        self.released.append(connection)
        self.idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)


class PlainForwarder(Forwarder):
    def head_for_upstream(self, head):
        return request_head_for_upstream(head, authority=b"server", path_prefix=b"")


def make_forwarder(
    pool: FakePool | None = None, transport: StringTransport | None = None
) -> tuple[PlainForwarder, StringTransport, FakePool, Clock]:
    clock = Clock()
    pool = pool or FakePool()
    settings = ListenerSettings(
        direction="outbound",
        timeouts=Timeouts(request_head=10, idle=60, response=30),
        metrics=Metrics(),
    )
    forwarder = PlainForwarder(clock, pool, settings)
    transport = transport or StringTransport()
    forwarder.makeConnection(transport)
    return forwarder, transport, pool, clock


def upstream_sent(pool: FakePool, index: int = 0) -> bytes:
    return pool.connections[index].transport.value()


def test_request_forwarded_with_upstream_host():
    forwarder, _, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: local\r\n\r\n")
    assert upstream_sent(pool) == b"GET /a HTTP/1.1\r\nHost: server\r\n\r\n"


def test_response_relayed_to_client():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: local\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    assert transport.value() == OK


class DroppingTransport(StringTransport):
    """A transport that drops writes after loseConnection, as Twisted's TLS protocol does."""

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            super().write(data)


def test_response_before_close_sent_whole():
    forwarder, transport, pool, _ = make_forwarder(transport=DroppingTransport())
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    assert transport.value().endswith(b"\r\n\r\nok")


def test_finished_connection_returns_to_pool():
    forwarder, _, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: local\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    assert pool.released == [pool.connections[0]]


def test_pipelined_request_waits_for_first_response():
    forwarder, _, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /1 HTTP/1.1\r\nHost: l\r\n\r\nGET /2 HTTP/1.1\r\nHost: l\r\n\r\n")
    assert upstream_sent(pool).count(b"GET") == 1


def test_pipelined_responses_keep_request_order():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /1 HTTP/1.1\r\nHost: l\r\n\r\nGET /2 HTTP/1.1\r\nHost: l\r\n\r\n")
    pool.connections[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    pool.connections[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert transport.value().endswith(b"\r\n\r\n2")
    assert transport.value().index(b"\r\n\r\n1") < transport.value().index(b"\r\n\r\n2")


def test_pipelined_request_pauses_client_reading():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /1 HTTP/1.1\r\nHost: l\r\n\r\nGET /2 HTTP/1.1\r\nHost: l\r\n\r\n")
    assert transport.producerState == "paused"


def test_request_head_timeout_answers_408():
    forwarder, transport, _, clock = make_forwarder()
    forwarder.dataReceived(b"GET /slow HTTP/1.1\r\n")
    clock.advance(11)
    assert transport.value().startswith(b"HTTP/1.1 408")


def test_response_timeout_answers_504():
    forwarder, transport, _, clock = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    clock.advance(31)
    assert transport.value().startswith(b"HTTP/1.1 504")


def test_idle_timeout_closes_connection():
    forwarder, transport, _, clock = make_forwarder()
    clock.advance(61)
    assert transport.disconnecting


def test_request_head_timeout_not_before_deadline():
    forwarder, transport, _, clock = make_forwarder()
    clock.advance(5)
    forwarder.dataReceived(b"GET /slow HTTP/1.1\r\n")
    clock.advance(9.9)
    assert transport.value() == b""


def test_request_head_timeout_counts_from_first_byte():
    forwarder, transport, _, clock = make_forwarder()
    clock.advance(5)
    forwarder.dataReceived(b"GET /slow HTTP/1.1\r\n")
    clock.advance(10)
    assert transport.value().startswith(b"HTTP/1.1 408")


def test_idle_timeout_restarts_after_each_exchange():
    forwarder, transport, pool, clock = make_forwarder()
    clock.advance(50)
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    clock.advance(59.9)
    assert not transport.disconnecting


def test_idle_timeout_after_exchange_closes_connection():
    forwarder, transport, pool, clock = make_forwarder()
    clock.advance(50)
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    clock.advance(60)
    assert transport.disconnecting


def test_response_timeout_stops_at_response_head():
    forwarder, transport, pool, clock = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    pool.connections[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    clock.advance(31)
    assert b"504" not in transport.value()


def test_timeout_shorter_than_armed_call_fires_on_time():
    clock = Clock()
    settings = ListenerSettings(
        direction="outbound", timeouts=Timeouts(request_head=0.5, idle=60, response=30), metrics=Metrics()
    )
    forwarder = PlainForwarder(clock, FakePool(), settings)
    transport = StringTransport()
    forwarder.makeConnection(transport)
    forwarder.dataReceived(b"GET /slow HTTP/1.1\r\n")
    clock.advance(0.5)
    assert transport.value().startswith(b"HTTP/1.1 408")


def test_closed_connection_leaves_no_timer():
    forwarder, _, _, clock = make_forwarder()
    forwarder.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_malformed_request_answers_400_without_upstream():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"POST / HTTP/1.1\r\nHost: l\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400")
    assert pool.connections == []


def test_reused_connection_closed_before_answer_is_retried():
    pool = FakePool()
    stale = UpstreamConnection(tls=False)
    stale.makeConnection(StringTransport())
    stale.pool = pool
    pool.idle.append(stale)
    forwarder, transport, _, _ = make_forwarder(pool)

    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    stale.connectionLost(Failure(ConnectionDone()))
    pool.connections[0].dataReceived(OK)

    assert transport.value() == OK


def test_request_with_body_not_retried():
    pool = FakePool()
    stale = UpstreamConnection(tls=False)
    stale.makeConnection(StringTransport())
    stale.pool = pool
    pool.idle.append(stale)
    forwarder, transport, _, _ = make_forwarder(pool)

    forwarder.dataReceived(b"POST /a HTTP/1.1\r\nHost: l\r\nContent-Length: 1\r\n\r\nx")
    stale.connectionLost(Failure(ConnectionDone()))

    assert transport.value().startswith(b"HTTP/1.1 502")
    assert pool.connections == []


def test_drain_closes_idle_connection():
    forwarder, transport, _, _ = make_forwarder()
    forwarder.drain()
    assert transport.disconnecting


def test_drain_during_exchange_closes_after_response():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    forwarder.drain()
    pool.connections[0].dataReceived(OK)
    assert b"Connection: close" in transport.value()
    assert transport.disconnecting


def test_half_close_after_request_answers_then_closes():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\n\r\n")
    forwarder.readConnectionLost()
    pool.connections[0].dataReceived(OK)
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert transport.disconnecting


def test_client_connection_close_reflected_on_response():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /a HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    assert b"Connection: close" in transport.value()


def test_upgrade_relays_bytes_after_101():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /ws HTTP/1.1\r\nHost: l\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    pool.connections[0].dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nfrom-server"
    )
    forwarder.dataReceived(b"from-client")
    assert transport.value().endswith(b"\r\n\r\nfrom-server")
    assert upstream_sent(pool).endswith(b"\r\n\r\nfrom-client")


def test_rejection_after_pipelined_request_resumes_reading():
    forwarder, transport, pool, _ = make_forwarder()
    forwarder.dataReceived(b"GET /1 HTTP/1.1\r\nHost: l\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    pool.connections[0].dataReceived(OK)
    assert b"HTTP/1.1 400" in transport.value()
    assert transport.producerState == "producing"
