"""``twistd -n e5s-proxy --config FILE`` serves like ``e5s-proxy run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.proxy import free_port, inbound_config, port_open
from tests.integration.conftest import CLIENT_ID, raw_exchange

pytestmark = pytest.mark.spire


def test_twistd_plugin_serves_requests(lab, app_port, workdir, svid_files):
    port = free_port()
    config = workdir / "twistd.yaml"
    config.write_text(yaml.safe_dump(inbound_config(lab.node_b.socket_path, port, app_port)))
    twistd = Path(sys.executable).with_name("twistd")
    log_path = workdir / "twistd.log"
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", f"--logfile={log_path}", "e5s-proxy", "--config", str(config), "--debug"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        reply = raw_exchange(
            port, svid_files(lab.node_a), b"GET /twistd HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        )
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    assert reply.startswith(b"HTTP/1.1 200")
    assert CLIENT_ID.encode() in reply
    assert f"as {CLIENT_ID}" in log_path.read_text()


def test_twistd_without_agent_exits_nonzero(workdir):
    config = workdir / "twistd-no-agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "spire": {"workload_socket": str(workdir / "missing.sock"), "initial_fetch_timeout": "2s"},
                "server": {
                    "listen_addr": f"127.0.0.1:{free_port()}",
                    "target": "127.0.0.1:9",
                    "allowed_client_trust_domain": "example.org",
                },
            }
        )
    )
    twistd = Path(sys.executable).with_name("twistd")
    result = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "e5s-proxy", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "missing.sock" in result.stdout + result.stderr
