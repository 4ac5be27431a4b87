"""Writing to Twisted transports with fewer system calls and no wait.

A Twisted TCP transport buffers every write and sends it when the reactor
next finds the socket writable: two ``epoll_ctl`` calls and a reactor turn per
write. A proxy then moves requests in convoys: it reads a batch of requests,
and none leaves until the whole batch is parsed, so the next hop idles while
this one works. ``send`` writes at once when nothing is buffered, which is
the common case, and leaves the rest to the transport.

``DirectTLSProtocol`` does the same for the ciphertext that TLS produces,
and ``TLSClientEndpoint`` wraps a client endpoint in it.
"""

from __future__ import annotations

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from OpenSSL.SSL import WantReadError

# Transports whose internals ``send`` knows. Subclasses (Unix sockets with
# descriptor passing, TLS started in the transport itself) write their own way.
_DIRECT_TYPES = (tcp.Server, tcp.Client)

# As much ciphertext as Twisted's TLS protocol reads from OpenSSL at once.
_TLS_READ_SIZE = 2**15


def send(transport: object, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending what the socket takes right away.

    The direct path is taken only when the transport has nothing buffered, so
    bytes never overtake earlier ones. A send that fails or is short falls
    back to the transport's own buffered write, which then reports errors and
    applies backpressure as usual.
    """
    if type(transport) in _DIRECT_TYPES and data and _idle(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # Would block, interrupted, or broken: the buffered write below
            # retries it and, on a real error, closes the connection.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _idle(transport: tcp.Connection) -> bool:
    return (
        transport.connected
        and not transport.disconnecting
        and not transport._aborting
        and not transport._writeDisconnected
        and not transport.TLS
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


def disable_nagle(transport: object) -> None:
    """Send small writes at once instead of holding them for the peer's ACK.

    A proxy writes a head and a body, or a request and the next one, in
    separate calls; with Nagle's algorithm the second waits for the ACK of
    the first, which the peer may delay. TLS wrappers pass the call on to
    their TCP transport. Transports without the option (in-memory test
    transports) are left alone, and Unix sockets ignore it.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except OSError:
        pass


class DirectTLSProtocol(TLSMemoryBIOProtocol):
    """TLS whose ciphertext goes out through ``send``.

    Each plaintext write becomes a TLS record at once; the protocols above
    gather their writes into one where it matters (a response head and its
    body), which costs less than Twisted's buffering TLS transport, whose
    writes wait for the next reactor turn.
    """

    def _flushSendBIO(self) -> None:
        try:
            data = self._tlsConnection.bio_read(_TLS_READ_SIZE)
        except WantReadError:
            return
        send(self.transport, data)


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """Connect through ``endpoint``, then run TLS from ``creator`` with `DirectTLSProtocol`."""

    def __init__(self, creator: object, endpoint: IStreamClientEndpoint) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, factory: IProtocolFactory) -> defer.Deferred:
        tls_factory = TLSMemoryBIOFactory(self._creator, True, factory)
        tls_factory.protocol = DirectTLSProtocol
        tls_factory.noisy = False
        connecting = self._endpoint.connect(tls_factory)
        connecting.addCallback(lambda tls_protocol: tls_protocol.wrappedProtocol)
        return connecting
