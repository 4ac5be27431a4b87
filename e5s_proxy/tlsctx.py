"""pyOpenSSL contexts and per-connection peer checks built from an identity snapshot.

A context is built once per snapshot and never changed afterwards: a rotation
builds a new one, new connections take the newest, and established
connections keep the context they were made with.

OpenSSL is given no trust store. Its verify callback defers every depth
except the leaf, collects the chain the peer sent, and at depth 0 has the
snapshot's `svid.ChainVerifier` check it against the bundle of the peer's
own trust domain, then runs the authorizer. A rejection makes OpenSSL fail
the handshake with an alert.
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from e5s_proxy.logs import logger
from zope.interface import implementer

from e5s_proxy.identity import IdentitySnapshot
from e5s_proxy.spiffeid import SpiffeId
from e5s_proxy.svid import Authorizer, ChainVerifier, SvidError

ALPN_HTTP11 = b"http/1.1"

# The peer chain OpenSSL will walk: leaf, SPIRE's intermediate(s) and an
# upstream authority leave plenty of room at 8.
MAX_CHAIN_DEPTH = 8

log = logger(__name__)


@dataclass
class PeerVerdict:
    """The outcome of one connection's peer check, filled in by the verify callback."""

    spiffe_id: SpiffeId | None = None  # set when the peer was accepted
    presented_id: SpiffeId | None = None  # what the peer claimed, accepted or not
    error: str | None = None  # why the peer was rejected
    kind: str | None = None  # SvidError.kind of the rejection, for metrics


Clock = Callable[[], datetime.datetime]


def describe_tls_error(error: BaseException) -> str:
    """Turn pyOpenSSL's list of (library, function, reason) tuples into readable text."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(str(reason) for reason in reasons)
    return str(error) or type(error).__name__


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _load_identity(context: SSL.Context, snapshot: IdentitySnapshot) -> None:
    leaf, *intermediates = snapshot.chain
    context.use_certificate(leaf)
    for cert in intermediates:
        context.add_extra_chain_cert(cert)
    context.use_privatekey(snapshot.private_key)
    context.check_privatekey()


def _select_http11(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    # A client that offers ALPN without http/1.1 gets no protocol selected
    # rather than an alert: HTTP/1.1 is all this proxy speaks either way.
    if ALPN_HTTP11 in offered:
        return ALPN_HTTP11
    return SSL.NO_OVERLAPPING_PROTOCOLS


def build_server_context(snapshot: IdentitySnapshot, *, min_version: int = SSL.TLS1_3_VERSION) -> SSL.Context:
    """Build the inbound context: our SVID, a client certificate required."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(min_version)
    # Idle keep-alive connections then hold no read and write buffers: about
    # 22 KiB less per connection, measured with bench/tls_hold_server.py.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    _load_identity(context, snapshot)
    context.set_verify_depth(MAX_CHAIN_DEPTH)
    context.set_alpn_select_callback(_select_http11)
    # No resumption: a resumed session skips the client certificate check,
    # and the check must see the newest bundle.
    # TODO: allow session tickets bound to one context once benchmarks show the gain.
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


def build_client_context(snapshot: IdentitySnapshot, *, min_version: int = SSL.TLS1_3_VERSION) -> SSL.Context:
    """Build the outbound context: our SVID as the client certificate."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(min_version)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    _load_identity(context, snapshot)
    context.set_verify_depth(MAX_CHAIN_DEPTH)
    context.set_alpn_protos([ALPN_HTTP11])
    return context


def make_verify_callback(
    verifier: ChainVerifier,
    authorizer: Authorizer,
    verdict: PeerVerdict,
    clock: Clock = utc_now,
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """Return an OpenSSL verify callback for one connection.

    OpenSSL calls it for each certificate of the chain it built from what the
    peer sent, deepest first and the leaf last. Depths above 0 are collected
    and passed; the whole decision is taken at depth 0. The callback may run
    more than once at depth 0 (once per OpenSSL error plus once at the end),
    so the decision is taken once and repeated.
    """
    collected: dict[int, crypto.X509] = {}
    decided: list[bool] = []

    def verify(connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        collected[depth] = cert
        if depth != 0:
            return True
        if decided:
            return decided[0]

        chain = [collected[d] for d in sorted(collected)]
        try:
            spiffe_id = verifier.verify(chain, clock())
            verdict.presented_id = spiffe_id
            authorizer(spiffe_id)
        except SvidError as error:
            verdict.presented_id = error.presented_id
            verdict.error = error.reason
            verdict.kind = error.kind
            decided.append(False)
        except Exception as error:
            # A bug of ours must still fail closed; it is logged with its traceback.
            log.failure("Peer certificate check failed unexpectedly")
            verdict.error = f"internal error while checking the peer certificate: {error}"
            verdict.kind = "internal_error"
            decided.append(False)
        else:
            verdict.spiffe_id = spiffe_id
            decided.append(True)

        return decided[0]

    return verify


_VERIFY_FLAGS = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnectionCreator:
    """Makes each inbound TLS connection from the newest context.

    `verdict_for` gives the protocol the outcome of its connection's client
    certificate check, so a rejection can be logged with the peer address.
    """

    def __init__(self, snapshot: IdentitySnapshot, authorizer: Authorizer, clock: Clock = utc_now) -> None:
        self._authorizer = authorizer
        self._clock = clock
        self._verdicts: weakref.WeakKeyDictionary[object, PeerVerdict] = weakref.WeakKeyDictionary()
        self.update(snapshot)

    def update(self, snapshot: IdentitySnapshot) -> None:
        """Use ``snapshot`` for connections from now on; built before it is swapped in."""
        context = build_server_context(snapshot)
        self._verifier, self._context = ChainVerifier(snapshot.bundles), context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        verdict = self._verdicts[tlsProtocol] = PeerVerdict()
        callback = make_verify_callback(self._verifier, self._authorizer, verdict, self._clock)
        connection.set_verify(_VERIFY_FLAGS, callback)
        return connection

    def verdict_for(self, tls_protocol: object) -> PeerVerdict | None:
        return self._verdicts.get(tls_protocol)


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnectionCreator:
    """Makes one outbound TLS connection and records the server's verdict.

    The server's SPIFFE ID takes the place of a host name check; ``verdict``
    carries the expected-versus-presented detail for a 502 body.
    """

    def __init__(
        self,
        verifier: ChainVerifier,
        context: SSL.Context,
        authorizer: Authorizer,
        server_name: str | None,
        clock: Clock = utc_now,
    ) -> None:
        self._verifier = verifier
        self._context = context
        self._authorizer = authorizer
        self._server_name = server_name
        self._clock = clock
        self.verdict = PeerVerdict()

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name.encode("idna"))
        callback = make_verify_callback(self._verifier, self._authorizer, self.verdict, self._clock)
        connection.set_verify(_VERIFY_FLAGS, callback)
        return connection
