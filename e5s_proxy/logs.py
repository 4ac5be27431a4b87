"""Logging for the proxy: one level switch for its own events, and the command line's output.

Every module logs through `logger()`, whose events pass a level filter owned
by the proxy before reaching Twisted's global publisher. `set_debug` moves
that filter, so ``--debug`` works the same under ``e5s-proxy run`` and under
twistd, whose own log observers keep every level they receive.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_proxy_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def logger(namespace: str | None = None) -> Logger:
    """Return a Logger whose events pass the proxy's level filter.

    As a class attribute it takes the class's name as its namespace; at
    module level, pass ``__name__``.
    """
    return Logger(namespace=namespace, observer=_proxy_observer)


def debug_from_environment() -> bool:
    """Return whether E5S_DEBUG requests debug logs (any value but empty, 0 or false)."""
    return os.environ.get("E5S_DEBUG", "") not in ("", "0", "false")


def set_debug(enabled: bool) -> None:
    """Let the proxy's debug events through, or hold them back (the default)."""
    _levels.setLogLevelForNamespace("e5s_proxy", LogLevel.debug if enabled else LogLevel.info)


def start_logging(*, debug: bool, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send log events to ``stream`` (stderr by default) as text or JSON lines."""
    stream = stream or sys.stderr
    if log_format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    set_debug(debug)
    # Twisted's own events stay at info and above; the proxy's pass the filter above.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    predicate.setLogLevelForNamespace("e5s_proxy", LogLevel.debug)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)


class RepeatLimiter:
    """Lets one log line per key through per window, and counts the lines held back.

    A client that retries a rejected handshake in a loop would otherwise
    write a line per attempt. Keys are few and fixed in shape (peer host and
    reason kind); the table is cleared when it grows past ``max_keys``.
    """

    def __init__(self, clock: object, window: float = 10.0, max_keys: int = 1024) -> None:
        self._clock = clock
        self._window = window
        self._max_keys = max_keys
        self._last: dict[object, tuple[float, int]] = {}

    def check(self, key: object) -> int | None:
        """Return None to hold this line back, else how many were held back since the last one."""
        now = self._clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._window:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= self._max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]
