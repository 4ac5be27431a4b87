"""Log output for the command line: text or JSON lines on stderr, with a level filter."""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)


def start_logging(*, debug: bool, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send twisted.logger events to ``stream`` (stderr by default)."""
    stream = stream or sys.stderr
    if log_format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    level = LogLevel.debug if debug else LogLevel.info
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)
