"""The downstream side of both listeners: HTTP/1.1 requests in, one exchange at a time.

`Forwarder` feeds the client's bytes to the sans-IO `RequestReader`, sends
each request through an upstream connection from a `ConnectionPool`, and
streams the response back. Pipelined requests wait in order until the
exchange before them is complete, so responses keep the order of requests.
Bodies stream with producers registered both ways: a slow reader on either
side pauses the writer on the other.

Subclasses decide how a request head is rewritten for the upstream
(`head_for_upstream`) and what a failed connect means (`connect_failed`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer, IReactorTime
from e5s_proxy.logs import logger
from twisted.python.failure import Failure
from zope.interface import implementer

from e5s_proxy.http import (
    LAST_CHUNK,
    MAX_HEAD_SIZE,
    MAX_HEADER_COUNT,
    Data,
    EndOfMessage,
    Framing,
    HttpError,
    RequestHead,
    RequestReader,
    ResponseHead,
    encode_chunk,
    response_head_for_client,
    simple_response,
)
from e5s_proxy.metrics import Metrics
from e5s_proxy.pool import ConnectError, ConnectionPool, UpstreamConnection
from e5s_proxy.transport import prepare_connection, send

# The connection timer is armed no further ahead than the shortest timeout,
# and no less than this many seconds, so an idle connection wakes rarely.
TIMER_STEP_FLOOR = 1.0


@dataclass(frozen=True)
class Timeouts:
    """Per-connection timeouts in seconds; the config documents each default."""

    request_head: float  # first byte of a request head to its end (slowloris)
    idle: float  # keep-alive connection with no request in progress
    response: float  # request forwarded to the first byte of the response head


@dataclass
class ListenerSettings:
    """Settings shared by every connection of one listener."""

    direction: str  # "inbound" or "outbound", for logs and metrics
    timeouts: Timeouts
    metrics: Metrics
    max_head_size: int = MAX_HEAD_SIZE
    max_header_count: int = MAX_HEADER_COUNT
    access_log: bool = False
    connections: set[Forwarder] = field(default_factory=set)  # open connections, for drain


@implementer(IPushProducer)
class ReadGate:
    """Pauses a transport's reading while any reason to pause remains.

    The forwarder pauses for its own reasons (waiting for an upstream, a
    pipelined request queued); the other side pauses it as a registered
    producer when its write buffer is full. A plain transport pause would let
    one reason's resume cancel another's pause.
    """

    def __init__(self, transport: object) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._transport.resumeProducing()

    def release(self) -> None:
        """Resume reading for good: a closing connection must see the peer's close."""
        if self._reasons:
            self._reasons.clear()
            self._transport.resumeProducing()

    def pauseProducing(self) -> None:
        self.pause("write buffer full")

    def resumeProducing(self) -> None:
        self.resume("write buffer full")

    def stopProducing(self) -> None:
        # The consumer closed; the forwarder's own connectionLost handling
        # decides what happens to this side.
        pass


@dataclass
class _Rejection:
    """A parse error whose 400 is sent once the exchange in progress ends."""

    status: int
    reason: str


@dataclass
class Exchange:
    """One request and its response, from the request head to both ends."""

    head: RequestHead
    upstream_head: bytes
    upstream: UpstreamConnection | None = None
    upstream_gate: ReadGate | None = None
    request_done: bool = False
    response_started: bool = False
    response_done: bool = False
    interim: bool = False
    switching: bool = False  # a 101 was relayed; the tunnel starts at its end
    chunk_response: bool = False
    keep_alive: bool = True
    status: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    started: float = 0.0
    retried: bool = False


