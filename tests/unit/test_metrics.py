"""Request counters of the proxy's Prometheus registry."""

from __future__ import annotations

from e5s_proxy.metrics import Metrics


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_request_done_counts_status():
    metrics = Metrics()
    metrics.request_done("inbound", 200, 0, 10)
    metrics.request_done("inbound", 200, 0, 10)
    assert sample(metrics, "e5s_requests_total", {"direction": "inbound", "status": "200"}) == 2


def test_request_done_counts_body_bytes():
    metrics = Metrics()
    metrics.request_done("outbound", 201, 5, 7)
    assert sample(metrics, "e5s_body_bytes_total", {"direction": "outbound", "flow": "request"}) == 5
    assert sample(metrics, "e5s_body_bytes_total", {"direction": "outbound", "flow": "response"}) == 7


def test_request_done_keeps_statuses_apart():
    metrics = Metrics()
    metrics.request_done("inbound", 200, 0, 0)
    metrics.request_done("inbound", 502, 0, 0)
    assert sample(metrics, "e5s_requests_total", {"direction": "inbound", "status": "502"}) == 1
