"""Admin listener: ``/healthz``, ``/readyz`` and ``/metrics`` over plaintext HTTP.

It serves operators and probes, not traffic, so it uses twisted.web and
should listen on loopback only.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from twisted.web import resource, server


class _Text(resource.Resource):
    isLeaf = True

    def __init__(self, render_text) -> None:
        super().__init__()
        self._render_text = render_text

    def render_GET(self, request: server.Request) -> bytes:
        status, body = self._render_text()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return body.encode("utf-8")


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, proxy: object) -> None:
        super().__init__()
        self._registry = CollectorRegistry()
        expiry = Gauge(
            "e5s_svid_expiry_timestamp_seconds",
            "Expiry time of the current X.509-SVID, as a Unix timestamp.",
            registry=self._registry,
        )
        expiry.set_function(
            lambda: proxy.identity.current.expires_at.timestamp() if proxy.identity.current else 0.0
        )
        rotations = Gauge(
            "e5s_identity_updates",
            "X.509 contexts received from the Workload API since start.",
            registry=self._registry,
        )
        rotations.set_function(lambda: proxy.identity.updates)
        ready = Gauge("e5s_ready", "1 when the listeners are open and the SVID is valid.", registry=self._registry)
        ready.set_function(lambda: 1.0 if proxy.is_ready() else 0.0)

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def admin_site(proxy: object) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", _Text(lambda: (200, "ok\n")))
    root.putChild(
        b"readyz",
        _Text(lambda: (200, "ready\n") if proxy.is_ready() else (503, "not ready: no valid SVID or listeners down\n")),
    )
    root.putChild(b"metrics", _Metrics(proxy))
    site = server.Site(root)
    site.displayTracebacks = False
    return site
