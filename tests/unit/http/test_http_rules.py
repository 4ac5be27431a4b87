"""Tests of the header rules and serializers in e5s_proxy.http.rules."""

from __future__ import annotations

import pytest

from e5s_proxy.http import (
    LAST_CHUNK,
    Framing,
    RequestHead,
    RequestReader,
    ResponseHead,
    encode_chunk,
    is_peer_header,
    request_head_for_app,
    request_head_for_upstream,
    response_head_for_client,
    simple_response,
)

PEER = b"X-Peer-Spiffe-Id"
PEER_ID = b"spiffe://example.org/client"


def parse(data: bytes) -> RequestHead:
    return RequestReader().feed(data)[0]


def make_request(*fields: bytes, line: bytes = b"GET /a?b HTTP/1.1") -> RequestHead:
    return parse(b"\r\n".join((line, *fields)) + b"\r\n\r\n")


def split_head(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert data.endswith(b"\r\n\r\n")
    start_line, *lines = data[:-4].split(b"\r\n")
    fields = []
    for line in lines:
        name, _, value = line.partition(b": ")
        fields.append((name, value))
    return start_line, fields


def names(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name.lower() for name, _ in fields]


def for_app(head: RequestHead) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    return split_head(request_head_for_app(head, peer_header=PEER, peer_id=PEER_ID))


def response(
    status: int,
    *fields: tuple[bytes, bytes],
    framing: Framing = Framing.LENGTH,
    content_length: int | None = None,
) -> ResponseHead:
    return ResponseHead(
        status=status,
        reason=b"Reason",
        version=b"1.1",
        headers=tuple(fields),
        keep_alive=True,
        framing=framing,
        content_length=content_length,
    )


# --- is_peer_header ----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [b"X-Peer-Spiffe-Id", b"x-peer-spiffe-id", b"X-PEER-SPIFFE-ID", b"x_peer_spiffe_id", b"X_Peer-Spiffe_ID"],
)
def test_is_peer_header_variants(name: bytes) -> None:
    assert is_peer_header(name, PEER) is True


@pytest.mark.parametrize("name", [b"X-Peer-Spiffe-Ids", b"X-Peer-Spiffe", b"XPeerSpiffeId", b"X-Peer.Spiffe-Id"])
def test_is_peer_header_other_names(name: bytes) -> None:
    assert is_peer_header(name, PEER) is False


# --- request_head_for_app ----------------------------------------------


def test_app_head_strips_peer_header_variants() -> None:
    head = make_request(
        b"Host: a",
        b"X-Peer-Spiffe-Id: forged1",
        b"x_peer_spiffe_id: forged2",
        b"X_Peer-Spiffe_ID: forged3",
        b"X-PEER-SPIFFE-ID: forged4",
    )

    _, fields = for_app(head)

    assert fields == [(b"Host", b"a"), (PEER, PEER_ID)]


def test_app_head_start_line() -> None:
    start_line, _ = for_app(make_request(b"Host: a", line=b"DELETE /x/y?z=1 HTTP/1.0"))

    assert start_line == b"DELETE /x/y?z=1 HTTP/1.1"


def test_app_head_removes_hop_by_hop() -> None:
    head = make_request(
        b"Host: a",
        b"Connection: keep-alive, X-Hop",
        b"Keep-Alive: timeout=5",
        b"Proxy-Connection: keep-alive",
        b"TE: gzip",
        b"Trailer: X-Sum",
        b"Upgrade: websocket",
        b"X-Hop: 1",
        b"X-End: 2",
    )

    _, fields = for_app(head)

    assert fields == [(b"Host", b"a"), (b"X-End", b"2"), (PEER, PEER_ID)]


def test_app_head_keeps_te_trailers() -> None:
    _, fields = for_app(make_request(b"Host: a", b"TE: trailers"))

    assert (b"TE", b"trailers") in fields


def test_app_head_te_trailers_nominated_removed() -> None:
    _, fields = for_app(make_request(b"Host: a", b"Connection: TE", b"TE: trailers"))

    assert b"te" not in names(fields)


