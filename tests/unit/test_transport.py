"""Direct writes to Twisted TCP transports on loopback sockets, and TLS that uses them.

The TCP transports run on a ``MemoryReactorClock``, which runs nothing unless a
test advances it, and no test advances it after connecting. Bytes that reach
the peer socket therefore went out during the ``send`` call itself, and bytes
that the transport buffered stay buffered until a test calls ``doWrite`` in
place of the reactor.
"""

from __future__ import annotations

import os
import select
import socket
import time

import pytest
from twisted.internet import defer, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import tls
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from e5s_proxy.spiffeid import SpiffeId
from e5s_proxy.svid import ChainVerifier, authorize_ids
from e5s_proxy.tlsctx import ClientConnectionCreator, ServerConnectionCreator, build_client_context
from e5s_proxy.transport import (
    READ_SIZE,
    DirectTLSProtocol,
    TLSClientEndpoint,
    disable_nagle,
    prepare_connection,
    send,
    set_read_size,
)
from tests.pki import make_authority, make_snapshot

EXAMPLE = make_authority("example.org")
SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"

# Seconds to wait for bytes that should arrive, and for bytes that should not.
ARRIVAL_TIMEOUT = 5.0
QUIET_PERIOD = 0.1


class Recorder(Protocol):
    """Protocol that stores the bytes it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.calls = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.calls += 1


class StubConnector:
    """Connector for a ``tcp.Client``: builds the protocol that the client transport drives."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol

    def buildProtocol(self, address: object) -> Protocol:
        return self.protocol

    def connectionFailed(self, reason: Failure) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


@pytest.fixture
def default_clock(monkeypatch):
    """Replace Twisted's default TLS clock, the global reactor, with a Clock."""
    clock = Clock()
    monkeypatch.setattr(tls, "_get_default_clock", lambda: clock)
    return clock


def server_creator() -> ServerConnectionCreator:
    snapshot = make_snapshot(EXAMPLE, SERVER_ID)
    return ServerConnectionCreator(snapshot, authorize_ids([SpiffeId("example.org", "/client")]))


def client_creator() -> ClientConnectionCreator:
    snapshot = make_snapshot(EXAMPLE, CLIENT_ID)
    authorizer = authorize_ids([SpiffeId("example.org", "/server")])
    return ClientConnectionCreator(
        ChainVerifier(snapshot.bundles), build_client_context(snapshot), authorizer, "server.example"
    )


@pytest.fixture
def sockets():
    """Sockets that a test opens, all closed when it ends."""
    opened: list[socket.socket] = []
    yield opened
    for opened_socket in opened:
        opened_socket.close()


@pytest.fixture
def reactor():
    return MemoryReactorClock()


