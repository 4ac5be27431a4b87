"""The processes under test: the nginx backend and each system's two proxies.

Every process listens on 127.0.0.1 only, keeps its files in the benchmark's
temporary folder and is stopped by the PID this module started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.proxy import ProxyProcess, free_port, inbound_config, outbound_config, port_open

CLIENT_ID = "spiffe://example.org/client"
SERVER_ID = "spiffe://example.org/server"
# nginx's proxy_ssl_verify always checks the server name, so the server SVID
# also carries this DNS SAN. e5s-proxy and ghostunnel check the SPIFFE ID.
SERVER_DNS_NAME = "server.example.org"

SMALL_BODY = "hello from the benchmark backend\n"
LARGE_BODY_BYTES = 1024 * 1024
# Raised together with `ulimit -n` in bench/run; 10,000 idle connections
# plus their backend connections must fit.
NGINX_MAX_FILES = 20000
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def wait_for_port(port: int, process: subprocess.Popen, name: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not port_open(port):
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; log {log_path}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {STARTUP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.1)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} not found)"


def stop_process(process: subprocess.Popen | None) -> None:
    """Send SIGTERM to a process this module started, then SIGKILL after a grace period."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def child_pids(pid: int) -> list[int]:
    """Return the PIDs of the direct children of ``pid`` (nginx workers)."""
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            children += [int(value) for value in text.split()]
    except FileNotFoundError:
        return []
    return children