def test_app_head_connection_nominates_several() -> None:
    head = make_request(b"Host: a", b"Connection: x-one", b"connection: X-TWO , ,x-three", b"X-One: 1", b"x-two: 2", b"X-Three: 3", b"X-Four: 4")

    _, fields = for_app(head)

    assert names(fields) == [b"host", b"x-four", PEER.lower()]


def test_app_head_connection_nominating_peer_header() -> None:
    head = make_request(b"Host: a", b"Connection: x_peer_spiffe_id, X-Peer-Spiffe-Id", b"X-Peer-Spiffe-Id: forged")

    _, fields = for_app(head)

    assert fields == [(b"Host", b"a"), (PEER, PEER_ID)]


def test_app_head_content_length_reset() -> None:
    head = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0003\r\n\r\nabc")

    _, fields = for_app(head)

    assert fields[-1] == (b"Content-Length", b"3")
    assert names(fields).count(b"content-length") == 1


def test_app_head_chunked_reset() -> None:
    head = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n")

    _, fields = for_app(head)

    assert fields[-1] == (b"Transfer-Encoding", b"chunked")
    assert names(fields).count(b"transfer-encoding") == 1


def test_app_head_no_framing_without_body() -> None:
    _, fields = for_app(make_request(b"Host: a"))

    assert b"content-length" not in names(fields)
    assert b"transfer-encoding" not in names(fields)


def test_app_head_keeps_order_and_case() -> None:
    head = make_request(b"X-B: 2", b"host: a", b"x-a: 1", b"X-B: 3")

    _, fields = for_app(head)

    assert fields == [(b"X-B", b"2"), (b"host", b"a"), (b"x-a", b"1"), (b"X-B", b"3"), (PEER, PEER_ID)]


def test_app_head_http10_without_host() -> None:
    _, fields = for_app(make_request(b"X-A: 1", line=b"GET / HTTP/1.0"))

    assert fields[0] == (b"Host", b"")


@pytest.mark.parametrize(
    "peer_id",
    [b"spiffe://a\r\nX-Evil: 1", b"spiffe://a\nb", b"spiffe://a\rb", b"spiffe://a\x00", b"spiffe://a b", b"", b"caf\xc3\xa9"],
)
def test_app_head_rejects_invalid_peer_id(peer_id: bytes) -> None:
    with pytest.raises(ValueError):
        request_head_for_app(make_request(b"Host: a"), peer_header=PEER, peer_id=peer_id)


def test_app_head_reparses_cleanly() -> None:
    head = make_request(b"Host: a", b"X-Peer-Spiffe-Id: forged", b"Connection: close")

    again = parse(request_head_for_app(head, peer_header=PEER, peer_id=PEER_ID))

    assert again.headers == ((b"Host", b"a"), (PEER, PEER_ID))


# --- request_head_for_upstream -----------------------------------------


def for_upstream(head: RequestHead, prefix: bytes = b"") -> tuple[bytes, list[tuple[bytes, bytes]]]:
    return split_head(request_head_for_upstream(head, authority=b"backend:8443", path_prefix=prefix))


@pytest.mark.parametrize(
    "target, prefix, expected",
    [
        (b"/a?b", b"", b"/a?b"),
        (b"/a?b", b"/api", b"/api/a?b"),
        (b"/a?b", b"/api/", b"/api/a?b"),
        (b"/", b"/api/", b"/api/"),
        (b"http://front/x/y?q", b"", b"/x/y?q"),
        (b"HTTPS://front:443/x", b"/p", b"/p/x"),
        (b"http://front", b"", b"/"),
        (b"http://front?q", b"", b"/?q"),
    ],
)
def test_upstream_head_target(target: bytes, prefix: bytes, expected: bytes) -> None:
    start_line, _ = for_upstream(make_request(b"Host: a", line=b"GET " + target + b" HTTP/1.1"), prefix)

    assert start_line == b"GET " + expected + b" HTTP/1.1"


def test_upstream_head_options_asterisk() -> None:
    head = make_request(b"Host: a", line=b"OPTIONS * HTTP/1.1")

    assert for_upstream(head)[0] == b"OPTIONS * HTTP/1.1"
    assert for_upstream(head, b"/api")[0] == b"OPTIONS /api/ HTTP/1.1"


