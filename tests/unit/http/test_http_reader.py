"""Tests of RequestReader and ResponseReader."""

from __future__ import annotations

import pytest

from e5s_proxy.http import (
    Data,
    EndOfMessage,
    Framing,
    HttpError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)

GET = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


def body_of(events: list) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, Data))


def read_all(data: bytes) -> list:
    reader = RequestReader()
    events = reader.feed(data)
    reader.feed_eof()
    return events


def request(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# Each case: (request bytes, expected status).
BAD_REQUESTS = {
    "content length with chunked": (
        request(
            b"POST / HTTP/1.1",
            b"Host: a",
            b"Content-Length: 3",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "two equal content lengths": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Content-Length: 1", body=b"x"),
        400,
    ),
    "content length list": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1, 1", body=b"x"),
        400,
    ),
    "content length with sign": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: +1", body=b"x"),
        400,
    ),
    "content length hex": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 0x1", body=b"x"),
        400,
    ),
    "content length non-ascii digit": (
        request(b"POST / HTTP/1.1", b"Host: a", "Content-Length: \u0661".encode(), body=b"x"),
        400,
    ),
    "content length too long": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: " + b"9" * 30),
        400,
    ),
    "gzip chunked coding": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        400,
    ),
    "identity coding": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: identity"),
        400,
    ),
    "two chunked fields": (
        request(
            b"POST / HTTP/1.1",
            b"Host: a",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "chunked in http/1.0": (
        request(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    "chunk size not hex": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"zz\r\n"),
        400,
    ),
    "chunk size with sign": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"-1\r\n"),
        400,
    ),
    "chunk size space before extension": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"1 ;a\r\nx\r\n0\r\n\r\n"),
        400,
    ),
    "chunk size overflow": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"1" * 17 + b"\r\n"),
        400,
    ),
    "chunk data without crlf": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"1\r\nxy\r\n0\r\n\r\n"),
        400,
    ),
    "chunk line bare lf": (
        request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"1\nx\r\n0\r\n\r\n"),
        400,
    ),
    "obs-fold": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: b", b" c"),
        400,
    ),
    "obs-fold tab": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: b", b"\tc"),
        400,
    ),
    "space before colon": (
        request(b"GET / HTTP/1.1", b"Host : a"),
        400,
    ),
    "tab before colon": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A\t: b"),
        400,
    ),
    "empty header name": (
        request(b"GET / HTTP/1.1", b"Host: a", b": b"),
        400,
    ),
    "header without colon": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A b"),
        400,
    ),
    "header name with slash": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X/A: b"),
        400,
    ),
    "header name with non-ascii": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X\xc3\xa9: b"),
        400,
    ),
    "header value with nul": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: b\x00c"),
        400,
    ),
    "header value with bare cr": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: b\rc"),
        400,
    ),
    "header value with escape": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: b\x1bc"),
        400,
    ),
    "header value with del": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: b\x7fc"),
        400,
    ),
    "bare lf line ending": (
        b"GET / HTTP/1.1\nHost: a\n\n",
        400,
    ),
    "bare lf inside header section": (
        b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
        400,
    ),
    "method with slash": (
        request(b"GE/T / HTTP/1.1", b"Host: a"),
        400,
    ),
    "unknown method": (
        request(b"FROB / HTTP/1.1", b"Host: a"),
        400,
    ),
    "connect": (
        request(b"CONNECT example:443 HTTP/1.1", b"Host: example:443"),
        400,
    ),
    "http/2.0": (
        request(b"GET / HTTP/2.0", b"Host: a"),
        400,
    ),
    "http/0.9 style": (
        b"GET /\r\n\r\n",
        400,
    ),
    "lower-case version": (
        request(b"GET / http/1.1", b"Host: a"),
        400,
    ),
    "double space in request line": (
        request(b"GET  / HTTP/1.1", b"Host: a"),
        400,
    ),
    "target with non-ascii": (
        request(b"GET /caf\xc3\xa9 HTTP/1.1", b"Host: a"),
        400,
    ),
    "target with tab": (
        request(b"GET /a\tb HTTP/1.1", b"Host: a"),
        400,
    ),
    "target relative": (
        request(b"GET a/b HTTP/1.1", b"Host: a"),
        400,
    ),
    "asterisk with get": (
        request(b"GET * HTTP/1.1", b"Host: a"),
        400,
    ),
    "missing host": (
        request(b"GET / HTTP/1.1", b"X-A: b"),
        400,
    ),
    "two hosts": (
        request(b"GET / HTTP/1.1", b"Host: a", b"Host: a"),
        400,
    ),
    "two hosts in http/1.0": (
        request(b"GET / HTTP/1.0", b"Host: a", b"host: b"),
        400,
    ),
    "too many fields": (
        request(b"GET / HTTP/1.1", b"Host: a", *[b"X-%d: v" % i for i in range(100)]),
        431,
    ),
    "request line too long": (
        request(b"GET /" + b"a" * 70000 + b" HTTP/1.1", b"Host: a"),
        414,
    ),
    "header section too large": (
        request(b"GET / HTTP/1.1", b"Host: a", b"X-A: " + b"v" * 70000),
        431,
    ),
}


