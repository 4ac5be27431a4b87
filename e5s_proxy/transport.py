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
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError

# Transports whose buffer fields ``send`` reads. Subclasses (Unix sockets with
# descriptor passing, for one) write their own way and get the buffered write.
_DIRECT_TYPES = (tcp.Server, tcp.Client)

# As much as Twisted's TLS protocol reads from OpenSSL at once, ciphertext
# or plaintext. A larger size costs an allocation of that size per read.
_TLS_READ_SIZE = 2**15

# Plaintext encrypted before its ciphertext is sent: four full TLS records.
_TLS_WRITE_SIZE = 2**16

# Bytes per read from a socket. It also bounds the bytes waiting to be
# written before the other side stops reading. Twisted's default is 64 KiB,
# and a larger size moves large bodies in fewer steps.
READ_SIZE = 256 * 1024


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
            # The socket would block, or failed. The buffered write below
            # retries later and, on a real error, closes the connection.
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


def prepare_connection(transport: object) -> None:
    """Set TCP_NODELAY and the read size of `READ_SIZE` on a new connection's transport."""
    disable_nagle(transport)
    set_read_size(transport, READ_SIZE)


def set_read_size(transport: object, size: int) -> None:
    """Read up to ``size`` bytes per read on a TCP transport (under TLS too); others are left alone.

    Twisted reads 64 KiB at most. Twisted also pauses a registered producer
    once this many bytes wait to be written, so it bounds buffering as well.
    """
    while type(transport) not in _DIRECT_TYPES:
        if not isinstance(transport, TLSMemoryBIOProtocol):
            return
        transport = transport.transport
    transport.bufferSize = size


def disable_nagle(transport: object) -> None:
    """Set TCP_NODELAY, so that small writes leave at once instead of waiting for the peer's ACK.

    A proxy may write a head and a body in separate calls. With Nagle's
    algorithm the second write waits for the ACK of the first, which the
    peer may delay. TLS wrappers pass the call on to their TCP transport. Transports without the option (in-memory test
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
    """TLS that moves bytes in fewer, larger pieces than Twisted's own.

    - Ciphertext goes out through ``send`` as soon as OpenSSL produces it.
      The protocols above join their writes where it matters (a response
      head and its body). That costs less than Twisted's buffering TLS
      transport, whose writes wait for the next reactor turn.
    - A write sends the ciphertext of up to four records in one system
      call, where Twisted makes one per 16 KiB record, and it slices the
      plaintext without copying it.
    - The plaintext of all records that one read decrypts reaches the
      protocol in one ``dataReceived`` call, where Twisted makes one per record.
    """

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        tls = self._tlsConnection
        # pyOpenSSL turns partial writes on, so OpenSSL takes one record per
        # call; the rest is passed again as a view, without copying.
        view = memoryview(data)
        offset = flushed = 0
        while offset < len(data):
            try:
                offset += tls.send(view[offset:])
            except WantReadError:
                # OpenSSL must read before it can write, as during a handshake. Twisted buffers the rest.
                self._bufferedWrite(bytes(view[offset:]))
                break
            except Error:
                # Twisted's own handling: the protocol's connectionLost gets this failure.
                self._tlsShutdownFinished(Failure())
                return
            if offset - flushed >= _TLS_WRITE_SIZE or offset == len(data):
                flushed = offset
                self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        if self._aborted:
            # Twisted buffers the close_notify of an abort and the abort drops
            # it. Sent, it would mark a cut close-delimited body as complete.
            return
        tls = self._tlsConnection
        pieces = []
        while True:
            try:
                piece = tls.bio_read(_TLS_READ_SIZE)
            except WantReadError:
                break
            pieces.append(piece)
            if len(piece) < _TLS_READ_SIZE:
                # A memory BIO returns everything it contains, up to the size requested.
                break
        if pieces:
            send(self.transport, pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _flushReceiveBIO(self) -> None:
        tls = self._tlsConnection
        received = []
        closed = False
        failure = None
        while not self._lostTLSConnection:
            try:
                received.append(tls.recv(_TLS_READ_SIZE))
            except WantReadError:
                break
            except ZeroReturnError:
                closed = True
                break
            except Error:
                failure = Failure()
                break
        if received and not self._aborted:
            ProtocolWrapper.dataReceived(self, received[0] if len(received) == 1 else b"".join(received))
        if closed and not self._lostTLSConnection:
            # The peer sent close_notify. Passing None makes the protocol's
            # connectionLost get the TCP transport's close reason, as in Twisted.
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        elif failure is not None and not self._lostTLSConnection:
            self._tlsShutdownFinished(failure)
        # Handshake and shutdown messages may be waiting to go out.
        self._flushSendBIO()


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
