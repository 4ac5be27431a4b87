"""Prometheus metrics of one proxy, in a registry of its own.

Protocols call the small recording methods; the admin listener renders the
registry. Label values come from fixed sets (directions, outcomes, reason
kinds, status codes), never from peer input, so cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry

        self.connections = Counter(
            "e5s_connections", "Accepted downstream connections.", ["direction"], registry=registry
        )
        self.active_connections = Gauge(
            "e5s_active_connections", "Open downstream connections.", ["direction"], registry=registry
        )
        self.handshakes = Counter(
            "e5s_handshakes", "Inbound TLS handshakes by outcome.", ["outcome"], registry=registry
        )
        self.rejections = Counter(
            "e5s_rejections",
            "Rejected peers and requests by reason: an SVID check kind, no_certificate, bad_request.",
            ["direction", "reason"],
            registry=registry,
        )
        self.requests = Counter(
            "e5s_requests", "Completed requests by response status.", ["direction", "status"], registry=registry
        )
        self.upstream_errors = Counter(
            "e5s_upstream_errors",
            "Failed upstream exchanges: connect, timeout, identity or bad_response.",
            ["direction", "kind"],
            registry=registry,
        )
        self.bytes = Counter(
            "e5s_body_bytes", "Body bytes relayed, by flow (request or response).", ["direction", "flow"], registry=registry
        )
        self.identity_updates = Counter(
            "e5s_identity_updates", "X.509 contexts received from the Workload API.", registry=registry
        )
        self.svid_expiry = Gauge(
            "e5s_svid_expiry_timestamp_seconds", "Expiry of the current X.509-SVID (Unix time).", registry=registry
        )
        self.ready = Gauge("e5s_ready", "1 when the listeners are open and the SVID is valid.", registry=registry)
        self._request_children: dict[tuple[str, int], tuple[Counter, Counter, Counter]] = {}

    def watch_readiness(self, is_ready: Callable[[], bool]) -> None:
        self.ready.set_function(lambda: 1.0 if is_ready() else 0.0)

    def request_done(self, direction: str, status: int, request_bytes: int, response_bytes: int) -> None:
        # labels() costs a lock and a dict lookup per call; on the request
        # path the children are looked up once and kept.
        key = (direction, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(direction, str(status)),
                self.bytes.labels(direction, "request"),
                self.bytes.labels(direction, "response"),
            )
            self._request_children[key] = children
        requests, request_body, response_body = children
        requests.inc()
        if request_bytes:
            request_body.inc(request_bytes)
        if response_bytes:
            response_body.inc(response_bytes)
