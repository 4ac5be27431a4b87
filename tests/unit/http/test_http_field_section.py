"""The single-regex reading of a header section agrees with the line-by-line one."""

from __future__ import annotations

import signal

from hypothesis import given, settings
from hypothesis import strategies as st

from e5s_proxy.http import HttpError, RequestReader, ResponseReader
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


# Seconds a head of a few hundred bytes may take to read. The line-by-line
# reading takes well under a millisecond.
HEAD_TIME_LIMIT = 2


def read_with_time_limit(reader, head: bytes) -> object:
    """Feed ``head`` to ``reader`` and fail the test if that takes longer than HEAD_TIME_LIMIT.

    SIGALRM interrupts the regular expression engine, which checks for
    signals while it backtracks, so a slow match fails the test instead of
    hanging it.
    """

    def time_out(signum, frame):
        raise AssertionError(f"reading a {len(head)}-byte head took more than {HEAD_TIME_LIMIT}s")

    previous = signal.signal(signal.SIGALRM, time_out)
    signal.alarm(HEAD_TIME_LIMIT)
    try:
        return reader.feed(head)
    except HttpError as error:
        return (error.status, error.reason)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# Each empty value with whitespace can be split two ways between the
# whitespace before and after it, so a regular expression that backtracks
# over them tries 2**40 splits before it gives up on the bad line.
EMPTY_VALUES_THEN_BAD_LINE = b"A: \r\n" * 40 + b"B: \x00\r\n"


def test_request_head_empty_values_read_fast() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + EMPTY_VALUES_THEN_BAD_LINE + b"\r\n"

    outcome = read_with_time_limit(RequestReader(), head)

    assert outcome == (400, "invalid character in value of header 'B'")


def test_response_head_empty_values_read_fast() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + EMPTY_VALUES_THEN_BAD_LINE + b"\r\n"
    reader = ResponseReader()
    reader.expect(b"GET")

    outcome = read_with_time_limit(reader, head)

    assert outcome == (502, "invalid character in value of header 'B'")


def test_request_head_long_whitespace_read_fast() -> None:
    # One line: the whitespace before an empty value and after it split
    # 60,000 spaces in about 1.8e9 ways.
    head = b"GET / HTTP/1.1\r\nHost: a\r\nA:" + b" " * 60_000 + b"b\x00\r\n\r\n"

    outcome = read_with_time_limit(RequestReader(), head)

    assert outcome == (400, "invalid character in value of header 'A'")
