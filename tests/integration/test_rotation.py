"""Traffic across X.509-SVID rotations on real SPIRE (30 s TTL, renewed at half-life)."""

from __future__ import annotations

import http.client
import time

import pytest

pytestmark = pytest.mark.spire

UPDATE_LINE = "New X.509 identity"

# Long enough to see a rotation on both proxies (SPIRE renews a 30 s SVID
# after about 15 s); capped so a proxy that never rotates fails the test.
MIN_TRAFFIC_SECONDS = 35
MAX_TRAFFIC_SECONDS = 90


def request(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status


def test_traffic_across_rotation_fails_no_request(inbound, outbound):
    inbound_before = inbound.proxy.log_text().count(UPDATE_LINE)
    outbound_before = outbound.proxy.log_text().count(UPDATE_LINE)
    keep_alive = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
    failures: list[str] = []
    sent = 0

    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        rotated = (
            inbound.proxy.log_text().count(UPDATE_LINE) > inbound_before
            and outbound.proxy.log_text().count(UPDATE_LINE) > outbound_before
        )
        if elapsed > MAX_TRAFFIC_SECONDS or (elapsed > MIN_TRAFFIC_SECONDS and rotated):
            break

        status = request(keep_alive, f"/rotation/keepalive/{sent}")
        if status != 200:
            failures.append(f"keep-alive request {sent}: {status}")
        fresh = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
        status = request(fresh, f"/rotation/new/{sent}")
        fresh.close()
        if status != 200:
            failures.append(f"new-connection request {sent}: {status}")
        sent += 2
        time.sleep(0.05)
    keep_alive.close()

    assert failures == []
    assert inbound.proxy.log_text().count(UPDATE_LINE) > inbound_before
    assert outbound.proxy.log_text().count(UPDATE_LINE) > outbound_before
