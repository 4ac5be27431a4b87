"""Upstream HTTP/1.1 connections and the keep-alive pool that reuses them.

An `UpstreamConnection` carries one exchange at a time: the forwarder calls
`begin`, writes the request, and receives the response as events through its
`ResponseListener`. When both directions of the exchange are complete and the
server allowed keep-alive, the connection goes back to its `ConnectionPool`,
which hands it to the next request or closes it after an idle timeout.

Both directions use this module: inbound pools plaintext connections to the
local app, outbound pools mTLS connections to the remote server.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IReactorTime,
    IStreamClientEndpoint,
)
from e5s_proxy.logs import logger
from twisted.python.failure import Failure
from zope.interface import implementer

from e5s_proxy.http import EndOfMessage, HttpError, ResponseHead, ResponseReader
from e5s_proxy.transport import prepare_connection, send


# A pooled mTLS connection is not reused within this many seconds of its
# client or server certificate expiring: the server closes connections whose
# client certificate expired, and a request sent just then would race it.
REUSE_MARGIN = 2.0


class ResponseListener(TypingProtocol):
    """The interface through which an upstream connection delivers one response."""

    def response_event(self, event: object) -> None: ...

    def hold_writes(self) -> None: ...

    def flush_writes(self) -> None: ...

    def response_failed(self, reason: str, status: int) -> None: ...

    def tunnel_data(self, data: bytes) -> None: ...

    def tunnel_closed(self) -> None: ...


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class UpstreamConnection(protocol.Protocol):
    """One connection to the app or to the remote server.

    ``ready`` fires when the connection can carry a request: on connect for
    plaintext, after the handshake (and the server's SPIFFE ID check) for TLS.
    It fails with the connection's close reason if it closes before that.
    """

    log = logger()

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.ready: defer.Deferred[UpstreamConnection] = defer.Deferred()
        self.reader = ResponseReader()
        self.listener: ResponseListener | None = None
        self.pool: ConnectionPool | None = None
        self.reusable = True
        self.closed = False
        self.idle_until = 0.0  # when a pooled idle connection expires
        self.tunnel: ResponseListener | None = None
        self.expires_at: float | None = None  # Unix time after which the connection is not reused (TLS only)
        self.reused = False  # taken from the pool's idle connections, not freshly opened
        self.exchange_bytes = 0  # bytes received during the current exchange

    def connectionMade(self) -> None:
        prepare_connection(self.transport)
        if not self.tls:
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        if not self.tls or self.ready.called:
            return
        certificates = [self.transport.getPeerCertificate(), self.transport.getHandle().get_certificate()]
        expiries = [cert.to_cryptography().not_valid_after_utc.timestamp() for cert in certificates if cert is not None]
        if expiries:
            self.expires_at = min(expiries) - REUSE_MARGIN
        self.ready.callback(self)

    def expired(self, now: float) -> bool:
        """Whether either certificate is about to expire, so the connection must not carry new requests."""
        return self.expires_at is not None and now >= self.expires_at

    def begin(self, listener: ResponseListener, method: bytes, *, upgrade: bool = False) -> None:
        """Start an exchange; the request head and body follow with `write`."""
        self.listener = listener
        self.exchange_bytes = 0
        self.reader.expect(method, upgrade=upgrade)

    def start_tunnel(self) -> bytes:
        """Relay raw bytes to the listener from now on; return those already read.

        Called after a 101 response: the connection now carries another
        protocol and never returns to the pool.
        """
        self.tunnel, self.listener = self.listener, None
        self.reusable = False
        self.pool = None
        return self.reader.take_remaining()

    def write(self, data: bytes) -> None:
        send(self.transport, data)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_data(data)
            return

        self.exchange_bytes += len(data)
        if self.listener is None:
            # Bytes from an idle connection belong to no request, so the
            # connection cannot be trusted to frame the next response.
            self.log.warn("Upstream sent {count} bytes while idle; closing it", count=len(data))
            self.abort()
            return

        try:
            events = self.reader.feed(data)
        except HttpError as exc:
            self._fail(exc.reason, exc.status)
            return
        self._dispatch(events)

    def _dispatch(self, events: list[object]) -> None:
        # The events of one read usually make one write to the client.
        receiver = self.listener
        if receiver is None or not events:
            return
        receiver.hold_writes()
        try:
            for event in events:
                listener = self.listener
                if listener is None:
                    return
                if isinstance(event, ResponseHead) and not event.keep_alive:
                    self.reusable = False
                listener.response_event(event)
        finally:
            receiver.flush_writes()

    def readConnectionLost(self) -> None:
        """End a tunnel's direction when the upstream half-closed, or treat it as a close."""
        if self.tunnel is not None:
            self.tunnel.tunnel_closed()
            return
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        self.reusable = False
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel_closed()
            return
        if not self.ready.called:
            self.ready.errback(reason)
            return
        if self.pool is not None:
            self.pool.forget(self)

        if self.listener is None:
            return
        try:
            events = self.reader.feed_eof()
        except HttpError as exc:
            self._fail(exc.reason, exc.status)
            return
        self._dispatch(events)
        if self.listener is not None:
            self._fail("upstream closed the connection before the response was complete", 502)

    def _fail(self, reason: str, status: int) -> None:
        listener, self.listener = self.listener, None
        self.reusable = False
        self.abort()
        if listener is not None:
            listener.response_failed(reason, status)

    def finish(self) -> None:
        """End the current exchange; the connection is reused when it can be."""
        self.listener = None
        if self.pool is not None and self.reusable and not self.closed:
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()


class ConnectError(Exception):
    """The pool could not open a connection; ``status`` is 502 or 504.

    ``kind`` labels the failure for metrics: connect, timeout or identity.
    """

    def __init__(self, reason: str, status: int = 502, kind: str = "connect") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.kind = kind


EndpointFactory = Callable[[], tuple[IStreamClientEndpoint, Callable[[Failure], ConnectError]]]
"""Returns an endpoint for one new connection, and how to explain its failure."""


class _UpstreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, tls: bool) -> None:
        self.tls = tls

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        return UpstreamConnection(self.tls)


class ConnectionPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    log = logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint_factory: EndpointFactory,
        *,
        tls: bool,
        connect_timeout: float,
        max_idle: int,
        idle_timeout: float,
    ) -> None:
        self._reactor = reactor
        self._endpoint_factory = endpoint_factory
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        # Oldest on the left, so expiry times rise from left to right; one
        # call, armed for the leftmost, expires them all.
        self._idle: deque[UpstreamConnection] = deque()
        self._expiry_call: IDelayedCall | None = None

    def take_idle(self) -> UpstreamConnection | None:
        """Return the most recently used idle connection that can carry a request, if any."""
        now = time.time()
        idle_now = self._reactor.seconds()
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            if connection.expired(now) or connection.idle_until <= idle_now:
                # A certificate about to expire, or an idle timeout whose
                # call is late: the server may be closing it already.
                connection.abort()
                continue
            connection.reused = True
            return connection
        return None

    def acquire(self) -> defer.Deferred[UpstreamConnection]:
        """Return an idle connection, or open a new one."""
        connection = self.take_idle()
        if connection is not None:
            return defer.succeed(connection)

        endpoint, explain = self._endpoint_factory()
        connecting = endpoint.connect(_UpstreamFactory(self._tls))
        opened: list[UpstreamConnection] = []

        def connected(connection: UpstreamConnection) -> defer.Deferred[UpstreamConnection]:
            opened.append(connection)
            return connection.ready

        def usable(connection: UpstreamConnection) -> UpstreamConnection:
            connection.pool = self
            return connection

        def failed(failure: Failure) -> Failure:
            for connection in opened:
                connection.abort()
            return Failure(explain(failure))

        connecting.addCallback(connected)
        connecting.addTimeout(self._connect_timeout, self._reactor)
        connecting.addCallbacks(usable, failed)
        return connecting

    def release(self, connection: UpstreamConnection) -> None:
        if len(self._idle) >= self._max_idle:
            connection.abort()
            return
        connection.idle_until = self._reactor.seconds() + self._idle_timeout
        self._idle.append(connection)
        if self._expiry_call is None:
            self._expiry_call = self._reactor.callLater(self._idle_timeout, self._expire_idle)

    def forget(self, connection: UpstreamConnection) -> None:
        """Drop a connection that closed, idle or not."""
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def close_idle(self) -> None:
        if self._expiry_call is not None:
            self._expiry_call.cancel()
            self._expiry_call = None
        while self._idle:
            self._idle.pop().abort()

    def _expire_idle(self) -> None:
        self._expiry_call = None
        now = self._reactor.seconds()
        while self._idle and self._idle[0].idle_until <= now:
            connection = self._idle.popleft()
            if connection.transport is not None:
                connection.transport.loseConnection()
        if self._idle:
            self._expiry_call = self._reactor.callLater(self._idle[0].idle_until - now, self._expire_idle)


def describe_connect_failure(target: str, failure: Failure) -> ConnectError:
    """Explain a plain TCP or Unix connect failure to the local app or a server."""
    if failure.check(error.TimeoutError, defer.TimeoutError):
        return ConnectError(f"timed out connecting to {target}", 504, "timeout")
    return ConnectError(f"cannot connect to {target}: {failure.getErrorMessage()}", 502)
