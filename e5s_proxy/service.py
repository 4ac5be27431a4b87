"""Assembly of the proxy: identity first, then the listeners, then rotation.

`ProxyService` waits for the first X.509-SVID without blocking the reactor,
opens the configured listeners with TLS contexts built from it, and rebuilds
those contexts on every later update. A failure to start (no SVID in time, a
port in use) is logged with its cause and stops the reactor with exit code 1.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from e5s_proxy.logs import logger
from twisted.python.failure import Failure

from e5s_proxy.config import Address, Config
from e5s_proxy.forward import Timeouts
from e5s_proxy.identity import IdentitySnapshot, NoIdentityError, WorkloadApiSource
from e5s_proxy.inbound import InboundFactory, app_pool, describe_target, inbound_tls_factory
from e5s_proxy.outbound import OutboundFactory, UpstreamTLS, server_pool
from e5s_proxy.svid import build_authorizer
from e5s_proxy.tlsctx import ServerConnectionCreator


def describe_address(address: Address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{host}:{address.port}"


class ProxyService(service.Service):
    """The whole proxy as one Twisted service."""

    log = logger()

    def __init__(
        self,
        config: Config,
        reactor: object,
        *,
        on_fatal: Callable[[int], None] | None = None,
        identity: WorkloadApiSource | None = None,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._on_fatal = on_fatal
        self.identity = identity or WorkloadApiSource(
            reactor,
            config.spire.workload_socket,
            initial_fetch_timeout=config.spire.initial_fetch_timeout,
        )
        self.exit_code = 0
        self.ready = defer.Deferred()  # fires once every listener is open

        self.inbound_port: IListeningPort | None = None
        self.outbound_port: IListeningPort | None = None
        self.admin_port: IListeningPort | None = None
        self._inbound_creator: ServerConnectionCreator | None = None
        self._upstream_tls: UpstreamTLS | None = None
        self._pools = []
        self.rotations = 0

    def startService(self) -> None:
        super().startService()
        self.log.info("e5s-proxy starting with {source}", source=self.config.source)
        starting = self.identity.start()
        starting.addCallback(self._open_listeners)
        starting.addErrback(self._start_failed)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.identity.stop()
        for pool in self._pools:
            pool.close_idle()

        stopping = [
            defer.maybeDeferred(port.stopListening)
            for port in (self.inbound_port, self.outbound_port, self.admin_port)
            if port is not None
        ]
        self.log.info("e5s-proxy stopping")
        return defer.gatherResults(stopping).addCallback(lambda _: None)

    # Start-up.

    def _open_listeners(self, snapshot: IdentitySnapshot) -> None:
        self.log.info(
            "Got X.509-SVID {spiffe_id}, expires {expires_at}",
            spiffe_id=str(snapshot.spiffe_id),
            expires_at=snapshot.expires_at.isoformat(),
        )
        if self.config.server is not None:
            self._open_inbound(snapshot)
        if self.config.client is not None:
            self._open_outbound(snapshot)
        if self.config.admin is not None:
            self._open_admin()
        self.identity.subscribe(self._rotate)
        self.ready.callback(None)

    def _open_inbound(self, snapshot: IdentitySnapshot) -> None:
        server = self.config.server
        authorizer = build_authorizer(server.allowed_client_spiffe_ids, server.allowed_client_trust_domains)
        self._inbound_creator = ServerConnectionCreator(snapshot, authorizer)
        pool = app_pool(
            self._reactor,
            server.target,
            connect_timeout=server.app_connect_timeout,
            idle_timeout=server.idle_timeout,
        )
        self._pools.append(pool)
        timeouts = Timeouts(
            request_head=server.request_head_timeout,
            idle=server.idle_timeout,
            response=server.app_response_timeout,
        )
        factory = InboundFactory(self._reactor, pool, timeouts, self._inbound_creator, server.peer_header)
        self.inbound_port = self._listen("server.listen_addr", server.listen, inbound_tls_factory(factory, self._inbound_creator))
        self.log.info(
            "Inbound listening on {address} (mTLS), forwarding to {target}",
            address=self._bound(self.inbound_port),
            target=describe_target(server.target),
        )

    def _open_outbound(self, snapshot: IdentitySnapshot) -> None:
        client = self.config.client
        self._upstream_tls = UpstreamTLS(client, snapshot)
        pool = server_pool(self._reactor, client, self._upstream_tls)
        self._pools.append(pool)
        timeouts = Timeouts(
            request_head=client.idle_timeout,
            idle=client.idle_timeout,
            response=client.response_timeout,
        )
        factory = OutboundFactory(self._reactor, pool, timeouts, client)
        self.outbound_port = self._listen("client.listen_addr", client.listen, factory)
        self.log.info(
            "Outbound listening on {address}, forwarding to https://{server} (expecting {expected})",
            address=self._bound(self.outbound_port),
            server=client.server_authority,
            expected=self._upstream_tls.expected,
        )

    def _open_admin(self) -> None:
        from e5s_proxy.admin import admin_site

        self.admin_port = self._listen("admin.listen_addr", self.config.admin.listen, admin_site(self))
        self.log.info("Admin listening on {address}", address=self._bound(self.admin_port))

    def _listen(self, key: str, address: Address, factory: object) -> IListeningPort:
        try:
            return self._reactor.listenTCP(address.port, factory, interface=address.host)
        except Exception as error:
            raise StartError(f"{key}: cannot listen on {describe_address(address)}: {error}") from None

    @staticmethod
    def _bound(port: IListeningPort) -> str:
        host = port.getHost()
        return f"{host.host}:{host.port}"

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(NoIdentityError, StartError):
            self.log.critical("e5s-proxy cannot start: {reason}", reason=failure.getErrorMessage())
        else:
            self.log.failure("e5s-proxy cannot start", failure)
        self.exit_code = 1
        if not self.ready.called:
            self.ready.errback(failure)
            self.ready.addErrback(lambda _: None)
        if self._on_fatal is not None:
            self._on_fatal(1)

    # Rotation.

    def _rotate(self, snapshot: IdentitySnapshot) -> None:
        if self._inbound_creator is not None:
            self._inbound_creator.update(snapshot)
        if self._upstream_tls is not None:
            self._upstream_tls.update(snapshot)
        self.rotations += 1
        self.log.debug("TLS contexts rebuilt for {spiffe_id}", spiffe_id=str(snapshot.spiffe_id))

    def is_ready(self) -> bool:
        """Whether the listeners are open and the SVID has not expired."""
        snapshot = self.identity.current
        if not self.ready.called or snapshot is None or self.exit_code:
            return False
        return snapshot.expires_at > datetime.datetime.now(datetime.timezone.utc)


class StartError(Exception):
    """A listener could not be opened."""


def stop_reactor_with(reactor: object, service_object: ProxyService) -> Callable[[int], None]:
    """Return an ``on_fatal`` that stops the reactor; the exit code stays on the service."""

    def stop(code: int) -> None:
        service_object.exit_code = code
        if reactor.running:
            reactor.stop()

    return stop


def exit_after_shutdown(reactor: object) -> Callable[[int], None]:
    """Return an ``on_fatal`` for twistd, which has no way to set an exit code.

    NOTE: ``os._exit`` after the shutdown triggers skips twistd's removal of
    its pid file; a start-up failure is the only path that takes it.
    """

    def stop(code: int) -> None:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, code)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    return stop