def listen(sockets: list[socket.socket], *, receive_buffer: int | None = None) -> socket.socket:
    """Open a TCP listener on 127.0.0.1 whose accepted sockets inherit ``receive_buffer``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(listener)
    if receive_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(ARRIVAL_TIMEOUT)
    return listener


def connect_server(reactor, sockets, *, receive_buffer: int | None = None):
    """Build a ``tcp.Server`` around an accepted loopback socket and return it with its peer socket.

    ``receive_buffer`` sets the peer's SO_RCVBUF before it connects, so the
    TCP window that the peer advertises is small from the start.
    """
    listener = listen(sockets)
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(peer)
    if receive_buffer is not None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    peer.connect(listener.getsockname())
    accepted, address = listener.accept()
    sockets.append(accepted)

    protocol = Recorder()
    transport = tcp.Server(accepted, protocol, address, None, 1, reactor)
    protocol.makeConnection(transport)
    return transport, peer


def connect_client(reactor, sockets, *, receive_buffer: int | None = None):
    """Connect a ``tcp.Client`` to a loopback listener and return it with the accepted peer socket."""
    listener = listen(sockets, receive_buffer=receive_buffer)
    port = listener.getsockname()[1]
    protocol = Recorder()
    transport = tcp.Client("127.0.0.1", port, None, StubConnector(protocol), reactor)
    sockets.append(transport.socket)

    # The first doConnect starts the non-blocking connect. Once the listener
    # has accepted, the second one finds the socket connected and calls
    # protocol.makeConnection, as the reactor would on writability.
    reactor.advance(0)
    peer, _ = listener.accept()
    sockets.append(peer)
    transport.doConnect()
    assert transport.connected, "tcp.Client did not finish connecting"
    return transport, peer


@pytest.fixture(params=["server", "client"])
def connection(request, reactor, sockets):
    """A connected TCP transport of each kind that ``send`` writes to directly, and its peer."""
    if request.param == "server":
        return connect_server(reactor, sockets)
    return connect_client(reactor, sockets)


def connect_small_buffers(kind: str, reactor, sockets):
    """Connect a transport whose socket takes only a few kilobytes before a send is short."""
    if kind == "server":
        transport, peer = connect_server(reactor, sockets, receive_buffer=4096)
    else:
        transport, peer = connect_client(reactor, sockets, receive_buffer=4096)
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return transport, peer


def buffered(transport: tcp.Connection) -> bytes:
    """Return the bytes that ``transport`` holds for a later ``doWrite``."""
    return bytes(transport.dataBuffer[transport.offset :]) + b"".join(transport._tempDataBuffer)


def receive_exactly(peer: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes from ``peer``, or fewer if ARRIVAL_TIMEOUT passes first."""
    peer.settimeout(ARRIVAL_TIMEOUT)
    data = b""
    while len(data) < size:
        try:
            chunk = peer.recv(size - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def receive_pending(peer: socket.socket, wait: float = QUIET_PERIOD) -> bytes:
    """Read whatever arrives at ``peer`` within ``wait`` seconds, or b"" if nothing does."""
    data = b""
    while True:
        readable, _, _ = select.select([peer], [], [], wait)
        if not readable:
            return data
        chunk = peer.recv(65536)
        if not chunk:
            return data
        data += chunk
        wait = 0


def drain(transport: tcp.Connection, peer: socket.socket, expected_size: int) -> bytes:
    """Run ``doWrite`` as the reactor would until ``peer`` reads ``expected_size`` bytes or ARRIVAL_TIMEOUT passes.

    Returns the bytes that ``peer`` read.
    """
    received = b""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while len(received) < expected_size and time.monotonic() < deadline:
        received += receive_pending(peer, wait=0.01)
        if buffered(transport):
            _, writable, _ = select.select([], [transport.socket], [], 0.01)
            if writable:
                transport.doWrite()
    return received


# send() on TCP transports.


def test_send_writes_directly_when_buffer_empty(connection):
    transport, peer = connection

    send(transport, b"hello")

    assert receive_exactly(peer, 5) == b"hello"


def test_send_direct_leaves_buffer_empty(connection):
    transport, _ = connection

    send(transport, b"hello")

    assert buffered(transport) == b""


def test_send_direct_registers_no_writer(connection, reactor):
    transport, _ = connection

    send(transport, b"hello")

    assert transport not in reactor.getWriters()


def test_send_empty_data_registers_no_writer(connection, reactor):
    transport, _ = connection

    send(transport, b"")

    assert transport not in reactor.getWriters()


def test_send_queues_behind_buffered_data(connection):
    transport, peer = connection
    transport.write(b"first ")

    send(transport, b"second")

    assert receive_pending(peer) == b""


def test_send_appends_to_buffered_data(connection):
    transport, _ = connection
    transport.write(b"first ")

    send(transport, b"second")

    assert buffered(transport) == b"first second"


def test_send_behind_buffer_keeps_order(connection):
    transport, peer = connection
    transport.write(b"first ")
    send(transport, b"second")

    transport.doWrite()

    assert receive_exactly(peer, 12) == b"first second"


@pytest.mark.parametrize("kind", ["server", "client"])
def test_send_short_write_buffers_remainder(kind, reactor, sockets):
    transport, _ = connect_small_buffers(kind, reactor, sockets)
    payload = os.urandom(4 * 1024 * 1024)

    send(transport, payload)

    rest = buffered(transport)
    sent = len(payload) - len(rest)
    assert 0 < sent < len(payload), f"socket took {sent} of {len(payload)} bytes; the test needs a short send"
    assert rest == payload[sent:]


@pytest.mark.parametrize("kind", ["server", "client"])
def test_send_short_write_registers_writer(kind, reactor, sockets):
    transport, _ = connect_small_buffers(kind, reactor, sockets)

    send(transport, os.urandom(4 * 1024 * 1024))

    assert transport in reactor.getWriters()


@pytest.mark.parametrize("kind", ["server", "client"])
def test_send_short_write_keeps_order(kind, reactor, sockets):
    transport, peer = connect_small_buffers(kind, reactor, sockets)
    payload = os.urandom(4 * 1024 * 1024)

    send(transport, payload)
    received = drain(transport, peer, len(payload))

    assert received == payload


def test_send_after_lose_connection_does_not_write_directly(connection):
    transport, peer = connection
    transport.loseConnection()

    send(transport, b"late")

    assert receive_pending(peer) == b""


def test_send_after_lose_connection_buffers_data(connection):
    transport, _ = connection
    transport.loseConnection()

    send(transport, b"late")

    assert buffered(transport) == b"late"


def test_send_after_abort_connection_sends_nothing(connection):
    transport, peer = connection
    transport.abortConnection()

    send(transport, b"late")

    # Twisted drops every write after abortConnection: doWrite is a no-op
    # from then on, and connectionLost closes the socket on the next turn.
    assert receive_pending(peer) == b""


def test_send_after_connection_lost_sends_nothing(connection):
    transport, peer = connection
    transport.connectionLost(Failure(ConnectionDone()))

    send(transport, b"late")

    assert receive_pending(peer) == b""


def test_send_after_start_tls_does_not_write_plaintext(default_clock, reactor, sockets):
    transport, peer = connect_server(reactor, sockets)
    transport.startTLS(server_creator())

    send(transport, b"plaintext")

    assert b"plaintext" not in receive_pending(peer)


def test_send_buffers_on_tcp_subclass(reactor, sockets):
    # Unix socket transports subclass tcp.Server and add descriptor passing,
    # which the direct path would bypass.
    accepted, peer = socket.socketpair()
    sockets.extend([accepted, peer])
    protocol = Recorder()
    transport = unix.Server(accepted, protocol, ("unix", 0), None, 1, reactor)
    protocol.makeConnection(transport)

    send(transport, b"hello")

    assert receive_pending(peer) == b""


def test_send_to_string_transport_writes_data():
    transport = StringTransport()

    send(transport, b"hello")

    assert transport.value() == b"hello"


def test_send_to_string_transport_keeps_order():
    transport = StringTransport()
    transport.write(b"first ")

    send(transport, b"second")

    assert transport.value() == b"first second"


# disable_nagle()


def test_disable_nagle_sets_tcp_nodelay(reactor, sockets):
    transport, _ = connect_server(reactor, sockets)
    assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0, "TCP_NODELAY was already set"

    disable_nagle(transport)

    assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_disable_nagle_through_tls_wrapper(reactor, sockets):
    transport, _ = connect_server(reactor, sockets)
    factory = TLSMemoryBIOFactory(server_creator(), False, Factory.forProtocol(Recorder), clock=Clock())
    factory.protocol = DirectTLSProtocol
    tls_protocol = factory.buildProtocol(transport.getPeer())
    tls_protocol.makeConnection(transport)

    disable_nagle(tls_protocol)

    assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_set_read_size_on_tcp_transport(reactor, sockets):
    transport, _ = connect_server(reactor, sockets)

    set_read_size(transport, 256 * 1024)

    assert transport.bufferSize == 256 * 1024


def test_set_read_size_through_tls_wrapper(reactor, sockets):
    transport, _ = connect_server(reactor, sockets)
    factory = TLSMemoryBIOFactory(server_creator(), False, Factory.forProtocol(Recorder), clock=Clock())
    factory.protocol = DirectTLSProtocol
    tls_protocol = factory.buildProtocol(transport.getPeer())
    tls_protocol.makeConnection(transport)

    set_read_size(tls_protocol, 256 * 1024)

    assert transport.bufferSize == 256 * 1024


def test_prepare_connection_sets_no_delay(reactor, sockets):
    transport, _ = connect_server(reactor, sockets)

    prepare_connection(transport)

    assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_prepare_connection_sets_read_size(reactor, sockets):
    transport, _ = connect_server(reactor, sockets)

    prepare_connection(transport)

    assert transport.bufferSize == READ_SIZE


def test_set_read_size_leaves_string_transport_alone():
    transport = StringTransport()

    set_read_size(transport, 256 * 1024)

    assert not hasattr(transport, "bufferSize")


def test_disable_nagle_leaves_string_transport_alone():
    transport = StringTransport()
    assert not hasattr(transport, "setTcpNoDelay"), "StringTransport now has setTcpNoDelay"

    # Raises AttributeError if disable_nagle calls the missing method.
    disable_nagle(transport)


def test_disable_nagle_ignores_os_error():
    class RejectingTransport:
        def __init__(self) -> None:
            self.calls: list[bool] = []

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.calls.append(enabled)
            raise OSError("TCP_NODELAY not supported")

    transport = RejectingTransport()

    disable_nagle(transport)

    assert transport.calls == [True]


# DirectTLSProtocol and TLSClientEndpoint.


def build_tls(creator, is_client: bool, clock: Clock, transport) -> DirectTLSProtocol:
    """Wrap a `Recorder` in a `DirectTLSProtocol` and connect it to ``transport``."""
    factory = TLSMemoryBIOFactory(creator, is_client, Factory.forProtocol(Recorder), clock=clock)
    factory.protocol = DirectTLSProtocol
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    protocol.makeConnection(transport)
    return protocol


def pump_memory(client, server) -> None:
    """Move ciphertext between two TLS protocols on StringTransports until both are quiet."""
    for _ in range(20):
        to_server = client.transport.value()
        client.transport.clear()
        to_client = server.transport.value()
        server.transport.clear()
        if not to_server and not to_client:
            return
        if to_server:
            server.dataReceived(to_server)
        if to_client:
            client.dataReceived(to_client)
    raise AssertionError("TLS peers kept exchanging data after 20 rounds")


@pytest.fixture
def memory_tls():
    """A handshaken client and server DirectTLSProtocol on StringTransports, and their clock."""
    clock = Clock()
    client = build_tls(client_creator(), True, clock, StringTransport())
    server = build_tls(server_creator(), False, clock, StringTransport())
    pump_memory(client, server)
    assert client._handshakeDone, "client handshake did not finish"
    assert server._handshakeDone, "server handshake did not finish"
    return client, server, clock


def test_direct_tls_write_reaches_transport_at_once(memory_tls):
    client, _, _ = memory_tls

    client.wrappedProtocol.transport.write(b"request")

    assert client.transport.value() != b""


def test_direct_tls_write_schedules_no_call(memory_tls):
    client, _, clock = memory_tls

    client.wrappedProtocol.transport.write(b"request")

    assert clock.getDelayedCalls() == []


def test_direct_tls_write_decrypts_at_peer(memory_tls):
    client, server, _ = memory_tls
    client.wrappedProtocol.transport.write(b"request")

    server.dataReceived(client.transport.value())

    assert server.wrappedProtocol.received == b"request"


# Around one TLS record (16 KiB) and one flush (64 KiB) of plaintext.
@pytest.mark.parametrize("size", [16_384, 16_385, 40_000, 65_536, 65_537, 100_000, 300_000])
def test_direct_tls_large_write_decrypts_at_peer(memory_tls, size):
    client, server, _ = memory_tls
    payload = os.urandom(size)
    client.wrappedProtocol.transport.write(payload)

    server.dataReceived(client.transport.value())

    assert server.wrappedProtocol.received == payload


def test_direct_tls_delivers_read_in_one_call(memory_tls):
    client, server, _ = memory_tls
    client.wrappedProtocol.transport.write(os.urandom(40_000))

    server.dataReceived(client.transport.value())

    assert server.wrappedProtocol.calls == 1


def test_direct_tls_delivers_data_before_close_notify(memory_tls):
    client, server, _ = memory_tls
    client.wrappedProtocol.transport.write(b"last words")
    client.loseConnection()

    server.dataReceived(client.transport.value())

    assert server.wrappedProtocol.received == b"last words"


def handshake_over_tcp(reactor, sockets):
    """Connect a server `DirectTLSProtocol` on a loopback ``tcp.Server`` to an in-memory client; finish the handshake."""
    transport, peer = connect_server(reactor, sockets)
    clock = Clock()
    server = build_tls(server_creator(), False, clock, transport)
    client = build_tls(client_creator(), True, clock, StringTransport())

    # The client's ciphertext goes into the server by dataReceived, in place
    # of the reactor's doRead. The server's goes out through its socket.
    for _ in range(20):
        if client._handshakeDone and server._handshakeDone:
            break
        to_server = client.transport.value()
        client.transport.clear()
        if to_server:
            server.dataReceived(to_server)
        to_client = receive_pending(peer, wait=0.05)
        if to_client:
            client.dataReceived(to_client)
    assert server._handshakeDone, "server handshake did not finish"
    return server, client, peer


def test_direct_tls_on_tcp_sends_ciphertext_at_once(reactor, sockets):
    server, client, peer = handshake_over_tcp(reactor, sockets)

    server.wrappedProtocol.transport.write(b"response")
    client.dataReceived(receive_pending(peer))

    assert client.wrappedProtocol.received == b"response"


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Endpoint that connects each protocol to a StringTransport at once."""

    def __init__(self) -> None:
        self.protocol: Protocol | None = None

    def connect(self, factory) -> defer.Deferred:
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8443))
        self.protocol.makeConnection(StringTransport())
        return defer.succeed(self.protocol)


def test_tls_client_endpoint_returns_wrapped_protocol(default_clock):
    endpoint = StringEndpoint()

    connected = TLSClientEndpoint(client_creator(), endpoint).connect(Factory.forProtocol(Recorder))

    assert isinstance(connected.result, Recorder)


def test_tls_client_endpoint_uses_direct_tls_protocol(default_clock):
    endpoint = StringEndpoint()

    TLSClientEndpoint(client_creator(), endpoint).connect(Factory.forProtocol(Recorder))

    assert type(endpoint.protocol) is DirectTLSProtocol


def test_tls_client_endpoint_sends_client_hello(default_clock):
    endpoint = StringEndpoint()

    TLSClientEndpoint(client_creator(), endpoint).connect(Factory.forProtocol(Recorder))

    # A TLS handshake record starts with content type 22.
    assert endpoint.protocol.transport.value()[:1] == b"\x16"


def test_direct_tls_abort_sends_no_close_notify(reactor, sockets):
    # Twisted's TLS puts the close_notify of an abort into the TCP buffer,
    # which the abort then drops, so the peer gets a reset or an EOF without
    # close_notify. A close_notify on the wire marks the data before it as
    # complete, for example a close-delimited response to an
    # HTTP/1.0 client that the proxy aborts mid-body.
    server, client, peer = handshake_over_tcp(reactor, sockets)
    server.wrappedProtocol.transport.write(b"partial body")
    client.dataReceived(receive_pending(peer))

    server.abortConnection()

    assert receive_pending(peer) == b""
