"""The workload's identity, followed over the SPIFFE Workload API.

`WorkloadApiSource` runs the Workload API stream on a thread of its own, turns
each X.509 context into an immutable `IdentitySnapshot`, and hands it to the
reactor with ``callFromThread``. Subscribers run on the reactor thread only.
A stream that breaks, or ends cleanly, is a disconnect: the watcher
reconnects with capped exponential backoff and logs each attempt, while the
proxy keeps serving with the last snapshot.
"""

from __future__ import annotations

import datetime
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from e5s_proxy.logs import logger

from e5s_proxy.spiffeid import SpiffeId, parse_spiffe_id
from e5s_proxy.svid import Bundles

# Reconnect backoff: the first retry comes quickly because a restarting agent
# is usually back within a second. The cap keeps a long outage from growing
# the delay past what an operator would wait for after fixing the agent.
BACKOFF_INITIAL = 0.1
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = 5.0

# While the socket file does not exist, check for it this often: a stat is
# cheap, and an agent that starts after the proxy is picked up at once.
SOCKET_POLL_INTERVAL = 0.1
SOCKET_MISSING = "the socket does not exist"


@dataclass(frozen=True)
class IdentitySnapshot:
    """One X.509-SVID with its key, and the bundles trusted at the same moment."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]  # leaf first
    private_key: object  # a cryptography private key; never logged
    bundles: Bundles
    svid_ids: tuple[SpiffeId, ...]  # every SVID the Workload API returned, in order

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def expires_at(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc


class NoIdentityError(Exception):
    """No X.509-SVID arrived in time, or none matched the requested SPIFFE ID."""


def snapshot_from_context(context: object, svid_spiffe_id: SpiffeId | None = None) -> IdentitySnapshot:
    """Build a snapshot from a py-spiffe ``X509Context``.

    The default SVID is the first, as the Workload API specifies; a requested
    ``svid_spiffe_id`` selects another one.
    """
    svids = list(context.x509_svids)
    if not svids:
        raise NoIdentityError("the Workload API returned no X.509-SVID")

    svid_ids = tuple(parse_spiffe_id(str(svid.spiffe_id)) for svid in svids)
    chosen = svids[0]
    if svid_spiffe_id is not None:
        matches = [svid for svid, spiffe_id in zip(svids, svid_ids) if spiffe_id == svid_spiffe_id]
        if not matches:
            shown = ", ".join(str(spiffe_id) for spiffe_id in svid_ids)
            raise NoIdentityError(f"the Workload API returned no SVID for {svid_spiffe_id} (it returned: {shown})")
        chosen = matches[0]

    bundles = {
        bundle.trust_domain.name: tuple(bundle.x509_authorities)
        for bundle in context.x509_bundle_set.bundles
    }
    return IdentitySnapshot(
        spiffe_id=parse_spiffe_id(str(chosen.spiffe_id)),
        chain=tuple(chosen.cert_chain),
        private_key=chosen.private_key,
        bundles=bundles,
        svid_ids=svid_ids,
    )


class WorkloadApiSource:
    """Follows X.509 contexts from a SPIRE agent (or any Workload API server).

    `start` returns a Deferred that fires with the first snapshot, or fails
    with `NoIdentityError` after ``initial_fetch_timeout`` seconds. The
    watcher keeps running until `stop`.
    """

    log = logger()

    def __init__(
        self,
        reactor: IReactorFromThreads | IReactorTime,
        socket_path: str,
        *,
        initial_fetch_timeout: float,
        svid_spiffe_id: SpiffeId | None = None,
    ) -> None:
        self._reactor = reactor
        self._socket_path = socket_path
        self._initial_fetch_timeout = initial_fetch_timeout
        self._svid_spiffe_id = svid_spiffe_id

        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._first: defer.Deferred[IdentitySnapshot] | None = None
        self._timeout_call = None
        self._last_error = "no answer yet"
        self._subscribers: list[Callable[[IdentitySnapshot], None]] = []

        self.current: IdentitySnapshot | None = None

    @property
    def socket_path(self) -> str:
        return self._socket_path

    def subscribe(self, callback: Callable[[IdentitySnapshot], None]) -> None:
        """Call ``callback`` on the reactor thread with every new snapshot."""
        self._subscribers.append(callback)

    def start(self) -> defer.Deferred[IdentitySnapshot]:
        self._first = defer.Deferred()
        self._timeout_call = self._reactor.callLater(self._initial_fetch_timeout, self._initial_timeout)
        self._thread = threading.Thread(target=self._watch, name="e5s-workload-api", daemon=True)
        self._thread.start()
        self.log.info("Watching the Workload API at {socket}", socket=self._socket_path)
        return self._first

    def stop(self) -> None:
        self._stopping.set()
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()

    # Reactor thread.

    def _initial_timeout(self) -> None:
        first, self._first = self._first, None
        if first is None:
            return
        message = (
            f"no X.509-SVID from the Workload API at {self._socket_path} within "
            f"{self._initial_fetch_timeout:g}s (last error: {self._last_error}). Check that the SPIRE agent "
            "is running and that socket path is right, and that a registration entry matches this "
            "workload (spire-server entry show; selectors such as unix:uid)."
        )
        first.errback(NoIdentityError(message))

    def _deliver(self, snapshot: IdentitySnapshot) -> None:
        previous = self.current
        self.current = snapshot
        if previous is None or previous.chain != snapshot.chain or previous.bundles != snapshot.bundles:
            self.log.info(
                "New X.509 identity {spiffe_id}, expires {expires_at}, bundles for {trust_domains}",
                spiffe_id=str(snapshot.spiffe_id),
                expires_at=snapshot.expires_at.isoformat(),
                trust_domains=sorted(snapshot.bundles),
            )

        for callback in list(self._subscribers):
            try:
                callback(snapshot)
            except Exception:
                self.log.failure("Identity subscriber {callback!r} failed", callback=callback)

        first, self._first = self._first, None
        if first is not None:
            if self._timeout_call is not None and self._timeout_call.active():
                self._timeout_call.cancel()
            first.callback(snapshot)

    def _report_error(self, message: str, attempt: int, delay: float) -> None:
        self._last_error = message
        self.log.warn(
            "Workload API at {socket} unavailable ({error}); retry {attempt} in {delay:.1f}s",
            socket=self._socket_path,
            error=message,
            attempt=attempt,
            delay=delay,
        )

    # Watcher thread.

    def _watch(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            delivered, error = self._stream_once()
            if self._stopping.is_set():
                return
            if delivered:
                attempt = 0
            attempt += 1
            delay = min(BACKOFF_INITIAL * BACKOFF_FACTOR ** (attempt - 1), BACKOFF_MAX)
            self._reactor.callFromThread(self._report_error, error, attempt, delay)
            self._wait_before_retry(delay, socket_missing=error == SOCKET_MISSING)

    def _wait_before_retry(self, delay: float, *, socket_missing: bool) -> None:
        """Sleep ``delay`` seconds, but wake early when a missing socket appears."""
        if not socket_missing:
            self._stopping.wait(delay)
            return
        deadline = time.monotonic() + delay
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if os.path.exists(self._socket_path):
                return
            self._stopping.wait(SOCKET_POLL_INTERVAL)

    def _stream_once(self) -> tuple[bool, str]:
        """Follow one Workload API stream until it breaks; return (delivered anything, why it ended)."""
        # Imported here because py-spiffe pulls in gRPC, which the other
        # commands (validate, version) do not need.
        from spiffe import WorkloadApiClient
        from spiffe.errors import ArgumentError

        problem = check_socket(self._socket_path)
        if problem is not None:
            return False, problem
        try:
            client = WorkloadApiClient(socket_path=f"unix:{self._socket_path}")
        except ArgumentError as error:
            return False, str(error)

        ended = threading.Event()
        outcome = {"delivered": False, "error": "stream ended"}

        def on_success(context: object) -> None:
            try:
                snapshot = snapshot_from_context(context, self._svid_spiffe_id)
            except Exception as error:
                outcome["error"] = str(error)
                ended.set()
                return
            outcome["delivered"] = True
            self._reactor.callFromThread(self._deliver, snapshot)

        def on_error(error: Exception) -> None:
            outcome["error"] = str(error) or type(error).__name__
            ended.set()

        handler = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        try:
            while not ended.is_set() and not self._stopping.is_set():
                ended.wait(0.5)
        finally:
            handler.cancel()
            client.close()
        return bool(outcome["delivered"]), str(outcome["error"])


def check_socket(path: str) -> str | None:
    """Return why ``path`` cannot be a Workload API socket, or None when it is a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return SOCKET_MISSING
    except OSError as error:
        return f"cannot check the socket: {error.strerror}"
    if not stat.S_ISSOCK(mode):
        return "the path exists but is not a Unix socket; point spire.workload_socket at the agent's socket_path"
    return None


def fetch_once(socket_path: str, timeout: float) -> tuple[list[object], list[object]]:
    """Fetch one X.509 context, blocking; for ``e5s-proxy identity`` only, never on the reactor.

    Returns py-spiffe's SVIDs and bundles. Raises NoIdentityError naming the
    socket when nothing arrives in ``timeout`` seconds.
    """
    from spiffe import WorkloadApiClient
    from spiffe.errors import PySpiffeError

    problem = check_socket(socket_path)
    if problem is not None:
        raise NoIdentityError(
            f"cannot use the Workload API at {socket_path}: {problem}. Check that the SPIRE agent is "
            "running and that this is its socket_path."
        )
    try:
        client = WorkloadApiClient(socket_path=f"unix:{socket_path}", default_timeout=timeout)
    except PySpiffeError as error:
        raise NoIdentityError(f"cannot use the Workload API at {socket_path}: {error}") from None
    try:
        context = client.fetch_x509_context()
    except PySpiffeError as error:
        raise NoIdentityError(
            f"no X.509 context from the Workload API at {socket_path}: {error}. Check that the SPIRE agent "
            "is running and that a registration entry matches this workload."
        ) from None
    finally:
        client.close()
    return list(context.x509_svids), list(context.x509_bundle_set.bundles)
