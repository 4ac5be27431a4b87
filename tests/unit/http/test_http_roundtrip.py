"""Property tests: a request parsed and re-serialized for the app reads back
the same through h11, an independent HTTP/1.1 parser."""

from __future__ import annotations

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from e5s_proxy.http import (
    Data,
    EndOfMessage,
    Framing,
    RequestHead,
    RequestReader,
    encode_chunk,
    is_peer_header,
    request_head_for_app,
)

PEER = b"X-Peer-Spiffe-Id"
PEER_ID = b"spiffe://example.org/ns/default/sa/client"

# Names the rules remove or set themselves; the generator leaves them to
# the explicit tests.
RESERVED = {
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"transfer-encoding",
    b"content-length",
    b"expect",
}

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._~/%=&?:@!$'()*+,;"

methods = st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"])
targets = st.text(PATH_CHARS, max_size=40).map(lambda path: ("/" + path).encode())
names = st.text(TCHAR, min_size=1, max_size=20).map(str.encode).filter(
    lambda name: name.lower() not in RESERVED
)
peer_spellings = st.sampled_from([b"X-Peer-Spiffe-Id", b"x_peer_spiffe_id", b"X_PEER-SPIFFE_ID"])
values = st.text(VCHAR + " \t", max_size=40).map(lambda value: value.strip(" \t").encode())
fields = st.lists(st.tuples(st.one_of(names, peer_spellings), values), max_size=12)
bodies = st.binary(max_size=300)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]], bytes, list[bytes]]:
    """Draw (wire bytes, end-to-end fields, body, nominated names)."""
    method = draw(methods)
    target = draw(targets)
    end_to_end = [(b"Host", b"example.org")] + draw(fields)
    body = draw(bodies)
    chunked = draw(st.booleans())

    nominated = draw(st.lists(st.sampled_from([name for name, _ in end_to_end[1:]] or [b"x-none"]), max_size=3))

    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in end_to_end]
    if nominated:
        lines.append(b"Connection: " + b", ".join(nominated))

    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)])]
        framed = b"".join(encode_chunk(piece) for piece in pieces) + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        framed = body

    wire = b"\r\n".join(lines) + b"\r\n\r\n" + framed
    return wire, end_to_end, body, nominated


def read_with_h11(data: bytes) -> tuple[h11.Request, bytes]:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)

    request = connection.next_event()
    assert isinstance(request, h11.Request)

    body = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.EndOfMessage):
            return request, body
        assert isinstance(event, h11.Data), event
        body += event.data


@settings(max_examples=300, deadline=None)
@given(requests())
def test_app_head_roundtrip_through_h11(drawn: tuple) -> None:
    wire, end_to_end, body, nominated = drawn

    events = RequestReader().feed(wire)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert events[-1] == EndOfMessage()
    parsed_body = b"".join(event.data for event in events if isinstance(event, Data))
    assert parsed_body == body

    forwarded = request_head_for_app(head, peer_header=PEER, peer_id=PEER_ID)
    if head.framing is Framing.CHUNKED:
        forwarded += encode_chunk(parsed_body) + b"0\r\n\r\n"
    else:
        forwarded += parsed_body

    request, h11_body = read_with_h11(forwarded)

    removed = {name.lower() for name in nominated}
    expected = [
        (name.lower(), value)
        for name, value in end_to_end
        if name.lower() not in removed and not is_peer_header(name, PEER)
    ]
    expected.append((PEER.lower(), PEER_ID))
    received = [
        (name, value)
        for name, value in request.headers
        if name not in (b"content-length", b"transfer-encoding")
    ]

    assert request.method == head.method
    assert request.target == head.target
    assert received == expected
    assert sum(is_peer_header(name, PEER) for name, _ in request.headers) == 1
    assert h11_body == body


@settings(max_examples=100, deadline=None)
@given(requests(), st.lists(st.integers(0, 2000), max_size=6))
def test_request_reader_split_invariant(drawn: tuple, cuts: list[int]) -> None:
    wire = drawn[0]
    whole = RequestReader().feed(wire)

    reader = RequestReader()
    pieces_events = []
    bounds = sorted(min(cut, len(wire)) for cut in cuts)
    for start, end in zip([0, *bounds], [*bounds, len(wire)]):
        pieces_events += reader.feed(wire[start:end])
    reader.feed_eof()

    def merged(events: list) -> list:
        body = b"".join(event.data for event in events if isinstance(event, Data))
        return [event for event in events if not isinstance(event, Data)] + [body]

    assert merged(pieces_events) == merged(whole)
