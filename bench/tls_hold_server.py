"""A bare Twisted + pyOpenSSL mTLS server that accepts connections and keeps them open.

    python bench/tls_hold_server.py PORT CERT KEY CA [--release-buffers] [--malloc-trim]

It uses the same TLS stack as e5s-proxy's inbound listener (Twisted's
TLSMemoryBIOFactory over pyOpenSSL, TLS 1.3, client certificate required,
no session tickets) with no HTTP, SPIFFE or metrics code, so that
``tls_load.py idle`` against it shows how much of the memory per idle
connection belongs to that stack. ``--release-buffers`` sets OpenSSL's
SSL_MODE_RELEASE_BUFFERS, which frees a connection's record buffers while
it is idle. ``--malloc-trim`` calls glibc's malloc_trim(0) every 2 s, to tell
live memory from freed memory that the allocator keeps. It listens on
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import ctypes

from twisted.internet import epollreactor

epollreactor.install()

from OpenSSL import SSL  # noqa: E402
from twisted.internet import protocol, reactor  # noqa: E402
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402
from zope.interface import implementer  # noqa: E402


def build_context(cert: str, key: str, ca: str, release_buffers: bool) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(key)
    context.load_verify_locations(ca)
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if release_buffers:
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda connection, cert, errno, depth, ok: bool(ok))
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ConnectionCreator:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


def main() -> None:
    parser = argparse.ArgumentParser(description="Accept mTLS connections on 127.0.0.1 and keep them open.")
    parser.add_argument("port", type=int)
    parser.add_argument("cert", help="server certificate chain (PEM)")
    parser.add_argument("key", help="server private key (PEM)")
    parser.add_argument("ca", help="bundle that client certificates must chain to (PEM)")
    parser.add_argument("--release-buffers", action="store_true", help="set SSL_MODE_RELEASE_BUFFERS")
    parser.add_argument("--malloc-trim", action="store_true", help="call malloc_trim(0) every 2 seconds")
    arguments = parser.parse_args()

    context = build_context(arguments.cert, arguments.key, arguments.ca, arguments.release_buffers)
    factory = TLSMemoryBIOFactory(ConnectionCreator(context), False, protocol.Factory.forProtocol(protocol.Protocol))
    reactor.listenTCP(arguments.port, factory, interface="127.0.0.1")
    if arguments.malloc_trim:
        libc = ctypes.CDLL("libc.so.6")
        LoopingCall(libc.malloc_trim, 0).start(2.0)
    reactor.run()


if __name__ == "__main__":
    main()
