"""The end-to-end demo on real SPIRE.

Starts a SPIRE server and two agents (one per simulated node), the Go echo
app behind an inbound e5s-proxy, an outbound e5s-proxy in front of a client,
sends one request through both, and prints the peer header the app received.

    python -m harness.demo [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
from pathlib import Path

from harness.apps import start_echo_app
from harness.proxy import ProxyProcess, free_port, inbound_config, outbound_config
from harness.spire import SpireLab

CLIENT_ID = "spiffe://example.org/client"
SERVER_ID = "spiffe://example.org/server"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def run_demo(keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="e5s-demo-", dir="/tmp"))
    step(f"Starting SPIRE (server for example.org, agents node-a and node-b) in {workdir}")
    with SpireLab() as lab:
        lab.register_workload(lab.node_a, CLIENT_ID)
        lab.register_workload(lab.node_b, SERVER_ID)
        lab.wait_for_svid(lab.node_a, CLIENT_ID)
        lab.wait_for_svid(lab.node_b, SERVER_ID)
        step(f"node-a serves {CLIENT_ID}; node-b serves {SERVER_ID}")

        app_port, inbound_port, outbound_port = free_port(), free_port(), free_port()
        app = start_echo_app(app_port, log_path=workdir / "echo-app.log")
        step(f"Echo app (Go) listening on 127.0.0.1:{app_port}")
        try:
            inbound = ProxyProcess(
                workdir,
                "inbound",
                inbound_config(lab.node_b.socket_path, inbound_port, app_port, allowed_client_spiffe_id=CLIENT_ID),
            )
            outbound = ProxyProcess(
                workdir,
                "outbound",
                outbound_config(
                    lab.node_a.socket_path, outbound_port, inbound_port, expected_server_spiffe_id=SERVER_ID
                ),
            )
            with inbound.start((inbound_port,)), outbound.start((outbound_port,)):
                step(f"Inbound proxy on 127.0.0.1:{inbound_port} (mTLS as {SERVER_ID})")
                step(f"Outbound proxy on 127.0.0.1:{outbound_port} (plaintext in, mTLS out as {CLIENT_ID})")
                step(f"GET http://127.0.0.1:{outbound_port}/hello with a forged X-Peer-SPIFFE-ID")

                connection = http.client.HTTPConnection("127.0.0.1", outbound_port, timeout=30)
                connection.request("GET", "/hello", headers={"X-Peer-SPIFFE-ID": "spiffe://evil.example/forged"})
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status != 200:
                    print(f"Request failed: {response.status} {body.decode(errors='replace')}", file=sys.stderr)
                    print(inbound.log_text(), outbound.log_text(), sep="\n", file=sys.stderr)
                    return 1

                seen = json.loads(body)
                print(f"Status: {response.status}")
                print(f"The app received X-Peer-SPIFFE-ID: {seen['peer_spiffe_id']}")
                copies = seen["headers"].get("X-Peer-Spiffe-Id", [])
                print(f"Copies of the header the app saw: {len(copies)}")
                if keep:
                    input("Press Enter to stop everything... ")
        finally:
            app.terminate()
            app.wait()
    step(f"Logs are in {workdir}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="wait for Enter before stopping everything")
    return run_demo(parser.parse_args().keep)


if __name__ == "__main__":
    sys.exit(main())