def test_upstream_head_host_replaced_first() -> None:
    head = make_request(b"X-A: 1", b"Host: front", b"X-B: 2")

    _, fields = for_upstream(head)

    assert fields == [(b"Host", b"backend:8443"), (b"X-A", b"1"), (b"X-B", b"2")]


def test_upstream_head_keeps_peer_header() -> None:
    _, fields = for_upstream(make_request(b"Host: a", b"X-Peer-Spiffe-Id: x"))

    assert (b"X-Peer-Spiffe-Id", b"x") in fields


def test_upstream_head_removes_hop_by_hop() -> None:
    head = parse(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\n"
        b"Keep-Alive: 1\r\nContent-Length: 2\r\n\r\nab"
    )

    _, fields = for_upstream(head)

    assert fields == [(b"Host", b"backend:8443"), (b"Content-Length", b"2")]


@pytest.mark.parametrize(
    "authority, prefix",
    [(b"", b""), (b"a b", b""), (b"a\r\nb", b""), (b"a", b"api"), (b"a", b"/a b"), (b"a", b"/a\nb")],
)
def test_upstream_head_rejects_invalid_arguments(authority: bytes, prefix: bytes) -> None:
    with pytest.raises(ValueError):
        request_head_for_upstream(make_request(b"Host: a"), authority=authority, path_prefix=prefix)


# --- response_head_for_client ------------------------------------------


def for_client(
    head: ResponseHead, method: bytes = b"GET", version: bytes = b"1.1", keep_alive: bool = True
) -> tuple[bytes, list[tuple[bytes, bytes]], bool, bool]:
    data, chunk_body, keep = response_head_for_client(
        head, request_method=method, client_version=version, keep_alive=keep_alive
    )
    start_line, fields = split_head(data)
    return start_line, fields, chunk_body, keep


def test_client_head_length() -> None:
    head = response(200, (b"Content-Length", b"005"), (b"X-A", b"1"), content_length=5)

    start_line, fields, chunk_body, keep = for_client(head)

    assert start_line == b"HTTP/1.1 200 Reason"
    assert fields == [(b"X-A", b"1"), (b"Content-Length", b"5")]
    assert chunk_body is False
    assert keep is True


@pytest.mark.parametrize("framing", [Framing.CHUNKED, Framing.CLOSE])
def test_client_head_unknown_length_http11(framing: Framing) -> None:
    head = response(200, (b"Transfer-Encoding", b"chunked"), framing=framing)

    _, fields, chunk_body, keep = for_client(head)

    assert fields == [(b"Transfer-Encoding", b"chunked")]
    assert chunk_body is True
    assert keep is True


@pytest.mark.parametrize("framing", [Framing.CHUNKED, Framing.CLOSE])
def test_client_head_unknown_length_http10(framing: Framing) -> None:
    head = response(200, (b"X-A", b"1"), framing=framing)

    _, fields, chunk_body, keep = for_client(head, version=b"1.0")

    assert fields == [(b"X-A", b"1"), (b"Connection", b"close")]
    assert chunk_body is False
    assert keep is False


def test_client_head_http10_keep_alive() -> None:
    head = response(200, (b"Content-Length", b"1"), content_length=1)

    _, fields, _, keep = for_client(head, version=b"1.0")

    assert fields[-1] == (b"Connection", b"keep-alive")
    assert keep is True


def test_client_head_close() -> None:
    head = response(200, (b"Connection", b"keep-alive"), (b"Content-Length", b"1"), content_length=1)

    _, fields, _, keep = for_client(head, keep_alive=False)

    assert fields == [(b"Content-Length", b"1"), (b"Connection", b"close")]
    assert keep is False


@pytest.mark.parametrize(
    "status, method",
    [(200, b"HEAD"), (204, b"GET"), (304, b"GET"), (103, b"GET")],
)
def test_client_head_without_body_keeps_length(status: int, method: bytes) -> None:
    head = response(status, (b"Content-Length", b"42"), (b"X-A", b"1"), framing=Framing.NONE)

    _, fields, chunk_body, _ = for_client(head, method=method)

    assert (b"Content-Length", b"42") in fields
    assert b"transfer-encoding" not in names(fields)
    assert chunk_body is False


