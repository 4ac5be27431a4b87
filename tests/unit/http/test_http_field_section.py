"""The single-regex reading of a header section agrees with the line-by-line one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from e5s_proxy.http import HttpError
from e5s_proxy.http.reader import _Limits, _split_head, _split_head_by_line

LIMITS = _Limits(bad_status=400, long_line_status=414, large_head_status=431, max_head_size=65536, max_header_count=4)

# Bytes that matter to the grammar: token characters, separators, whitespace,
# controls, obs-text and the line ending itself.
PIECES = st.sampled_from(
    [b"a", b"Z", b"-", b"!", b"~", b":", b" ", b"\t", b"\r", b"\x00", b"\x7f", b"\x80", b"\xff", b"(", b"\"", b"v", b"1", b"\r\n"]
)
LINES = st.lists(st.lists(PIECES, max_size=12).map(b"".join), max_size=6)


def outcome(split, head: bytes) -> object:
    try:
        return split(head, LIMITS)
    except HttpError as error:
        return (error.status, error.reason)


@settings(max_examples=2000, deadline=None)
@given(LINES)
def test_split_head_matches_line_by_line_reading(lines: list[bytes]) -> None:
    head = b"\r\n".join([b"GET / HTTP/1.1", *lines]) + b"\r\n\r\n"
    assert outcome(_split_head, head) == outcome(_split_head_by_line, head)


def test_split_head_strips_whitespace_around_value() -> None:
    head = b"GET / HTTP/1.1\r\nName: \t a \t b \t\r\n\r\n"
    assert _split_head(head, LIMITS) == (b"GET / HTTP/1.1", ((b"Name", b"a \t b"),))


def test_split_head_keeps_empty_value() -> None:
    head = b"GET / HTTP/1.1\r\nName:\r\n\r\n"
    assert _split_head(head, LIMITS) == (b"GET / HTTP/1.1", ((b"Name", b""),))


def test_split_head_counts_fields_against_limit() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"A: 1\r\n" * 5 + b"\r\n"
    assert outcome(_split_head, head) == (431, "more than 4 header fields")
