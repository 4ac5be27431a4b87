"""The supervisor of ``workers: N``: N ``e5s-proxy run`` processes sharing the listen ports.

Each worker is a whole proxy with its own reactor and Workload API watcher,
listening with SO_REUSEPORT so that the kernel spreads new connections over
them. Only worker 0 opens the admin listener. The supervisor forwards
SIGTERM and SIGINT (a second one stops the workers at once, as in a single
process), restarts a worker that dies, and exits 1 when a worker fails
during start-up.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from e5s_proxy.config import Config
from e5s_proxy.logs import logger

log = logger(__name__)

# A worker that exits this soon after its start, beyond the time it may wait
# for its first SVID, failed to start: restarting it would fail the same way.
START_GRACE_SECONDS = 10.0

# Between restarts of a worker that died, so a crash loop does not spin.
RESTART_DELAY_SECONDS = 1.0

POLL_SECONDS = 0.2


class Supervisor:
    def __init__(self, config: Config, config_path: str, extra_args: Sequence[str]) -> None:
        self._config = config
        self._config_path = config_path
        self._extra_args = list(extra_args)
        self._workers: dict[int, subprocess.Popen] = {}
        self._started: dict[int, float] = {}
        self._signals = 0

    def _spawn(self, index: int) -> None:
        command = [sys.executable, "-m", "e5s_proxy.cli", "run", "--config", self._config_path]
        command += [*self._extra_args, "--worker", str(index)]
        # A process group of its own, so a terminal Ctrl-C reaches the
        # supervisor alone and the workers get one forwarded signal.
        self._workers[index] = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0)
        self._started[index] = time.monotonic()
        log.info("Started worker {index} (pid {pid})", index=index, pid=self._workers[index].pid)

    def _forward_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        for process in self._workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._forward_signal)
        log.info("Starting {count} workers", count=self._config.workers)
        for index in range(self._config.workers):
            self._spawn(index)

        start_limit = self._config.spire.initial_fetch_timeout + START_GRACE_SECONDS
        while True:
            time.sleep(POLL_SECONDS)
            running = 0
            for index, process in list(self._workers.items()):
                code = process.poll()
                if code is None:
                    running += 1
                    continue
                if self._signals:
                    continue
                if time.monotonic() - self._started[index] < start_limit and code != 0:
                    log.critical("Worker {index} failed to start (exit code {code}); stopping", index=index, code=code)
                    self._forward_signal(signal.SIGTERM, None)
                    self._wait_all()
                    return 1
                log.error("Worker {index} exited with code {code}; restarting it", index=index, code=code)
                time.sleep(RESTART_DELAY_SECONDS)
                self._spawn(index)
                running += 1
            if self._signals and running == 0:
                log.info("All workers stopped")
                return 0

    def _wait_all(self) -> None:
        for process in self._workers.values():
            process.wait()
