"""Inbound listener: SPIFFE mTLS from clients, plaintext HTTP/1.1 to the local app.

The client's certificate is checked during the handshake (see `tlsctx`).
A connection that completes it carries a verified SPIFFE ID, which replaces
every client-supplied copy of the peer header on each request it sends.
"""

from __future__ import annotations

import datetime
from twisted.internet import protocol
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from e5s_proxy.config import AppTarget
from e5s_proxy.forward import Forwarder, ListenerSettings
from e5s_proxy.logs import RepeatLimiter
from e5s_proxy.http import RequestHead, request_head_for_app
from e5s_proxy.pool import ConnectError, ConnectionPool, describe_connect_failure
from e5s_proxy.transport import DirectTLSProtocol
from e5s_proxy.tlsctx import ServerConnectionCreator, describe_tls_error


def describe_target(target: AppTarget) -> str:
    if target.unix_path is not None:
        return f"unix:{target.unix_path}"
    host = f"[{target.host}]" if ":" in (target.host or "") else target.host
    return f"{host}:{target.port}"


def app_pool(reactor: IReactorTime, target: AppTarget, *, connect_timeout: float, idle_timeout: float) -> ConnectionPool:
    """Pool of plaintext keep-alive connections to the local app."""
    shown = describe_target(target)

    def endpoint_for_app():
        if target.unix_path is not None:
            endpoint = UNIXClientEndpoint(reactor, target.unix_path, timeout=connect_timeout)
        else:
            endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=connect_timeout)
        return endpoint, lambda failure: describe_connect_failure(f"the app at {shown}", failure)

    return ConnectionPool(
        reactor,
        endpoint_for_app,
        tls=False,
        connect_timeout=connect_timeout,
        # Connections to a local app are cheap to open; a few idle ones
        # cover bursts without holding the app's file descriptors.
        max_idle=64,
        idle_timeout=idle_timeout,
    )


@implementer(IHandshakeListener)
class InboundConnection(Forwarder):
    """One client connection, after TLS: requests go to the app with the verified peer header."""

    def __init__(
        self,
        reactor: IReactorTime,
        pool: ConnectionPool,
        settings: ListenerSettings,
        creator: ServerConnectionCreator,
        peer_header: bytes,
        rejections: RepeatLimiter,
    ) -> None:
        super().__init__(reactor, pool, settings)
        self._creator = creator
        self._peer_header = peer_header
        self._peer_id: bytes | None = None
        self._rejections = rejections
        self._expiry_call = None

    def handshakeCompleted(self) -> None:
        verdict = self._creator.verdict_for(self.transport)
        if verdict is None or verdict.spiffe_id is None:
            # OpenSSL accepted a handshake our callback did not approve:
            # fail closed rather than forward without an identity.
            self.log.error("inbound: handshake with {peer} finished without a verified SPIFFE ID", peer=self.peer)
            self.transport.abortConnection()
            return
        self._peer_id = str(verdict.spiffe_id).encode("ascii")
        self.peer_id = str(verdict.spiffe_id)
        self._metrics.handshakes.labels("accepted").inc()
        expires = _leaf_expiry(self.transport)
        self.log.debug(
            "inbound: accepted {peer} as {spiffe_id}, certificate expires {expires}",
            peer=self.peer,
            spiffe_id=self.peer_id,
            expires=expires.isoformat() if expires else "unknown",
        )
        if expires is not None:
            # The identity checked at the handshake is only valid until the
            # client's certificate expires; a keep-alive connection must not
            # carry it longer.
            seconds = (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
            self._expiry_call = self._reactor.callLater(max(seconds, 0), self._peer_certificate_expired)

    def _peer_certificate_expired(self) -> None:
        self._expiry_call = None
        self.log.info(
            "inbound: client certificate of {spiffe_id} ({peer}) expired; closing after the request in progress",
            spiffe_id=self.peer_id,
            peer=self.peer,
        )
        self.drain()

    def connect_failed(self, error: ConnectError) -> None:
        # The client is another workload: the app's address and the socket
        # error are for this proxy's log, not for the response body.
        self.log.warn(
            "inbound: cannot reach the app for {peer} ({spiffe_id}): {reason}",
            peer=self.peer,
            spiffe_id=self.peer_id,
            reason=error.reason,
        )
        text = "the app did not accept the connection in time" if error.status == 504 else "the app is unavailable"
        self._answer_and_close(error.status, text)

    def head_for_upstream(self, head: RequestHead) -> bytes:
        if self._peer_id is None:
            raise ValueError("request before a verified TLS handshake")
        return request_head_for_app(head, peer_header=self._peer_header, peer_id=self._peer_id)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        if self._peer_id is None:
            self._log_rejected_handshake(reason)
        super().connectionLost(reason)

    def _log_rejected_handshake(self, reason: Failure) -> None:
        if getattr(self.transport, "bytes_received", 1) == 0:
            # A TCP probe (a port check, a load balancer) that never started
            # TLS: not worth an info line per probe.
            self.log.debug("inbound: {peer} closed before starting TLS", peer=self.peer)
            return

        verdict = self._creator.verdict_for(self.transport)
        presented = verdict.presented_id if verdict is not None else None
        if verdict is not None and verdict.error is not None:
            why, kind = verdict.error, verdict.kind or "invalid_svid"
        else:
            # The verify callback never decided: the client sent no
            # certificate, or the handshake failed before the check.
            why, kind = f"no client certificate or TLS failure ({describe_tls_error(reason.value)})", "no_certificate"
        self._metrics.handshakes.labels("rejected").inc()
        self._metrics.rejections.labels("inbound", kind).inc()

        held_back = self._rejections.check((self.peer.rsplit(":", 1)[0], kind))
        if held_back is None:
            return
        self.log.info(
            "inbound: rejected TLS handshake from {peer}, presented SPIFFE ID {spiffe_id}: {reason}{repeats}",
            peer=self.peer,
            spiffe_id=str(presented) if presented else "(none)",
            reason=why,
            repeats=f" ({held_back} similar rejections from this host not logged)" if held_back else "",
        )


def _leaf_expiry(tls_transport: object) -> datetime.datetime | None:
    certificate = tls_transport.getPeerCertificate()
    if certificate is None:
        return None
    return certificate.to_cryptography().not_valid_after_utc


class InboundFactory(protocol.Factory):
    noisy = False

    def __init__(
        self,
        reactor: IReactorTime,
        pool: ConnectionPool,
        settings: ListenerSettings,
        creator: ServerConnectionCreator,
        peer_header: str,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._settings = settings
        self._creator = creator
        self._peer_header = peer_header.encode("ascii")
        self._rejections = RepeatLimiter(reactor)

    def buildProtocol(self, addr: object) -> InboundConnection:
        connection = InboundConnection(
            self._reactor, self._pool, self._settings, self._creator, self._peer_header, self._rejections
        )
        connection.factory = self
        return connection


class _CountingTLSProtocol(DirectTLSProtocol):
    """TLS that counts the bytes received, to tell port probes apart from failed handshakes."""

    bytes_received = 0

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        super().dataReceived(data)


def inbound_tls_factory(factory: InboundFactory, creator: ServerConnectionCreator) -> TLSMemoryBIOFactory:
    """Wrap the inbound factory in TLS whose contexts come from ``creator``."""
    tls_factory = TLSMemoryBIOFactory(creator, False, factory)
    tls_factory.protocol = _CountingTLSProtocol
    tls_factory.noisy = False
    return tls_factory
