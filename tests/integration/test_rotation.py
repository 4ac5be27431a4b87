"""Traffic across X.509-SVID rotations on real SPIRE (30 s TTL, renewed at half-life)."""

from __future__ import annotations

import http.client
import time

import pytest

pytestmark = pytest.mark.spire

UPDATE_LINE = "New X.509 identity"

# Two minutes see several rotations on both proxies (SPIRE renews a 30 s
# SVID after about 15 s), and connections closed because their client
# certificate expired; the cap makes a proxy that never rotates fail.
MIN_TRAFFIC_SECONDS = 120
MIN_ROTATIONS = 3
MAX_TRAFFIC_SECONDS = 180


def request(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status


def post(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("POST", path, body=b"rotation body")
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
            inbound.proxy.log_text().count(UPDATE_LINE) >= inbound_before + MIN_ROTATIONS
            and outbound.proxy.log_text().count(UPDATE_LINE) >= outbound_before + MIN_ROTATIONS
        )
        if elapsed > MAX_TRAFFIC_SECONDS or (elapsed > MIN_TRAFFIC_SECONDS and rotated):
            break

        status = request(keep_alive, f"/rotation/keepalive/{sent}")
        if status != 200:
            failures.append(f"keep-alive request {sent}: {status}")
        status = post(keep_alive, f"/rotation/post/{sent}")
        if status != 200:
            failures.append(f"keep-alive POST {sent}: {status}")
        fresh = http.client.HTTPConnection("127.0.0.1", outbound.port, timeout=30)
        status = request(fresh, f"/rotation/new/{sent}")
        fresh.close()
        if status != 200:
            failures.append(f"new-connection request {sent}: {status}")
        sent += 3
        time.sleep(0.05)
    keep_alive.close()

    assert failures == []
    assert inbound.proxy.log_text().count(UPDATE_LINE) >= inbound_before + MIN_ROTATIONS
    assert outbound.proxy.log_text().count(UPDATE_LINE) >= outbound_before + MIN_ROTATIONS