def test_client_head_interim_has_no_connection() -> None:
    head = response(100, framing=Framing.NONE)

    start_line, fields, _, keep = for_client(head, keep_alive=False)

    assert start_line == b"HTTP/1.1 100 Reason"
    assert fields == []
    assert keep is False


def test_client_head_removes_hop_by_hop() -> None:
    head = response(
        200,
        (b"Connection", b"X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Upgrade", b"h2c"),
        (b"Trailer", b"X-Sum"),
        (b"X-End", b"2"),
        (b"Content-Length", b"0"),
        content_length=0,
    )

    _, fields, _, _ = for_client(head)

    assert fields == [(b"X-End", b"2"), (b"Content-Length", b"0")]


# --- chunks and canned responses ---------------------------------------


def test_encode_chunk() -> None:
    assert encode_chunk(b"a" * 26) == b"1a\r\n" + b"a" * 26 + b"\r\n"


def test_encode_chunk_empty() -> None:
    assert encode_chunk(b"") == b""


def test_last_chunk() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


@pytest.mark.parametrize(
    "status, reason",
    [
        (400, b"Bad Request"),
        (404, b"Not Found"),
        (413, b"Content Too Large"),
        (414, b"URI Too Long"),
        (431, b"Request Header Fields Too Large"),
        (500, b"Internal Server Error"),
        (502, b"Bad Gateway"),
        (503, b"Service Unavailable"),
        (504, b"Gateway Timeout"),
    ],
)
def test_simple_response_reason(status: int, reason: bytes) -> None:
    data = simple_response(status, "x")

    assert data.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))


def test_simple_response_body_and_close() -> None:
    data = simple_response(502, "bad gateway: caf\u00e9")

    head, _, body = data.partition(b"\r\n\r\n")
    assert body == "bad gateway: caf\u00e9".encode()
    assert b"\r\nContent-Length: %d" % len(body) in head
    assert b"\r\nContent-Type: text/plain; charset=utf-8" in head
    assert head.endswith(b"\r\nConnection: close")


def test_simple_response_keep_open() -> None:
    data = simple_response(404, "not found", close=False)

    assert b"Connection" not in data


def test_app_head_absolute_form_becomes_origin_form() -> None:
    head = parse(b"GET http://admin.internal/secret?x=1 HTTP/1.1\r\nHost: public.example\r\n\r\n")
    out = request_head_for_app(head, peer_header=b"X-Peer-SPIFFE-ID", peer_id=b"spiffe://example.org/a")
    assert out.startswith(b"GET /secret?x=1 HTTP/1.1\r\n")


def test_app_head_absolute_form_authority_replaces_host() -> None:
    head = parse(b"GET http://admin.internal/secret HTTP/1.1\r\nHost: public.example\r\n\r\n")
    out = request_head_for_app(head, peer_header=b"X-Peer-SPIFFE-ID", peer_id=b"spiffe://example.org/a")
    hosts = [line for line in out.split(b"\r\n") if line.lower().startswith(b"host:")]
    assert hosts == [b"Host: admin.internal"]


@pytest.mark.parametrize(
    "target",
    [b"/../admin", b"/%2e%2e/admin", b"/%2E./admin", b"/..%2fadmin", b"/a/./b", b"/a/..", b"/a%5c..%5cb"],
)
def test_upstream_head_rejects_prefix_escape(target: bytes) -> None:
    head = parse(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(ValueError, match="dot-segment"):
        request_head_for_upstream(head, authority=b"server:8443", path_prefix=b"/api")


def test_upstream_head_allows_dots_inside_names() -> None:
    head = parse(b"GET /a..b/.well-known/x.json HTTP/1.1\r\nHost: a\r\n\r\n")
    out = request_head_for_upstream(head, authority=b"server:8443", path_prefix=b"/api")
    assert out.startswith(b"GET /api/a..b/.well-known/x.json HTTP/1.1")


def test_upstream_head_without_prefix_keeps_dot_segments() -> None:
    head = parse(b"GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n")
    out = request_head_for_upstream(head, authority=b"server:8443", path_prefix=b"")
    assert out.startswith(b"GET /a/../b HTTP/1.1")