@implementer(IHalfCloseableProtocol)
class Forwarder(protocol.Protocol):
    """One downstream connection; see the module docstring."""

    log = logger()

    def __init__(self, reactor: IReactorTime, pool: ConnectionPool, settings: ListenerSettings) -> None:
        self._reactor = reactor
        self._pool = pool
        self._settings = settings
        self._timeouts = settings.timeouts
        self._metrics = settings.metrics
        self.direction = settings.direction

        self._reader = RequestReader(max_head_size=settings.max_head_size, max_header_count=settings.max_header_count)
        self._pending: deque[object] = deque()
        self._exchange: Exchange | None = None
        self._closing = False
        self._gate: ReadGate | None = None
        # One armed call serves the idle, request head and response timeouts:
        # `_set_timer` moves a deadline, and the call re-arms itself for what
        # is left when it fires early. A kept-alive request then schedules no
        # call of its own. It is armed at most `_timer_step` ahead.
        self._timer: IDelayedCall | None = None
        self._timer_kind = ""
        self._deadline = 0.0
        timeouts = self._timeouts
        self._timer_step = max(TIMER_STEP_FLOOR, min(timeouts.request_head, timeouts.idle, timeouts.response))
        self._tunnel: UpstreamConnection | None = None
        self._close_call: IDelayedCall | None = None
        self._lost = False
        self._client_eof = False
        self._draining = False
        self._held_writes: list[bytes] | None = None
        self.peer_id = "-"  # the verified SPIFFE ID, for access logs (inbound only)
        self.peer = "?"

    # Subclass hooks.

    def head_for_upstream(self, head: RequestHead) -> bytes:
        raise NotImplementedError

    def connect_failed(self, error: ConnectError) -> None:
        self.log.warn(
            "{direction}: cannot reach upstream for {peer}: {reason}",
            direction=self.direction,
            peer=self.peer,
            reason=error.reason,
        )
        self._answer_and_close(error.status, error.reason)

    # Connection lifetime.

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}".rstrip(":")
        prepare_connection(self.transport)
        self._gate = ReadGate(self.transport)
        self._set_timer("idle", self._timeouts.idle)
        self._settings.connections.add(self)
        self._metrics.connections.labels(self.direction).inc()
        self._metrics.active_connections.labels(self.direction).inc()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        if self in self._settings.connections:
            self._settings.connections.discard(self)
            self._metrics.active_connections.labels(self.direction).dec()
        self._closing = True
        self._stop_timer()
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        if self._tunnel is not None:
            tunnel, self._tunnel = self._tunnel, None
            self._unregister_tunnel(tunnel)
            tunnel.transport.loseConnection()
            return
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            if exchange.upstream is not None:
                self._detach(exchange)
                exchange.upstream.abort()

    def readConnectionLost(self) -> None:
        """Finish the requests of a client that half-closed (plaintext only), then close."""
        if self._tunnel is not None:
            self._end_tunnel_write(self._tunnel)
            return
        self._client_eof = True
        try:
            self._reader.feed_eof()
        except HttpError as error:
            self._pending.append(_Rejection(error.status, error.reason))
            self._pump()
            return
        if self._exchange is None and not self._pending:
            self._close()

    def writeConnectionLost(self) -> None:
        pass

    def drain(self) -> None:
        """Close once the exchange in progress ends; close now if there is none."""
        self._draining = True
        if self._tunnel is None and self._exchange is None and not self._closing:
            self._close()

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._closing:
            return
        if self._exchange is None and not self._pending and self._timer_kind != "request head":
            self._set_timer("request head", self._timeouts.request_head)

        try:
            events = self._reader.feed(data)
        except HttpError as error:
            events = []
            self._pending.append(_Rejection(error.status, error.reason))
        if events and self._reader.error is not None:
            # Whole requests before the bad bytes get their responses first,
            # then the rejection closes the connection. The request the error cut
            # short is dropped, so none of it reaches the upstream.
            complete = len(events)
            while complete and not isinstance(events[complete - 1], EndOfMessage):
                complete -= 1
            events = events[:complete]
            events.append(_Rejection(self._reader.error.status, self._reader.error.reason))
        self._pending.extend(events)
        self._pump()

    # Requests.

    def _pump(self) -> None:
        while self._pending and not self._closing:
            event = self._pending[0]
            exchange = self._exchange

            if exchange is None:
                self._pending.popleft()
                if isinstance(event, _Rejection):
                    self._reject(event)
                    return
                if isinstance(event, RequestHead):
                    self._start_exchange(event)
                continue

            if exchange.upstream is None or exchange.request_done:
                break

            self._pending.popleft()
            if isinstance(event, _Rejection):
                # The request in progress is cut short by bad framing after it.
                self._pending.appendleft(event)
                self._abort_exchange(exchange, 400, event.reason)
                return
            self._request_event(exchange, event)

        if self._gate is not None and not self._closing:
            if self._pending:
                self._gate.pause("request queued")
            else:
                self._gate.resume("request queued")
            if self._reader.paused:
                # Bytes after an upgrade request wait, unparsed, for the
                # server's response. Reading stops so they cannot pile up.
                self._gate.pause("upgrade pending")

    def _start_exchange(self, head: RequestHead) -> None:
        self._cancel_timer()
        try:
            upstream_head = self.head_for_upstream(head)
        except ValueError as error:
            self._reject(_Rejection(400, str(error)))
            return

        exchange = self._exchange = Exchange(
            head=head, upstream_head=upstream_head, keep_alive=head.keep_alive, started=self._reactor.seconds()
        )
        upstream = self._pool.take_idle()
        if upstream is not None:
            # The common case with keep-alive: no pause, no Deferred.
            self._upstream_ready(exchange, upstream)
            return
        self._gate.pause("connecting upstream")
        self._pool.acquire().addCallbacks(
            lambda upstream: self._upstream_ready(exchange, upstream),
            lambda failure: self._upstream_failed(exchange, failure),
        )

    def _upstream_ready(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        if self._exchange is not exchange:
            upstream.finish()
            return

        exchange.upstream = upstream
        exchange.upstream_gate = ReadGate(upstream.transport)
        upstream.begin(self, exchange.head.method, upgrade=exchange.head.upgrade is not None)
        upstream.write(exchange.upstream_head)
        upstream.transport.registerProducer(self._gate, True)
        self.transport.registerProducer(exchange.upstream_gate, True)

        self._set_timer("response", self._timeouts.response)
        self._gate.resume("connecting upstream")
        self._pump()

    def _upstream_failed(self, exchange: Exchange, failure: Failure) -> None:
        if self._exchange is not exchange or self._closing:
            return
        if failure.check(ConnectError):
            self._metrics.upstream_errors.labels(self.direction, failure.value.kind).inc()
            self._metrics.requests.labels(self.direction, str(failure.value.status)).inc()
            self.connect_failed(failure.value)
            return
        self.log.failure("{direction}: unexpected error connecting upstream", failure, direction=self.direction)
        self._answer_and_close(502, "upstream connection failed")

    def _request_event(self, exchange: Exchange, event: object) -> None:
        upstream = exchange.upstream
        chunked = exchange.head.framing is Framing.CHUNKED
        if isinstance(event, Data):
            exchange.request_bytes += len(event.data)
            upstream.write(encode_chunk(event.data) if chunked else event.data)
        elif isinstance(event, EndOfMessage):
            if chunked:
                upstream.write(LAST_CHUNK)
            exchange.request_done = True
            if exchange.response_done:
                self._finish_exchange(exchange)

    # Responses, called by the upstream connection (ResponseListener).

    def hold_writes(self) -> None:
        """Gather writes to the client until `flush_writes`, to send a response head and body as one."""
        if self._held_writes is None:
            self._held_writes = []

    def flush_writes(self) -> None:
        pieces, self._held_writes = self._held_writes, None
        if pieces:
            send(self.transport, pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _write(self, data: bytes) -> None:
        if self._held_writes is not None:
            self._held_writes.append(data)
        else:
            send(self.transport, data)

    def response_event(self, event: object) -> None:
        exchange = self._exchange
        if exchange is None:
            return

        if isinstance(event, ResponseHead):
            self._response_head(exchange, event)
        elif isinstance(event, Data):
            if event.data:
                exchange.response_bytes += len(event.data)
                self._write(encode_chunk(event.data) if exchange.chunk_response else event.data)
        elif isinstance(event, EndOfMessage):
            if exchange.switching:
                self._start_tunnel(exchange)
                return
            if exchange.interim:
                exchange.interim = False
                return
            if exchange.chunk_response:
                self._write(LAST_CHUNK)
            exchange.response_done = True
            if not exchange.request_done:
                # The server answered before the whole request arrived: the
                # rest of the request body has nowhere to go, so this
                # connection ends after the response.
                exchange.keep_alive = False
            self._finish_exchange(exchange)

    def _response_head(self, exchange: Exchange, head: ResponseHead) -> None:
        if head.status == 101:
            # The reader only lets a 101 through for a request that asked
            # for an upgrade; the tunnel starts after its end of message.
            switch_head, _, _ = response_head_for_client(
                head, request_method=exchange.head.method, client_version=exchange.head.version, keep_alive=True
            )
            self._cancel_response_timer()
            exchange.switching = True
            exchange.response_started = True
            exchange.status = 101
            self._write(switch_head)
            return

        if 100 <= head.status < 200:
            exchange.interim = True
            if exchange.head.version == b"1.1":
                interim_head, _, _ = response_head_for_client(
                    head, request_method=exchange.head.method, client_version=b"1.1", keep_alive=True
                )
                self._write(interim_head)
            return

        self._cancel_response_timer()
        # The server's own keep-alive choice concerns the upstream connection
        # only; the client's connection stays open unless the client asked
        # for close.
        keep_alive = exchange.keep_alive and not self._closing and not self._draining
        response_head, chunk_body, keep_alive = response_head_for_client(
            head,
            request_method=exchange.head.method,
            client_version=exchange.head.version,
            keep_alive=keep_alive,
        )
        exchange.keep_alive = keep_alive
        exchange.chunk_response = chunk_body
        exchange.response_started = True
        exchange.status = head.status
        self._write(response_head)

    # Tunnels after 101 Switching Protocols.

    def _start_tunnel(self, exchange: Exchange) -> None:
        upstream = exchange.upstream
        self._exchange = None
        self._tunnel = upstream
        self._cancel_timer()
        self.log.debug(
            "{direction}: {peer} switched to {protocol}; relaying bytes",
            direction=self.direction,
            peer=self.peer,
            protocol=exchange.head.upgrade.decode("latin-1"),
        )

        from_upstream = upstream.start_tunnel()
        from_client = self._reader.take_remaining()
        self._pending.clear()
        self._gate.resume("request queued")
        self._gate.resume("upgrade pending")
        if from_upstream:
            self._write(from_upstream)
        if from_client:
            upstream.write(from_client)
        if self._client_eof:
            self._end_tunnel_write(upstream)

    def tunnel_data(self, data: bytes) -> None:
        self._write(data)

    def tunnel_closed(self) -> None:
        """Close this side once its writes are sent, because the upstream side of the tunnel ended."""
        if self._tunnel is not None:
            self._unregister_tunnel(self._tunnel)
        if not self._closing:
            self._close()

    def _unregister_tunnel(self, tunnel: UpstreamConnection) -> None:
        # A transport with a registered producer waits for it before closing.
        if tunnel.transport is not None and not tunnel.closed:
            tunnel.transport.unregisterProducer()
        if not self._lost:
            self.transport.unregisterProducer()

    @staticmethod
    def _end_tunnel_write(upstream: UpstreamConnection) -> None:
        # A plaintext upstream (the local app) can be half-closed; over TLS,
        # Twisted offers no half-close, so the connection closes after its
        # pending writes.
        if IHalfCloseableProtocol.providedBy(upstream) and not upstream.tls:
            upstream.transport.loseWriteConnection()
        else:
            upstream.transport.loseConnection()

    def response_failed(self, reason: str, status: int) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if self._can_retry(exchange, status):
            self._retry(exchange, reason)
            return
        self._metrics.upstream_errors.labels(self.direction, "timeout" if status == 504 else "bad_response").inc()
        self.log.warn(
            "{direction}: bad or missing upstream response for {peer} ({method} {target}): {reason}",
            direction=self.direction,
            peer=self.peer,
            method=exchange.head.method.decode("latin-1"),
            target=exchange.head.target.decode("latin-1"),
            reason=reason,
        )
        self._abort_exchange(exchange, status, reason)

    def _can_retry(self, exchange: Exchange, status: int) -> bool:
        """Whether a failed exchange may be sent again on a new connection.

        Only a request without a body qualifies, sent on a pooled connection
        that the server closed before sending a single byte. A server closing
        an idle keep-alive connection races with the next request, and such a
        request can be replayed from its head alone.
        """
        upstream = exchange.upstream
        return (
            status == 502
            and not exchange.retried
            and not exchange.response_started
            and exchange.head.framing is Framing.NONE
            and exchange.head.upgrade is None
            and upstream is not None
            and upstream.reused
            and upstream.exchange_bytes == 0
        )

    def _retry(self, exchange: Exchange, reason: str) -> None:
        self.log.debug(
            "{direction}: pooled connection closed before answering {method} {target} ({reason}); retrying once",
            direction=self.direction,
            method=exchange.head.method.decode("latin-1"),
            target=exchange.head.target.decode("latin-1"),
            reason=reason,
        )
        self._cancel_response_timer()
        self._detach(exchange)
        exchange.upstream.abort()
        exchange.upstream = None
        exchange.retried = True
        self._gate.pause("connecting upstream")
        self._pool.acquire().addCallbacks(
            lambda upstream: self._upstream_ready(exchange, upstream),
            lambda failure: self._upstream_failed(exchange, failure),
        )

    # Ending exchanges and connections.

    def _finish_exchange(self, exchange: Exchange) -> None:
        self._cancel_response_timer()
        self._detach(exchange)
        self._exchange = None
        self._record(exchange)

        if exchange.request_done and exchange.response_done:
            exchange.upstream.finish()
        else:
            exchange.upstream.abort()

        if not exchange.keep_alive or self._draining or (self._client_eof and not self._pending):
            self._close()
            return

        if self._reader.paused:
            # The server declined the upgrade: HTTP/1.1 goes on.
            self._gate.resume("upgrade pending")
            try:
                self._pending.extend(self._reader.resume())
            except HttpError as error:
                self._pending.append(_Rejection(error.status, error.reason))

        self._set_timer("idle", self._timeouts.idle)
        self._pump()

    def _abort_exchange(self, exchange: Exchange, status: int, reason: str) -> None:
        """End an exchange that failed; answer with ``status`` if nothing was sent yet."""
        self._cancel_response_timer()
        if exchange.upstream is not None:
            self._detach(exchange)
            exchange.upstream.abort()
        self._exchange = None

        if exchange.response_started:
            self._closing = True
            self.transport.abortConnection()
        else:
            exchange.status = status
            self._answer_and_close(status, reason)
        self._record(exchange)

    def _record(self, exchange: Exchange) -> None:
        """Count a finished exchange, and write its access log line when enabled."""
        self._metrics.request_done(self.direction, exchange.status, exchange.request_bytes, exchange.response_bytes)
        if not self._settings.access_log:
            return
        self.log.info(
            "access {direction} {peer} {spiffe_id} \"{method} {target}\" {status} {size} {duration_ms}ms",
            direction=self.direction,
            peer=self.peer,
            spiffe_id=self.peer_id,
            method=exchange.head.method.decode("latin-1"),
            target=exchange.head.target.decode("latin-1"),
            status=exchange.status,
            size=exchange.response_bytes,
            duration_ms=round((self._reactor.seconds() - exchange.started) * 1000),
        )

    def _detach(self, exchange: Exchange) -> None:
        upstream = exchange.upstream
        if upstream is None or exchange.upstream_gate is None:
            return
        exchange.upstream_gate.resume("write buffer full")
        exchange.upstream_gate = None
        if upstream.transport is not None and not upstream.closed:
            upstream.transport.unregisterProducer()
        self.transport.unregisterProducer()
        if self._gate is not None:
            self._gate.resume("write buffer full")

    def _reject(self, rejection: _Rejection) -> None:
        self._metrics.rejections.labels(self.direction, "bad_request").inc()
        self._metrics.requests.labels(self.direction, str(rejection.status)).inc()
        self.log.info(
            "{direction}: rejected request from {peer} with {status}: {reason}",
            direction=self.direction,
            peer=self.peer,
            status=rejection.status,
            reason=rejection.reason,
        )
        self._answer_and_close(rejection.status, rejection.reason)

    def _answer_and_close(self, status: int, reason: str) -> None:
        self._pending.clear()
        self._cancel_timer()
        self._write(simple_response(status, reason))
        self._close()

    def _close(self) -> None:
        """Close once queued writes are sent, and abort if that takes longer than the idle timeout.

        A TLS close waits for the peer's close_notify, and a peer that never
        sends it (or never reads) would hold the connection open for good.
        """
        self._closing = True
        self.flush_writes()
        if self._gate is not None:
            # A paused transport would never notice the peer closing.
            self._gate.release()
        self.transport.loseConnection()
        if self._close_call is None and not self._lost:
            self._close_call = self._reactor.callLater(self._timeouts.idle, self._abort_unclosed)

    def _abort_unclosed(self) -> None:
        self._close_call = None
        if not self._lost:
            self.log.debug("{direction}: {peer} did not finish closing; aborting", direction=self.direction, peer=self.peer)
            self.transport.abortConnection()

    # Timers.

    def _set_timer(self, kind: str, seconds: float) -> None:
        """Time out as ``kind`` after ``seconds``, replacing the deadline set before."""
        self._timer_kind = kind
        self._deadline = self._reactor.seconds() + seconds
        timer = self._timer
        if timer is not None:
            if timer.getTime() <= self._deadline:
                return
            timer.cancel()
        self._timer = self._reactor.callLater(min(seconds, self._timer_step), self._timer_fired)

    def _cancel_timer(self) -> None:
        # The armed call stays for the next deadline; alone, it finds no kind and stops.
        self._timer_kind = ""

    def _cancel_response_timer(self) -> None:
        if self._timer_kind == "response":
            self._timer_kind = ""

    def _stop_timer(self) -> None:
        self._timer_kind = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if not kind:
            return
        left = self._deadline - self._reactor.seconds()
        if left > 0:
            self._timer = self._reactor.callLater(min(left, self._timer_step), self._timer_fired)
            return
        self._timer_kind = ""
        if kind == "request head":
            self.log.info("{direction}: request head from {peer} timed out", direction=self.direction, peer=self.peer)
            self._answer_and_close(408, "request head not received in time")
        elif kind == "response":
            self.response_failed(f"no response within {self._timeouts.response:g}s", 504)
        else:
            self._close()

