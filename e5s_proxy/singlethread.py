"""Debug mode with the least concurrency: no reactor thread pool.

Twisted resolves host names with getaddrinfo on its thread pool. With
``E5S_DEBUG_SINGLE_THREAD=1`` the proxy installs `BlockingResolver`, which
calls getaddrinfo on the reactor thread, so the pool is never started and a
step debugger finds only the reactor thread. The Workload API watcher (and
the gRPC threads under it) still run beside it, since the Workload API
stream is blocking. A slow DNS server blocks the whole reactor in this mode,
so it is for debugging, not for production.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from zope.interface import implementer

ENVIRONMENT_VARIABLE = "E5S_DEBUG_SINGLE_THREAD"


def requested() -> bool:
    return os.environ.get(ENVIRONMENT_VARIABLE, "") not in ("", "0", "false")


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class BlockingResolver:
    """Resolve names with getaddrinfo on the calling (reactor) thread."""

    def resolveHostName(
        self,
        resolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes=None,
        transportSemantics: str = "TCP",
    ):
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        try:
            results = socket.getaddrinfo(hostName, portNumber, 0, socket.SOCK_STREAM)
        except OSError:
            results = []
        for family, _, _, _, address in results:
            if family == socket.AF_INET:
                resolutionReceiver.addressResolved(IPv4Address("TCP", address[0], address[1]))
            elif family == socket.AF_INET6:
                resolutionReceiver.addressResolved(IPv6Address("TCP", address[0], address[1]))
        resolutionReceiver.resolutionComplete()
        return resolution


def install(reactor: object) -> None:
    """Make the reactor resolve names without its thread pool."""
    reactor.installNameResolver(BlockingResolver())
