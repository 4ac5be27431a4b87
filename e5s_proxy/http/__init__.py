"""Sans-IO HTTP/1.1: bytes in, events out, bytes out.

The readers turn received bytes into head, body and end-of-message events
and raise ``HttpError`` for anything malformed or ambiguous. The rules
rebuild every forwarded head from those events, so hop-by-hop fields, body
framing and the peer identity header are always set by the proxy. Nothing
here does I/O; the caller owns sockets, timers and flow control.
"""

from __future__ import annotations

from e5s_proxy.http.events import (
    Data,
    EndOfMessage,
    Framing,
    Headers,
    HttpError,
    RequestHead,
    ResponseHead,
)
from e5s_proxy.http.reader import (
    MAX_HEAD_SIZE,
    MAX_HEADER_COUNT,
    RequestReader,
    ResponseReader,
)
from e5s_proxy.http.rules import (
    LAST_CHUNK,
    encode_chunk,
    is_peer_header,
    request_head_for_app,
    request_head_for_upstream,
    response_head_for_client,
    simple_response,
)

__all__ = [
    "LAST_CHUNK",
    "MAX_HEADER_COUNT",
    "MAX_HEAD_SIZE",
    "Data",
    "EndOfMessage",
    "Framing",
    "Headers",
    "HttpError",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "ResponseReader",
    "encode_chunk",
    "is_peer_header",
    "request_head_for_app",
    "request_head_for_upstream",
    "response_head_for_client",
    "simple_response",
]