@pytest.mark.parametrize("data, status", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_request_reader_rejects_malformed(data: bytes, status: int) -> None:
    reader = RequestReader()

    with pytest.raises(HttpError) as caught:
        reader.feed(data)
        reader.feed_eof()

    assert caught.value.status == status


@pytest.mark.parametrize("data, status", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_request_reader_rejects_malformed_bytewise(data: bytes, status: int) -> None:
    reader = RequestReader()

    with pytest.raises(HttpError) as caught:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
        reader.feed_eof()

    assert caught.value.status == status


def test_request_reader_long_line_rejected_before_end() -> None:
    reader = RequestReader(max_head_size=100)

    with pytest.raises(HttpError) as caught:
        reader.feed(b"GET /" + b"a" * 200)

    assert caught.value.status == 414


def test_request_reader_large_header_rejected_before_end() -> None:
    reader = RequestReader(max_head_size=100)

    with pytest.raises(HttpError) as caught:
        reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"v" * 200)

    assert caught.value.status == 431


def test_request_reader_head_exactly_at_limit() -> None:
    data = request(b"GET / HTTP/1.1", b"Host: a", b"X-A: ")
    padded = request(b"GET / HTTP/1.1", b"Host: a", b"X-A: " + b"v" * (100 - len(data)))
    assert len(padded) == 100

    events = RequestReader(max_head_size=100).feed(padded)

    assert isinstance(events[0], RequestHead)
    with pytest.raises(HttpError):
        RequestReader(max_head_size=99).feed(padded)


def test_request_reader_header_count_at_limit() -> None:
    data = request(b"GET / HTTP/1.1", b"Host: a", *[b"X-%d: v" % i for i in range(99)])

    events = RequestReader().feed(data)

    assert len(events[0].headers) == 100


def test_request_reader_dead_after_error() -> None:
    reader = RequestReader()
    with pytest.raises(HttpError):
        reader.feed(request(b"GET / HTTP/1.1"))

    with pytest.raises(HttpError) as caught:
        reader.feed(GET)

    assert caught.value.status == 400
    with pytest.raises(HttpError):
        reader.feed_eof()


def test_request_reader_simple_get() -> None:
    events = read_all(GET)

    head = events[0]
    assert head.method == b"GET"
    assert head.target == b"/"
    assert head.version == b"1.1"
    assert head.headers == ((b"Host", b"example"),)
    assert head.framing is Framing.NONE
    assert head.content_length is None
    assert head.keep_alive is True
    assert head.expect_continue is False
    assert head.upgrade is None
    assert events[1:] == [EndOfMessage()]


def test_request_reader_strips_value_whitespace() -> None:
    events = read_all(request(b"GET / HTTP/1.1", b"Host:  a \t", b"X-A:\tb c  "))

    assert events[0].headers == ((b"Host", b"a"), (b"X-A", b"b c"))


def test_request_reader_accepts_obs_text_and_tab() -> None:
    events = read_all(request(b"GET / HTTP/1.1", b"Host: a", b"X-A: caf\xc3\xa9\tx"))

    assert events[0].headers[1] == (b"X-A", b"caf\xc3\xa9\tx")


def test_request_reader_accepts_target_forms() -> None:
    for line in (
        b"GET /a/b?c=d&e=%20 HTTP/1.1",
        b"GET http://example/a?b HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
    ):
        events = read_all(request(line, b"Host: example"))
        assert events[0].target == line.split(b" ")[1]


def test_request_reader_content_length_body() -> None:
    events = read_all(request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 5", body=b"hello"))

    assert events[0].framing is Framing.LENGTH
    assert events[0].content_length == 5
    assert body_of(events) == b"hello"
    assert events[-1] == EndOfMessage()


def test_request_reader_length_body_in_pieces() -> None:
    reader = RequestReader()
    reader.feed(request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 10"))

    pieces = [reader.feed(piece) for piece in (b"abc", b"defg", b"hij")]

    assert pieces[0] == [Data(b"abc")]
    assert pieces[1] == [Data(b"defg")]
    assert pieces[2] == [Data(b"hij"), EndOfMessage()]


def test_request_reader_length_body_then_next_request() -> None:
    reader = RequestReader()
    reader.feed(request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 4"))
    reader.feed(b"ab")

    events = reader.feed(b"cd" + GET)

    assert events[:2] == [Data(b"cd"), EndOfMessage()]
    assert isinstance(events[2], RequestHead)


def test_request_reader_zero_length_body() -> None:
    events = read_all(request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 0"))

    assert events[0].framing is Framing.LENGTH
    assert events[1:] == [EndOfMessage()]


CHUNKED_POST = request(
    b"POST /upload HTTP/1.1",
    b"Host: a",
    b"Transfer-Encoding: Chunked",
    body=b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n",
)


def test_request_reader_chunked_body() -> None:
    events = read_all(CHUNKED_POST)

    assert events[0].framing is Framing.CHUNKED
    assert body_of(events) == b"hello 0123456789"
    assert events[-1] == EndOfMessage(trailers=((b"X-Sum", b"1"),))


def test_request_reader_chunked_split_everywhere() -> None:
    data = CHUNKED_POST + GET

    for split in range(len(data) + 1):
        reader = RequestReader()
        events = reader.feed(data[:split]) + reader.feed(data[split:])
        reader.feed_eof()

        heads = [event for event in events if isinstance(event, RequestHead)]
        assert [head.target for head in heads] == [b"/upload", b"/"], split
        assert body_of(events) == b"hello 0123456789", split
        assert events.count(EndOfMessage()) == 1, split


def test_request_reader_chunked_byte_by_byte() -> None:
    reader = RequestReader()
    events = []
    for i in range(len(CHUNKED_POST)):
        events += reader.feed(CHUNKED_POST[i : i + 1])
    reader.feed_eof()

    assert body_of(events) == b"hello 0123456789"
    assert events[-1].trailers == ((b"X-Sum", b"1"),)


def test_request_reader_invalid_trailer() -> None:
    data = request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"0\r\nX-A : b\r\n\r\n")

    with pytest.raises(HttpError) as caught:
        read_all(data)

    assert caught.value.status == 400


def test_request_reader_pipelined() -> None:
    data = (
        request(b"POST /1 HTTP/1.1", b"Host: a", b"Content-Length: 3", body=b"abc")
        + request(b"GET /2 HTTP/1.1", b"Host: a")
        + request(b"POST /3 HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"2\r\nde\r\n0\r\n\r\n")
    )

    events = read_all(data)

    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "RequestHead", "Data", "EndOfMessage",
        "RequestHead", "EndOfMessage",
        "RequestHead", "Data", "EndOfMessage",
    ]
    assert [event.target for event in events if isinstance(event, RequestHead)] == [b"/1", b"/2", b"/3"]
    assert body_of(events) == b"abcde"


def test_request_reader_pipelined_error_after_good_returns_good() -> None:
    reader = RequestReader()

    events = reader.feed(GET + request(b"GET / HTTP/1.1"))

    assert [type(event).__name__ for event in events] == ["RequestHead", "EndOfMessage"]


def test_request_reader_pipelined_error_after_good_kept() -> None:
    reader = RequestReader()

    reader.feed(GET + request(b"GET / HTTP/1.1"))

    assert reader.error.status == 400


def test_request_reader_pipelined_error_raised_on_next_feed() -> None:
    reader = RequestReader()
    reader.feed(GET + request(b"GET / HTTP/1.1"))

    with pytest.raises(HttpError):
        reader.feed(GET)


def test_request_reader_empty_lines_between_requests() -> None:
    events = read_all(GET + b"\r\n\r\n" + GET)

    assert sum(isinstance(event, RequestHead) for event in events) == 2


def test_request_reader_eof_between_requests() -> None:
    reader = RequestReader()
    reader.feed(GET)

    assert reader.feed_eof() is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ],
    ids=["in head", "in length body", "in chunked body"],
)
def test_request_reader_eof_mid_request(data: bytes) -> None:
    reader = RequestReader()
    reader.feed(data)

    with pytest.raises(HttpError) as caught:
        reader.feed_eof()

    assert caught.value.status == 400


def test_request_reader_feed_after_eof() -> None:
    reader = RequestReader()
    reader.feed_eof()

    with pytest.raises(HttpError):
        reader.feed(GET)


@pytest.mark.parametrize(
    "version, connection, keep_alive",
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, CLOSE", False),
        (b"1.1", b"keep-alive", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"foo, keep-alive", True),
        (b"1.0", b"close", False),
    ],
)
def test_request_reader_keep_alive(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    lines = [b"GET / HTTP/" + version, b"Host: a"]
    if connection is not None:
        lines.append(b"Connection: " + connection)

    events = read_all(request(*lines))

    assert events[0].keep_alive is keep_alive


def test_request_reader_http10_without_host() -> None:
    events = read_all(request(b"GET / HTTP/1.0", b"X-A: b"))

    assert events[0].version == b"1.0"


def test_request_reader_expect_continue() -> None:
    data = request(b"POST / HTTP/1.1", b"Host: a", b"Expect: 100-Continue", b"Content-Length: 1", body=b"x")

    events = read_all(data)

    assert events[0].expect_continue is True


UPGRADE_WITH_BODY = request(
    b"POST /ws HTTP/1.1",
    b"Host: a",
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"Content-Length: 3",
    body=b"abc",
)


def test_request_reader_upgrade_keeps_body() -> None:
    events = RequestReader().feed(UPGRADE_WITH_BODY + GET)

    assert events[0].upgrade == b"websocket"
    assert body_of(events) == b"abc"
    assert isinstance(events[-1], EndOfMessage)


def test_request_reader_pauses_after_upgrade() -> None:
    reader = RequestReader()
    events = reader.feed(UPGRADE_WITH_BODY + GET)
    later = reader.feed(GET)

    assert reader.paused
    assert len(events) == 3
    assert later == []


def test_request_reader_resume_parses_next_request() -> None:
    reader = RequestReader()
    reader.feed(UPGRADE_WITH_BODY + GET)
    events = reader.resume()

    assert isinstance(events[0], RequestHead)
    assert events[0].upgrade is None


def test_request_reader_take_remaining_returns_raw_bytes() -> None:
    reader = RequestReader()
    reader.feed(UPGRADE_WITH_BODY + b"\x81\x05hello")
    reader.feed(b"more")

    assert reader.take_remaining() == b"\x81\x05hellomore"


def test_request_reader_upgrade_without_connection() -> None:
    events = read_all(request(b"GET / HTTP/1.1", b"Host: a", b"Upgrade: websocket"))

    assert events[0].upgrade is None


# --- responses ---------------------------------------------------------


def read_response(method: bytes, data: bytes, *, eof: bool = True) -> list:
    reader = ResponseReader()
    reader.expect(method)
    events = reader.feed(data)
    if eof:
        events += reader.feed_eof()
    return events


def test_response_reader_length_body() -> None:
    events = read_response(b"GET", request(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"hi"), eof=False)

    head = events[0]
    assert head.status == 200
    assert head.reason == b"OK"
    assert head.framing is Framing.LENGTH
    assert head.content_length == 2
    assert head.keep_alive is True
    assert body_of(events) == b"hi"
    assert events[-1] == EndOfMessage()


def test_response_reader_length_body_in_pieces() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(request(b"HTTP/1.1 200 OK", b"Content-Length: 6"))

    pieces = [reader.feed(piece) for piece in (b"ab", b"cd", b"ef")]

    assert pieces[0] == [Data(b"ab")]
    assert pieces[1] == [Data(b"cd")]
    assert pieces[2] == [Data(b"ef"), EndOfMessage()]


def test_response_reader_chunked_body() -> None:
    data = request(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nhi\r\n0\r\n\r\n")

    events = read_response(b"GET", data, eof=False)

    assert events[0].framing is Framing.CHUNKED
    assert body_of(events) == b"hi"
    assert events[-1] == EndOfMessage()


@pytest.mark.parametrize("status", [204, 304])
def test_response_reader_no_body_status(status: int) -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.expect(b"GET")

    events = reader.feed(
        request(b"HTTP/1.1 %d X" % status, b"Content-Length: 5")
        + request(b"HTTP/1.1 200 OK", b"Content-Length: 1", body=b"z")
    )

    assert events[0].framing is Framing.NONE
    assert events[1] == EndOfMessage()
    assert events[2].status == 200
    assert body_of(events) == b"z"


def test_response_reader_head_response() -> None:
    reader = ResponseReader()
    reader.expect(b"HEAD")
    reader.expect(b"GET")

    events = reader.feed(
        request(b"HTTP/1.1 200 OK", b"Content-Length: 50")
        + request(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=b"1\r\nq\r\n0\r\n\r\n")
    )

    assert events[0].framing is Framing.NONE
    assert events[0].headers == ((b"Content-Length", b"50"),)
    assert events[1] == EndOfMessage()
    assert events[2].framing is Framing.CHUNKED
    assert body_of(events) == b"q"


def test_response_reader_head_response_chunked() -> None:
    events = read_response(b"HEAD", request(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"))

    assert events[0].framing is Framing.NONE
    assert events[1:] == [EndOfMessage()]


def test_response_reader_interim_then_final() -> None:
    reader = ResponseReader()
    reader.expect(b"POST")

    events = reader.feed(
        request(b"HTTP/1.1 100 Continue")
        + request(b"HTTP/1.1 103 Early Hints", b"Link: </a>")
        + request(b"HTTP/1.1 201 Created", b"Content-Length: 2", body=b"ok")
    )

    statuses = [event.status for event in events if isinstance(event, ResponseHead)]
    assert statuses == [100, 103, 201]
    assert events[1] == EndOfMessage()
    assert events[3] == EndOfMessage()
    assert body_of(events) == b"ok"


def test_response_reader_interim_leaves_request_pending() -> None:
    reader = ResponseReader()
    reader.expect(b"HEAD")
    reader.feed(request(b"HTTP/1.1 100 Continue"))

    events = reader.feed(request(b"HTTP/1.1 200 OK", b"Content-Length: 9"))

    assert events[0].framing is Framing.NONE


def test_response_reader_close_delimited() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")

    events = reader.feed(b"HTTP/1.1 200 OK\r\n\r\nab") + reader.feed(b"cd")

    assert events[0].framing is Framing.CLOSE
    assert events[0].keep_alive is False
    assert body_of(events) == b"abcd"
    assert reader.feed_eof() == [EndOfMessage()]


def test_response_reader_close_delimited_http10() -> None:
    events = read_response(b"GET", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nxyz")

    assert events[0].framing is Framing.CLOSE
    assert events[0].keep_alive is False
    assert body_of(events) == b"xyz"
    assert events[-1] == EndOfMessage()


@pytest.mark.parametrize(
    "version, connection, keep_alive",
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
    ],
)
def test_response_reader_keep_alive(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    lines = [b"HTTP/" + version + b" 200 OK", b"Content-Length: 0"]
    if connection is not None:
        lines.append(b"Connection: " + connection)

    events = read_response(b"GET", request(*lines))

    assert events[0].keep_alive is keep_alive


def test_response_reader_status_without_reason() -> None:
    events = read_response(b"GET", b"HTTP/1.1 204\r\n\r\n")

    assert events[0].status == 204
    assert events[0].reason == b""


def test_response_reader_eof_between_responses() -> None:
    reader = ResponseReader()

    assert reader.feed_eof() == []


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
    ids=["in head", "in length body", "in chunked body"],
)
def test_response_reader_eof_mid_response(data: bytes) -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(data)

    with pytest.raises(HttpError) as caught:
        reader.feed_eof()

    assert caught.value.status == 502


def test_response_reader_data_before_expect() -> None:
    reader = ResponseReader()

    with pytest.raises(HttpError) as caught:
        reader.feed(b"HTTP/1.1 200 OK\r\n")

    assert caught.value.status == 502
    assert "unexpected data" in caught.value.reason


def test_response_reader_extra_response() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")

    with pytest.raises(HttpError) as caught:
        reader.feed(request(b"HTTP/1.1 200 OK", b"Content-Length: 0") + b"HTTP/1.1 200 OK\r\n")

    assert caught.value.status == 502


BAD_RESPONSES = {
    "content length with chunked": request(
        b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"
    ),
    "two content lengths": request(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Content-Length: 1", body=b"x"),
    "gzip chunked": request(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
    "bad chunk size": request(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=b"g\r\n"),
    "obs-fold": request(b"HTTP/1.1 200 OK", b"X-A: b", b" c", b"Content-Length: 0"),
    "space before colon": request(b"HTTP/1.1 200 OK", b"Content-Length : 0"),
    "nul in value": request(b"HTTP/1.1 200 OK", b"X-A: \x00", b"Content-Length: 0"),
    "http/2": request(b"HTTP/2 200 OK", b"Content-Length: 0"),
    "status two digits": request(b"HTTP/1.1 20 OK", b"Content-Length: 0"),
    "status four digits": request(b"HTTP/1.1 2000 OK", b"Content-Length: 0"),
    "status 600": request(b"HTTP/1.1 600 OK", b"Content-Length: 0"),
    "no space after status": request(b"HTTP/1.1 200OK", b"Content-Length: 0"),
    "control in reason": request(b"HTTP/1.1 200 O\x01K", b"Content-Length: 0"),
    "switching protocols": request(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket"),
    "header section too large": request(b"HTTP/1.1 200 OK", b"X-A: " + b"v" * 70000),
    "too many fields": request(b"HTTP/1.1 200 OK", *[b"X-%d: v" % i for i in range(101)]),
}


@pytest.mark.parametrize("data", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_response_reader_rejects_malformed(data: bytes) -> None:
    reader = ResponseReader()
    reader.expect(b"GET")

    with pytest.raises(HttpError) as caught:
        reader.feed(data)
        reader.feed_eof()

    assert caught.value.status == 502


def test_response_reader_chunked_split_everywhere() -> None:
    data = request(
        b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n"
    ) + request(b"HTTP/1.1 404 Not Found", b"Content-Length: 1", body=b"n")

    for split in range(len(data) + 1):
        reader = ResponseReader()
        reader.expect(b"GET")
        reader.expect(b"GET")
        events = reader.feed(data[:split]) + reader.feed(data[split:])

        statuses = [event.status for event in events if isinstance(event, ResponseHead)]
        assert statuses == [200, 404], split
        assert body_of(events) == b"abcden", split
        assert reader.feed_eof() == [], split
