"""Assembly of the proxy: identity first, then the listeners, then rotation.

`ProxyService` waits for the first X.509-SVID without blocking the reactor,
opens the configured listeners with TLS contexts built from it, and rebuilds
those contexts on every later update. A failure to start (no SVID in time, a
port in use) is logged with its cause and stops the reactor with exit code 1.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import threading
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from e5s_proxy import singlethread
from e5s_proxy.logs import logger, set_debug
from twisted.python.failure import Failure

from e5s_proxy.config import (
    OUTBOUND_EXPOSED_WARNING,
    Address,
    ClientConfig,
    Config,
    ServerConfig,
    is_loopback_host,
)
from e5s_proxy.forward import ListenerSettings, Timeouts
from e5s_proxy.identity import IdentitySnapshot, NoIdentityError, WorkloadApiSource
from e5s_proxy.metrics import Metrics
from e5s_proxy.inbound import InboundFactory, app_pool, describe_target, inbound_tls_factory
from e5s_proxy.outbound import OutboundFactory, UpstreamTLS, server_pool
from e5s_proxy.svid import build_authorizer
from e5s_proxy.tlsctx import ServerConnectionCreator


# Twisted's own default backlog for listenTCP.
LISTEN_BACKLOG = 50

# How often the drain checks whether every connection has closed; a tenth
# of a second adds little to shutdown and costs nothing measurable.
DRAIN_POLL_INTERVAL = 0.1


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
        worker_index: int | None = None,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._on_fatal = on_fatal
        # With several workers every one listens on the same ports with
        # SO_REUSEPORT, and only the first opens the admin listener.
        self._worker_index = worker_index
        self._reuse_port = worker_index is not None
        self.identity = identity or WorkloadApiSource(
            reactor,
            config.spire.workload_socket,
            initial_fetch_timeout=config.spire.initial_fetch_timeout,
            svid_spiffe_id=config.spire.svid_spiffe_id,
        )
        self.metrics = Metrics()
        self.metrics.watch_readiness(self.is_ready)
        self.draining = False
        self.exit_code = 0
        self.ready = defer.Deferred()  # fires once every listener is open

        self.inbound_port: IListeningPort | None = None
        self.outbound_port: IListeningPort | None = None
        self.admin_port: IListeningPort | None = None
        self._inbound_creator: ServerConnectionCreator | None = None
        self._upstream_tls: UpstreamTLS | None = None
        self._pools = []
        self._listeners: list[ListenerSettings] = []
        self._expiry_call = None

    def startService(self) -> None:
        super().startService()
        self.log.info("e5s-proxy starting with {source}", source=self.config.source)
        if singlethread.requested():
            singlethread.install(self._reactor)
            set_debug(True)
            self.log.info(
                "Single-thread debug mode: no reactor thread pool (names resolve on the reactor thread); "
                "the Workload API watcher still has its own thread"
            )
        starting = self.identity.start()
        starting.addCallback(self._open_listeners)
        starting.addErrback(self._start_failed)

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting, let in-flight requests finish up to the drain timeout, then close.

        A second SIGTERM or SIGINT during the drain closes every connection at once.
        """
        super().stopService()
        self.draining = True
        self.identity.stop()

        listening = [port for port in (self.inbound_port, self.outbound_port) if port is not None]
        stopped = defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in listening])

        open_connections = [connection for settings in self._listeners for connection in settings.connections]
        self.log.info(
            "e5s-proxy stopping: draining {count} connection(s) for up to {timeout:g}s",
            count=len(open_connections),
            timeout=self.config.drain_timeout,
        )
        for connection in open_connections:
            connection.drain()

        drained: defer.Deferred[None] = defer.Deferred()
        deadline = self._reactor.seconds() + self.config.drain_timeout
        self._install_second_signal_handler(drained)
        self._poll_drain(drained, deadline)

        def close_rest(_: object) -> defer.Deferred[None]:
            self._abort_connections()
            for pool in self._pools:
                pool.close_idle()
            if self.admin_port is not None:
                return defer.maybeDeferred(self.admin_port.stopListening)
            return defer.succeed(None)

        drained.addCallback(close_rest)
        return defer.gatherResults([stopped, drained]).addCallback(lambda _: self.log.info("e5s-proxy stopped"))

    def _open_connection_count(self) -> int:
        return sum(len(settings.connections) for settings in self._listeners)

    def _poll_drain(self, drained: defer.Deferred[None], deadline: float) -> None:
        if drained.called:
            return
        remaining = self._open_connection_count()
        if remaining == 0:
            drained.callback(None)
            return
        if self._reactor.seconds() >= deadline:
            self.log.warn("Drain timeout: closing {count} connection(s) still open", count=remaining)
            drained.callback(None)
            return
        self._reactor.callLater(DRAIN_POLL_INTERVAL, self._poll_drain, drained, deadline)

    def _abort_connections(self) -> None:
        for settings in self._listeners:
            for connection in list(settings.connections):
                connection.transport.abortConnection()

    def _install_second_signal_handler(self, drained: defer.Deferred[None]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop_now(signum: int, frame: object) -> None:
            self._reactor.callFromThread(self._stop_now, drained)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop_now)

    def _stop_now(self, drained: defer.Deferred[None]) -> None:
        if not drained.called:
            self.log.warn("Second stop signal: closing {count} connection(s) now", count=self._open_connection_count())
            drained.callback(None)

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
            if not is_loopback_host(self.config.client.listen.host):
                self.log.warn("{warning}", warning=OUTBOUND_EXPOSED_WARNING)
        if self.config.admin is not None and self._worker_index in (None, 0):
            self._open_admin()
        self._record_identity(snapshot)
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
        settings = self._listener_settings("inbound", timeouts, server)
        factory = InboundFactory(self._reactor, pool, settings, self._inbound_creator, server.peer_header)
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
        # The local app is the only client here, so a slow request head
        # gets the idle timeout rather than a key of its own.
        timeouts = Timeouts(
            request_head=client.idle_timeout,
            idle=client.idle_timeout,
            response=client.response_timeout,
        )
        settings = self._listener_settings("outbound", timeouts, client)
        factory = OutboundFactory(self._reactor, pool, settings, client)
        self.outbound_port = self._listen("client.listen_addr", client.listen, factory)
        self.log.info(
            "Outbound listening on {address}, forwarding to https://{server} (expecting {expected})",
            address=self._bound(self.outbound_port),
            server=client.server_authority,
            expected=self._upstream_tls.expected,
        )

    def _listener_settings(
        self, direction: str, timeouts: Timeouts, section: ServerConfig | ClientConfig
    ) -> ListenerSettings:
        settings = ListenerSettings(
            direction=direction,
            timeouts=timeouts,
            metrics=self.metrics,
            max_head_size=section.max_head_size,
            max_header_count=section.max_header_count,
            access_log=section.access_log,
        )
        self._listeners.append(settings)
        return settings

    def _open_admin(self) -> None:
        from e5s_proxy.admin import admin_site

        self.admin_port = self._listen("admin.listen_addr", self.config.admin.listen, admin_site(self))
        self.log.info("Admin listening on {address}", address=self._bound(self.admin_port))

    def _listen(self, key: str, address: Address, factory: object) -> IListeningPort:
        try:
            if self._reuse_port and key != "admin.listen_addr":
                return self._listen_shared(address, factory)
            return self._reactor.listenTCP(address.port, factory, interface=address.host)
        except CannotListenError as error:
            reason = error.socketError
        except OSError as error:
            reason = error
        raise StartError(
            f"{key}: cannot listen on {describe_address(address)}: {reason}; "
            "choose another port, or stop the process that uses it"
        )

    def _listen_shared(self, address: Address, factory: object) -> IListeningPort:
        """Listen with SO_REUSEPORT, so that the kernel spreads connections over the workers."""
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        host = address.host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, address.port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
            # adoptStreamPort duplicates the descriptor, so this copy is closed.
            return self._reactor.adoptStreamPort(listener.fileno(), family, factory)
        finally:
            listener.close()

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
        self._record_identity(snapshot)
        self.log.debug("TLS contexts rebuilt for {spiffe_id}", spiffe_id=str(snapshot.spiffe_id))

    def _record_identity(self, snapshot: IdentitySnapshot) -> None:
        self.metrics.identity_updates.inc()
        self.metrics.svid_expiry.set(snapshot.expires_at.timestamp())
        self._warn_missing_bundles(snapshot)

        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        seconds_left = (snapshot.expires_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        self._expiry_call = self._reactor.callLater(max(seconds_left, 0), self._check_expired, snapshot)

    def _check_expired(self, snapshot: IdentitySnapshot) -> None:
        self._expiry_call = None
        if self.identity.current is snapshot:
            self.log.error(
                "X.509-SVID {spiffe_id} expired at {expires_at} and the Workload API at {socket} sent no "
                "new one: peers will reject new handshakes and /readyz fails until the agent is back",
                spiffe_id=str(snapshot.spiffe_id),
                expires_at=snapshot.expires_at.isoformat(),
                socket=self.identity.socket_path,
            )

    def _warn_missing_bundles(self, snapshot: IdentitySnapshot) -> None:
        """Warn once per update about configured trust domains the agent gave no bundle for."""
        wanted: dict[str, str] = {}
        server, client = self.config.server, self.config.client
        if server is not None:
            for name in server.allowed_client_trust_domains:
                wanted[name] = "server.allowed_client_trust_domain"
            for spiffe_id in server.allowed_client_spiffe_ids:
                wanted[spiffe_id.trust_domain] = "server.allowed_client_spiffe_id"
        if client is not None:
            for name in client.expected_server_trust_domains:
                wanted[name] = "client.expected_server_trust_domain"
            for spiffe_id in client.expected_server_spiffe_ids:
                wanted[spiffe_id.trust_domain] = "client.expected_server_spiffe_id"
        for name, key in sorted(wanted.items()):
            if name not in snapshot.bundles:
                self.log.warn(
                    "{key} names trust domain {trust_domain}, but the Workload API gave no bundle for it, "
                    "so its peers are rejected; federate it in SPIRE (entry -federatesWith)",
                    key=key,
                    trust_domain=name,
                )

    def is_ready(self) -> bool:
        """Return whether the listeners are open and the SVID has not expired."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz fails, or None when ready."""
        snapshot = self.identity.current
        if self.exit_code:
            return "start-up failed"
        if self.draining:
            return "draining for shutdown"
        if snapshot is None:
            return f"no X.509-SVID yet from {self.identity.socket_path}"
        if not self.ready.called:
            return "listeners not open yet"
        if snapshot.expires_at <= datetime.datetime.now(datetime.timezone.utc):
            return f"X.509-SVID expired at {snapshot.expires_at.isoformat()}; the agent sent no new one"
        return None


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
