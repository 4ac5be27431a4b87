"""Events and errors of the sans-IO HTTP/1.1 layer.

A reader turns bytes into these events; the Twisted protocols act on them and
never look at raw header bytes themselves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Headers = tuple[tuple[bytes, bytes], ...]
"""Header fields in the order received, names as sent (not lower-cased)."""


class Framing(enum.Enum):
    """The delimiting of a message body on the wire it arrived on."""

    NONE = "none"  # no body at all
    LENGTH = "length"  # Content-Length bytes follow
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # responses only: the body runs until the connection closes


@dataclass(frozen=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"1.0" or b"1.1"
    headers: Headers
    keep_alive: bool  # the client allows this connection to carry another request
    framing: Framing  # NONE, LENGTH or CHUNKED
    content_length: int | None  # set when framing is LENGTH
    expect_continue: bool  # the client sent Expect: 100-continue
    upgrade: bytes | None  # protocol named in Upgrade when the client asks for one


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    keep_alive: bool  # the server allows the connection to carry another request
    framing: Framing
    content_length: int | None


@dataclass(frozen=True)
class Data:
    """A piece of a message body, with any chunked framing already removed."""

    data: bytes


@dataclass(frozen=True)
class EndOfMessage:
    trailers: Headers = field(default=())


class HttpError(Exception):
    """A message that must not be forwarded.

    ``status`` is what the proxy answers with: 400, 413, 414 or 431 for a bad
    request, 502 for a bad response. ``reason`` is a short text for logs and
    for the plain-text body of the answer.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