class Nginx:
    """One nginx master (daemon off) with its own prefix, config and logs."""

    def __init__(self, prefix: Path, name: str, http_block: str) -> None:
        self.prefix = prefix
        self.name = name
        self.http_block = http_block
        self.config_path = prefix / "nginx.conf"
        self.log_path = prefix / "error.log"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> None:
        # Workers run as root so that they can read the temporary folders,
        # which mkdtemp creates with mode 0700.
        self.config_path.write_text(
            f"""user root;
daemon off;
worker_processes auto;
worker_rlimit_nofile {NGINX_MAX_FILES};
pid {self.prefix}/nginx.pid;
error_log {self.log_path} warn;
events {{
    worker_connections {NGINX_MAX_FILES};
}}
http {{
    access_log off;
    client_body_temp_path {self.prefix}/client_body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
    keepalive_requests 1000000;
{self.http_block}
}}
"""
        )

    def start(self, port: int) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with open(self.prefix / "stdout.log", "ab") as output:
            self.process = subprocess.Popen(
                ["nginx", "-p", str(self.prefix), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(port, self.process, self.name, self.log_path)

    def pids(self) -> list[int]:
        if self.process is None:
            return []
        return [self.process.pid, *child_pids(self.process.pid)]

    def stop(self) -> None:
        stop_process(self.process)


def start_backend(workdir: Path) -> tuple[Nginx, int]:
    """Start the nginx backend with /small and a 1 MiB /1m; return it and its port."""
    port = free_port()
    root = workdir / "backend-root"
    root.mkdir()
    (root / "1m").write_bytes(os.urandom(LARGE_BODY_BYTES))
    small = SMALL_BODY.replace("\n", "\\n")
    backend = Nginx(
        workdir / "backend",
        "nginx backend",
        f"""    sendfile on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location = /small {{
            default_type text/plain;
            return 200 "{small}";
        }}
        location = /1m {{
            default_type application/octet-stream;
        }}
    }}""",
    )
    backend.start(port)
    return backend, port


@dataclass
class System:
    """One system under test: a client-side listener for wrk and a server-side TLS listener."""

    name: str
    client_port: int
    server_port: int | None
    # Callables that return the current PIDs of the client-side and server-side proxies.
    client_pids: object = None
    server_pids: object = None
    stoppers: list = field(default_factory=list)

    def proxy_pids(self) -> list[int]:
        pids = []
        for source in (self.client_pids, self.server_pids):
            if source is not None:
                pids += source()
        return pids

    def stop(self) -> None:
        for stopper in reversed(self.stoppers):
            stopper()


def start_direct(backend_port: int) -> System:
    return System("direct", backend_port, None)


def with_children(pid: int) -> list[int]:
    """Return ``pid`` and its child processes (the workers under an e5s-proxy supervisor)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def start_e5s(
    workdir: Path, client_socket: Path, server_socket: Path, backend_port: int, workers: int = 1
) -> System:
    inbound_port, outbound_port = free_port(), free_port()
    inbound_settings = inbound_config(server_socket, inbound_port, backend_port, allowed_client_spiffe_id=CLIENT_ID)
    outbound_settings = outbound_config(client_socket, outbound_port, inbound_port, expected_server_spiffe_id=SERVER_ID)
    for settings in (inbound_settings, outbound_settings):
        settings["workers"] = workers
    inbound = ProxyProcess(workdir, "e5s-inbound", inbound_settings)
    outbound = ProxyProcess(workdir, "e5s-outbound", outbound_settings)
    system = System("e5s-proxy", outbound_port, inbound_port)
    inbound.start((inbound_port,))
    system.stoppers.append(inbound.stop)
    outbound.start((outbound_port,))
    system.stoppers.append(outbound.stop)
    system.client_pids = lambda: with_children(outbound.process.pid)
    system.server_pids = lambda: with_children(inbound.process.pid)
    return system


def start_ghostunnel(
    workdir: Path, ghostunnel: Path, client_socket: Path, server_socket: Path, backend_port: int
) -> System:
    server_port, client_port = free_port(), free_port()
    server_command = [
        str(ghostunnel), "server",
        "--listen", f"127.0.0.1:{server_port}",
        "--target", f"127.0.0.1:{backend_port}",
        "--use-workload-api-addr", f"unix://{server_socket}",
        "--allow-uri", CLIENT_ID,
    ]
    client_command = [
        str(ghostunnel), "client",
        "--listen", f"127.0.0.1:{client_port}",
        "--target", f"127.0.0.1:{server_port}",
        "--use-workload-api-addr", f"unix://{client_socket}",
        "--verify-uri", SERVER_ID,
    ]
    system = System("ghostunnel", client_port, server_port)
    processes = {}
    for side, command, port in (("server", server_command, server_port), ("client", client_command, client_port)):
        log_path = workdir / f"ghostunnel-{side}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        processes[side] = process
        system.stoppers.append(lambda process=process: stop_process(process))
        wait_for_port(port, process, f"ghostunnel {side}", log_path)
    system.client_pids = lambda: [processes["client"].pid]
    system.server_pids = lambda: [processes["server"].pid]
    return system


def start_nginx_proxies(workdir: Path, client_svid: Path, server_svid: Path, backend_port: int) -> System:
    """Start nginx as the server-side and client-side proxies with static SVID files."""
    server_port, client_port = free_port(), free_port()
    server_side = Nginx(
        workdir / "nginx-server",
        "nginx server side",
        f"""    upstream app {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{server_port} ssl backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate {server_svid}/svid.0.pem;
        ssl_certificate_key {server_svid}/svid.0.key;
        ssl_client_certificate {server_svid}/bundle.0.pem;
        ssl_verify_client on;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""",
    )
    client_side = Nginx(
        workdir / "nginx-client",
        "nginx client side",
        f"""    upstream mtls_server {{
        server 127.0.0.1:{server_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{client_port} backlog=4096;
        location / {{
            proxy_pass https://mtls_server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate {client_svid}/svid.0.pem;
            proxy_ssl_certificate_key {client_svid}/svid.0.key;
            proxy_ssl_trusted_certificate {client_svid}/bundle.0.pem;
            proxy_ssl_verify on;
            proxy_ssl_name {SERVER_DNS_NAME};
        }}
    }}""",
    )
    system = System("nginx", client_port, server_port)
    server_side.start(server_port)
    system.stoppers.append(server_side.stop)
    client_side.start(client_port)
    system.stoppers.append(client_side.stop)
    system.client_pids = client_side.pids
    system.server_pids = server_side.pids
    return system
