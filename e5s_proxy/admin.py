"""Admin listener: ``/healthz``, ``/readyz`` and ``/metrics`` over plaintext HTTP.

It serves operators and probes, not traffic, so it uses twisted.web and
should listen on loopback only.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
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

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def admin_site(proxy: object) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", _Text(lambda: (200, "ok\n")))
    root.putChild(b"readyz", _Text(lambda: _readiness(proxy)))
    root.putChild(b"metrics", _Metrics(proxy.metrics.registry))
    site = _QuietSite(root)
    site.displayTracebacks = False
    return site


def _readiness(proxy: object) -> tuple[int, str]:
    reason = proxy.not_ready_reason()
    if reason is None:
        return 200, "ready\n"
    return 503, f"not ready: {reason}\n"


class _QuietSite(server.Site):
    """A Site that writes no access log line: probes hit it every few seconds."""

    noisy = False

    def log(self, request: server.Request) -> None:
        pass
