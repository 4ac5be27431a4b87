"""Serialize the heads the proxy forwards, applying its header rules.

Every forwarded head is rebuilt from parsed fields, never copied from the
wire. Hop-by-hop fields (RFC 9110 section 7.6.1) are removed and the body
framing is set again by the proxy. Inbound requests lose every field that
could pass for the peer identity header and get exactly one, set by the proxy.

Trailers are dropped: chunked bodies end with ``LAST_CHUNK`` and no trailer
fields, so no peer identity can be smuggled in a trailer section.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from e5s_proxy.http.events import Framing, Headers, RequestHead, ResponseHead

LAST_CHUNK = b"0\r\n\r\n"

# Fields that describe one connection, not the message. Connection also
# nominates more of them by name.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
    }
)

# RFC 9110 section 15 reason phrases. Python 3.11's HTTPStatus still uses
# the older RFC 7231 wording for 413 and 414.
_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")

_ABSOLUTE_FORM = re.compile(rb"(?i)https?://[^/?#]*")


def is_peer_header(name: bytes, peer_header: bytes) -> bool:
    """Tell whether ``name`` could be read as the peer identity header.

    Names are compared case-insensitively with ``_`` read as ``-``, because
    CGI-style servers such as WSGI map both spellings to one ``HTTP_*`` key.
    """
    return _normalize(name) == _normalize(peer_header)


def request_head_for_app(
    head: RequestHead, *, peer_header: bytes, peer_id: bytes
) -> bytes:
    """Serialize an inbound request head for the local app.

    Removes hop-by-hop fields and every spelling of ``peer_header``, then
    adds one ``peer_header: peer_id`` and the proxy's own framing field. A
    head left without Host (HTTP/1.0, or Host nominated by Connection) gets
    an empty one, because the app reads HTTP/1.1 and RFC 9112 section 3.2
    requires Host there. Raises ValueError when ``peer_id`` or
    ``peer_header`` is empty or not visible ASCII.
    """
    if _VISIBLE_ASCII.fullmatch(peer_id) is None:
        raise ValueError(f"peer_id must be visible ASCII, got {peer_id!r}")

    if _VISIBLE_ASCII.fullmatch(peer_header) is None:
        raise ValueError(f"peer_header must be visible ASCII, got {peer_header!r}")

    fields = [
        (name, value)
        for name, value in _end_to_end(head.headers)
        if not is_peer_header(name, peer_header)
    ]

    # RFC 9112 section 3.2.2: with an absolute-form target, the target's
    # authority replaces Host. The app gets origin-form and that Host, so it
    # cannot read a different host than the one in the request line.
    target = head.target
    absolute = _ABSOLUTE_FORM.match(target)
    if absolute is not None:
        authority = absolute.group().split(b"://", 1)[1]
        target = _upstream_target(target, b"")
        fields = [(name, value) for name, value in fields if name.lower() != b"host"]
        fields.insert(0, (b"Host", authority))

    if not any(name.lower() == b"host" for name, _ in fields):
        fields.insert(0, (b"Host", b""))

    fields.append((peer_header, peer_id))
    fields.extend(_request_framing(head))
    fields.extend(_upgrade_fields(head))

    return _serialize(_request_line(head.method, target), fields)


def request_head_for_upstream(
    head: RequestHead, *, authority: bytes, path_prefix: bytes
) -> bytes:
    """Serialize an outbound request head for the remote server.

    Removes hop-by-hop fields, puts one ``Host: authority`` first and sets the
    target to ``path_prefix`` plus the origin-form of the request target.
    Raises ValueError for an invalid ``authority`` or ``path_prefix``.
    """
    if _VISIBLE_ASCII.fullmatch(authority) is None:
        raise ValueError(f"authority must be visible ASCII, got {authority!r}")

    if path_prefix and (
        not path_prefix.startswith(b"/") or _VISIBLE_ASCII.fullmatch(path_prefix) is None
    ):
        raise ValueError(
            f"path_prefix must be empty or a path starting with /, got {path_prefix!r}"
        )

    fields = [(b"Host", authority)]
    fields.extend(
        (name, value)
        for name, value in _end_to_end(head.headers)
        if name.lower() != b"host"
    )
    fields.extend(_request_framing(head))
    fields.extend(_upgrade_fields(head))

    prefix = path_prefix.rstrip(b"/")
    if prefix and _has_dot_segment(head.target):
        raise ValueError(
            f"request target {head.target[:200]!r} has a dot-segment or an encoded slash, "
            "which could leave the server_url path prefix"
        )
    target = _upstream_target(head.target, prefix)
    return _serialize(_request_line(head.method, target), fields)


def response_head_for_client(
    head: ResponseHead,
    *,
    request_method: bytes,
    client_version: bytes,
    keep_alive: bool,
) -> tuple[bytes, bool, bool]:
    """Serialize a response head for the client.

    Returns ``(head_bytes, chunk_body, keep_alive)``. ``chunk_body`` is True when
    the caller must send the body with ``encode_chunk`` and ``LAST_CHUNK``. A body
    without a length reaches an HTTP/1.1 client chunked and an HTTP/1.0
    client delimited by closing the connection, so ``keep_alive`` turns
    False. Responses without a body (to HEAD, 1xx, 204, 304) keep the
    Content-Length the server sent. A 1xx head gets no Connection field and
    leaves ``keep_alive`` as given. Do not send 1xx to an HTTP/1.0 client.
    """
    without_body = (
        request_method == b"HEAD" or head.status < 200 or head.status in (204, 304)
    )

    fields = list(_end_to_end(head.headers))
    chunk_body = False

    if without_body:
        fields.extend(
            (name, value)
            for name, value in head.headers
            if name.lower() == b"content-length"
        )
    elif head.framing is Framing.LENGTH:
        fields.append((b"Content-Length", b"%d" % head.content_length))
    elif head.framing is Framing.NONE:
        fields.append((b"Content-Length", b"0"))
    elif client_version == b"1.1":
        fields.append((b"Transfer-Encoding", b"chunked"))
        chunk_body = True
    else:
        keep_alive = False

    if head.status == 101:
        # The switch itself is hop-by-hop, and this hop keeps it.
        fields.extend((name, value) for name, value in head.headers if name.lower() == b"upgrade")
        fields.append((b"Connection", b"upgrade"))
    elif head.status >= 200:
        if not keep_alive:
            fields.append((b"Connection", b"close"))
        elif client_version == b"1.0":
            fields.append((b"Connection", b"keep-alive"))

    status_line = b"HTTP/1.1 %d %s" % (head.status, head.reason)
    return _serialize(status_line, fields), chunk_body, keep_alive


def encode_chunk(data: bytes) -> bytes:
    """Frame ``data`` as one chunk. Empty data returns b"", never a last chunk."""
    if not data:
        return b""

    return b"%x\r\n%s\r\n" % (len(data), data)


def simple_response(status: int, text: str, *, close: bool = True) -> bytes:
    """Build a complete plain-text response generated by the proxy itself."""
    body = text.encode("utf-8")
    reason = _REASONS.get(status) or HTTPStatus(status).phrase.encode("ascii")

    fields = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    if close:
        fields.append((b"Connection", b"close"))

    status_line = b"HTTP/1.1 %d %s" % (status, reason)
    return _serialize(status_line, fields) + body


def _normalize(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


def _end_to_end(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop fields and the fields Connection nominates.

    ``TE: trailers`` is kept unless Connection nominates TE.
    """
    nominated = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                nominated.add(token.strip(b" \t").lower())

    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in nominated:
            continue
        if lower == b"te" and value.strip(b" \t").lower() == b"trailers":
            kept.append((name, value))
            continue
        if lower in _HOP_BY_HOP:
            continue
        kept.append((name, value))
    return kept


