"""Outbound listener: plaintext HTTP/1.1 from the local app, SPIFFE mTLS to the server.

Requests go over pooled keep-alive mTLS connections to ``client.server_url``.
The server's SPIFFE ID is checked in place of a host name. When it does not
match, the local app gets a 502 whose body names the expected and the
presented IDs.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from e5s_proxy.config import ClientConfig
from e5s_proxy.forward import Forwarder, ListenerSettings
from e5s_proxy.http import RequestHead, request_head_for_upstream
from e5s_proxy.identity import IdentitySnapshot
from e5s_proxy.pool import ConnectError, ConnectionPool
from e5s_proxy.svid import ChainVerifier, build_authorizer, describe_expected
from e5s_proxy.transport import TLSClientEndpoint
from e5s_proxy.tlsctx import ClientConnectionCreator, build_client_context, describe_tls_error


class UpstreamTLS:
    """The newest client context and the policy for the server's SPIFFE ID."""

    def __init__(self, config: ClientConfig, snapshot: IdentitySnapshot) -> None:
        self._config = config
        self._authorizer = build_authorizer(config.expected_server_spiffe_ids, config.expected_server_trust_domains)
        self.expected = describe_expected(config.expected_server_spiffe_ids, config.expected_server_trust_domains)
        self.update(snapshot)

    def update(self, snapshot: IdentitySnapshot) -> None:
        context = build_client_context(snapshot)
        self._verifier, self._context = ChainVerifier(snapshot.bundles), context

    def creator(self) -> ClientConnectionCreator:
        host = self._config.server_host
        server_name = None if _is_ip_literal(host) else host
        return ClientConnectionCreator(self._verifier, self._context, self._authorizer, server_name)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_pool(reactor: IReactorTime, config: ClientConfig, tls: UpstreamTLS) -> ConnectionPool:
    """Pool of mTLS keep-alive connections to the configured server."""
    authority = config.server_authority

    def endpoint_for_server():
        creator = tls.creator()
        tcp = HostnameEndpoint(reactor, config.server_host, config.server_port, timeout=config.connect_timeout)
        endpoint = TLSClientEndpoint(creator, tcp)
        return endpoint, lambda failure: explain_server_failure(authority, tls.expected, creator, failure)

    return ConnectionPool(
        reactor,
        endpoint_for_server,
        tls=True,
        connect_timeout=config.connect_timeout,
        max_idle=config.max_idle_connections,
        idle_timeout=config.idle_timeout,
    )


def explain_server_failure(
    authority: str, expected: str, creator: ClientConnectionCreator, failure: Failure
) -> ConnectError:
    """Turn a failed connect or handshake into the 502 or 504 sent to the local app."""
    verdict = creator.verdict
    if verdict.error is not None:
        presented = str(verdict.presented_id) if verdict.presented_id else "no valid SPIFFE ID"
        return ConnectError(
            f"server {authority} presented SPIFFE ID {presented}, expected {expected}: {verdict.error}",
            502,
            "identity",
        )
    if failure.check(error.TimeoutError, defer.TimeoutError):
        return ConnectError(f"timed out connecting to server {authority}", 504, "timeout")
    if failure.check(SSL.Error):
        return ConnectError(f"TLS handshake with server {authority} failed: {describe_tls_error(failure.value)}", 502)
    return ConnectError(f"cannot connect to server {authority}: {failure.getErrorMessage()}", 502)


class OutboundConnection(Forwarder):
    """One local plaintext connection from the app."""

    def __init__(self, reactor: IReactorTime, pool: ConnectionPool, settings: ListenerSettings, config: ClientConfig) -> None:
        super().__init__(reactor, pool, settings)
        self._authority = config.server_authority.encode("ascii")
        self._path_prefix = config.server_path_prefix.encode("ascii")

    def head_for_upstream(self, head: RequestHead) -> bytes:
        return request_head_for_upstream(head, authority=self._authority, path_prefix=self._path_prefix)


class OutboundFactory(protocol.Factory):
    noisy = False

    def __init__(self, reactor: IReactorTime, pool: ConnectionPool, settings: ListenerSettings, config: ClientConfig) -> None:
        self._reactor = reactor
        self._pool = pool
        self._settings = settings
        self._config = config

    def buildProtocol(self, addr: object) -> OutboundConnection:
        connection = OutboundConnection(self._reactor, self._pool, self._settings, self._config)
        connection.factory = self
        return connection
