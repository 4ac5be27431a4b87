"""TLS client load for the benchmark: handshake rate and idle connections.

    python bench/tls_load.py handshake --port P --cert C --key K --ca B --seconds 5
    python bench/tls_load.py idle --port P --cert C --key K --ca B --count 10000

Both modes connect to 127.0.0.1 only, present the client SVID, verify the
server's chain against the bundle (not its name, because SVIDs carry a
SPIFFE ID in place of a host name) and print one JSON object per result line.

``handshake`` runs worker processes with threads. Each thread makes a new
TCP connection, a full TLS 1.3 handshake (no session resumption), sends
``GET /small`` with ``Connection: close`` and reads to EOF. The request is
there because a TLS 1.3 client finishes its handshake before the server has
checked the client certificate, so only a response proves that the server
accepted the connection.

``idle`` opens ``--count`` connections from one process with non-blocking
sockets, completes their handshakes and prints a line. It then keeps them
open and silent until a line or EOF arrives on stdin or ``--hold-seconds``
pass. Last, it checks how many the server has not closed, prints a second
line and exits.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import select
import selectors
import socket
import ssl
import sys
import threading
import time

HOST = "127.0.0.1"
REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
# Handshakes in flight at once in idle mode. The listeners' accept backlogs
# are as small as 50 (Twisted's default), and a full backlog drops SYNs,
# which costs a 1 s retransmit each.
MAX_PENDING_HANDSHAKES = 48


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    return context


# ---------------------------------------------------------------------------
# Handshake rate


def one_connection(context: ssl.SSLContext, port: int) -> bool:
    """Connect, handshake, send one request and return whether a 200 came back."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(REQUEST)
            response = bytearray()
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                response += chunk
    return response.startswith(b"HTTP/1.1 200")


def handshake_worker(arguments: argparse.Namespace, deadline: float, results: multiprocessing.Queue) -> None:
    context = client_context(arguments.cert, arguments.key, arguments.ca)
    counts = {"connections": 0, "errors": 0, "first_error": ""}
    lock = threading.Lock()

    def loop() -> None:
        while time.monotonic() < deadline:
            try:
                accepted = one_connection(context, arguments.port)
                error_text = "" if accepted else "response was not 200"
            except (OSError, ssl.SSLError) as error:
                accepted, error_text = False, f"{type(error).__name__}: {error}"
            with lock:
                if accepted:
                    counts["connections"] += 1
                else:
                    counts["errors"] += 1
                    counts["first_error"] = counts["first_error"] or error_text

    threads = [threading.Thread(target=loop) for _ in range(arguments.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(counts)


def run_handshakes(arguments: argparse.Namespace) -> dict:
    started = time.monotonic()
    deadline = started + arguments.seconds
    results: multiprocessing.Queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=handshake_worker, args=(arguments, deadline, results))
        for _ in range(arguments.processes)
    ]
    for worker in workers:
        worker.start()
    totals = {"connections": 0, "errors": 0, "first_error": ""}
    for _ in workers:
        counts = results.get(timeout=arguments.seconds + 60)
        totals["connections"] += counts["connections"]
        totals["errors"] += counts["errors"]
        totals["first_error"] = totals["first_error"] or counts["first_error"]
    for worker in workers:
        worker.join(timeout=10)
    totals["seconds"] = time.monotonic() - started
    return totals


# ---------------------------------------------------------------------------
# Idle connections


