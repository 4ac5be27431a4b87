"""docs/troubleshooting.md explains the messages the proxy prints.

Each fragment must appear in the proxy's source (so the message still
exists) and in the guide (so an operator can look it up).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "troubleshooting.md").read_text()
SOURCE = "\n".join(path.read_text() for path in (ROOT / "e5s_proxy").rglob("*.py"))

FRAGMENTS = [
    "e5s-proxy cannot start",
    "spire.workload_socket must be set (or set",
    "the socket does not exist",
    "the path exists but is not a Unix socket",
    "the Workload API returned no SVID for",
    "choose another port, or stop the process that uses it",
    "client.listen_addr is not on loopback",
    "but the Workload API gave no bundle for it",
    "unavailable (",
    "New X.509 identity",
    "and the Workload API at",
    "rejected TLS handshake from",
    "no client certificate or TLS failure",
    "no bundle for trust domain",
    "certificate chain does not verify against the bundle of",
    "an X.509-SVID must have exactly one URI SAN",
    "leaf certificate is a CA certificate",
    "is not one of the allowed IDs",
    "is not a member of the allowed trust domain(s)",
    "rejected request from",
    "both Content-Length and Transfer-Encoding",
    "has a dot-segment or an encoded slash",
    "request head not received in time",
    "the app is unavailable",
    "the app did not accept the connection in time",
    "cannot reach the app for",
    "no response within",
    "bad or missing upstream response",
    "connection closed in the middle of a response",
    "presented SPIFFE ID",
    "TLS handshake with server",
    "cannot connect to server",
    "timed out connecting to server",
]


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_message_still_printed_by_proxy(fragment):
    assert fragment in SOURCE


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_message_explained_in_guide(fragment):
    assert fragment in GUIDE