def _request_framing(head: RequestHead) -> list[tuple[bytes, bytes]]:
    if head.framing is Framing.LENGTH:
        return [(b"Content-Length", b"%d" % head.content_length)]

    if head.framing is Framing.CHUNKED:
        return [(b"Transfer-Encoding", b"chunked")]

    return []


_ENCODED_DOT = re.compile(rb"%2e", re.IGNORECASE)


def _has_dot_segment(target: bytes) -> bool:
    """Tell whether a path has ``.`` or ``..`` segments, also percent-encoded, or ``%2F``.

    Servers resolve these after the prefix is put in front, so
    ``/api`` + ``/../admin`` would reach ``/admin``.
    """
    path = target.split(b"?", 1)[0]
    match = _ABSOLUTE_FORM.match(path)
    if match is not None:
        path = path[match.end() :]
    if b"%2f" in path.lower() or b"%5c" in path.lower() or b"\\" in path:
        return True
    segments = _ENCODED_DOT.sub(b".", path).split(b"/")
    return any(segment in (b".", b"..") for segment in segments)


def _upgrade_fields(head: RequestHead) -> list[tuple[bytes, bytes]]:
    """Keep a requested protocol switch on this hop (RFC 9110 section 7.8)."""
    if head.upgrade is None:
        return []
    return [(b"Connection", b"upgrade"), (b"Upgrade", head.upgrade)]


def _upstream_target(target: bytes, prefix: bytes) -> bytes:
    """Reduce ``target`` to origin-form and put ``prefix`` in front of it."""
    if target == b"*":
        return prefix + b"/" if prefix else b"*"

    match = _ABSOLUTE_FORM.match(target)
    if match is not None:
        target = target[match.end() :]
        if not target.startswith(b"/"):
            target = b"/" + target

    return prefix + target


def _request_line(method: bytes, target: bytes) -> bytes:
    return b"%s %s HTTP/1.1" % (method, target)


def _serialize(start_line: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    lines = [start_line]
    lines.extend(name + b": " + value for name, value in fields)
    return b"\r\n".join(lines) + b"\r\n\r\n"