class IdleOpener:
    """Opens TLS connections with non-blocking sockets on one selector."""

    def __init__(self, context: ssl.SSLContext, port: int, count: int) -> None:
        self.context = context
        self.port = port
        self.count = count
        self.selector = selectors.DefaultSelector()
        self.established: list[ssl.SSLSocket] = []
        self.failed = 0
        self.first_error = ""
        self.started = 0
        self.pending = 0

    def fail(self, sock: socket.socket, error: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or error
        self.pending -= 1
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def start_one(self) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        self.started += 1
        self.pending += 1
        code = raw.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail(raw, f"connect failed: {errno.errorcode.get(code, code)}")
            return
        self.selector.register(raw, selectors.EVENT_WRITE, "connecting")

    def on_connected(self, raw: socket.socket) -> None:
        self.selector.unregister(raw)
        code = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            self.fail(raw, f"connect failed: {errno.errorcode.get(code, code)}")
            return
        tls = self.context.wrap_socket(raw, do_handshake_on_connect=False)
        self.step_handshake(tls, registered=False)

    def step_handshake(self, tls: ssl.SSLSocket, registered: bool) -> None:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self.watch(tls, selectors.EVENT_READ, registered)
            return
        except ssl.SSLWantWriteError:
            self.watch(tls, selectors.EVENT_WRITE, registered)
            return
        except (OSError, ssl.SSLError) as error:
            self.fail(tls, f"handshake failed: {error}")
            return
        if registered:
            self.selector.unregister(tls)
        self.pending -= 1
        self.established.append(tls)

    def watch(self, tls: ssl.SSLSocket, events: int, registered: bool) -> None:
        if registered:
            self.selector.modify(tls, events, "handshake")
        else:
            self.selector.register(tls, events, "handshake")

    def open_all(self, deadline: float) -> None:
        while len(self.established) + self.failed < self.count:
            while self.pending < MAX_PENDING_HANDSHAKES and self.started < self.count:
                self.start_one()
            if time.monotonic() > deadline:
                self.first_error = self.first_error or "timed out opening connections"
                return
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "connecting":
                    self.on_connected(key.fileobj)
                else:
                    self.step_handshake(key.fileobj, registered=True)

    def count_open(self) -> int:
        """Return how many established connections the server has not closed.

        The recv also consumes TLS 1.3 session tickets, which the server sends
        only after it has checked the client certificate.
        """
        still_open = 0
        for tls in self.established:
            try:
                data = tls.recv(1)
            except ssl.SSLWantReadError:
                still_open += 1
                continue
            except (OSError, ssl.SSLError):
                continue
            if data:
                still_open += 1
        return still_open


def run_idle(arguments: argparse.Namespace) -> None:
    opener = IdleOpener(client_context(arguments.cert, arguments.key, arguments.ca), arguments.port, arguments.count)
    started = time.monotonic()
    opener.open_all(started + arguments.open_seconds)
    opened_seconds = time.monotonic() - started
    # Give the server time to finish its side of the last handshakes.
    time.sleep(1.0)
    report = {
        "established": len(opener.established),
        "failed": opener.failed,
        "first_error": opener.first_error,
        "open_seconds": round(opened_seconds, 2),
        "still_open": opener.count_open(),
    }
    print(json.dumps(report), flush=True)

    # Hold the connections until the parent writes a line or the time is up.
    select.select([sys.stdin], [], [], arguments.hold_seconds)
    report = {"still_open_at_end": opener.count_open()}
    print(json.dumps(report), flush=True)
    for tls in opener.established:
        tls.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="TLS client load against 127.0.0.1.")
    parser.add_argument("mode", choices=("handshake", "idle"))
    parser.add_argument("--port", type=int, required=True, help="TLS port on 127.0.0.1")
    parser.add_argument("--cert", required=True, help="client certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="client private key (PEM)")
    parser.add_argument("--ca", required=True, help="bundle to verify the server's chain (PEM)")
    parser.add_argument("--seconds", type=float, default=5.0, help="handshake: run time in seconds")
    parser.add_argument("--processes", type=int, default=2, help="handshake: worker processes")
    parser.add_argument("--threads", type=int, default=8, help="handshake: threads per worker process")
    parser.add_argument("--count", type=int, default=10000, help="idle: connections to open")
    parser.add_argument("--open-seconds", type=float, default=120.0, help="idle: time limit for opening them")
    parser.add_argument("--hold-seconds", type=float, default=60.0, help="idle: maximum seconds to keep them open; a line or EOF on stdin ends it sooner")
    arguments = parser.parse_args()

    if arguments.mode == "handshake":
        print(json.dumps(run_handshakes(arguments)), flush=True)
    else:
        run_idle(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
