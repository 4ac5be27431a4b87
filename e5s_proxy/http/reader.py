"""Turn the bytes of one HTTP/1.1 connection into message events.

``RequestReader`` reads what a client sends and ``ResponseReader`` reads what
a server sends back. Both accept bytes in pieces of any size and return
``RequestHead``/``ResponseHead``, ``Data`` and ``EndOfMessage`` events in wire
order. Anything malformed or ambiguous raises ``HttpError``, after which the
reader is dead and raises the same error again.

Parsing is done twice: this module frames every message and checks the head
against the RFC 9110/9112 grammar itself, and llhttp (through httptools)
parses the same bytes independently. Both must accept a message. llhttp
decodes chunked bodies. It has no setting for a response to HEAD and it
skips the body of an Upgrade request, so each chunked body goes to its own
llhttp parser primed with a minimal head that declares only the framing.
A body framed by Content-Length or by the close of the connection is taken
as it comes, without llhttp.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable

import httptools

from e5s_proxy.http.events import (
    Data,
    EndOfMessage,
    Framing,
    Headers,
    HttpError,
    RequestHead,
    ResponseHead,
)

# Close to Envoy's default max_request_headers_kb of 60 KiB: large enough for
# big cookies and JWT bearer tokens, small enough to bound what one
# connection can make the proxy buffer.
MAX_HEAD_SIZE = 64 * 1024

# Envoy's default max_headers_count (since Envoy 1.11.2).
MAX_HEADER_COUNT = 100

# A chunk-size line is a hex number plus optional extensions. Nothing
# legitimate comes close to this, and the line must be buffered whole.
MAX_CHUNK_LINE_SIZE = 4 * 1024

# Any 18-digit number fits in a signed 64-bit integer, the length type of
# most HTTP stacks. A longer Content-Length is rejected, never wrapped.
MAX_CONTENT_LENGTH_DIGITS = 18

# RFC 9110 section 5.6.2: tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9110 section 5.5: field-vchar, SP and HTAB. Controls (NUL, CR, LF and
# DEL among them) are invalid; obs-text (0x80-0xFF) is allowed.
_INVALID_VALUE_BYTE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")

# A request-target is visible ASCII only (RFC 9112 section 3.2).
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")

_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e]*)?")

# A whole header section of valid field lines, each ended by CRLF: a token,
# a colon, then a value of field-vchars with single spaces or tabs inside and
# optional whitespace around. `_FIELD_LINE.findall` yields (name, value)
# pairs with the value already stripped. Anything else takes the line-by-line
# path, which names the fault. The quantifiers are possessive and each line
# is atomic, so a line matches in one way only and a failing section costs
# linear time: with backtracking, empty values between whitespace made the
# match exponential in the number of lines.
_FIELD_LINE_TEXT = (
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]++):[\t ]*+"
    rb"((?:[\x21-\x7e\x80-\xff]++(?:[\t ]++[\x21-\x7e\x80-\xff]++)*+)?+)[\t ]*+\r\n"
)
_FIELD_LINE = re.compile(_FIELD_LINE_TEXT)
_FIELD_SECTION = re.compile(rb"(?>" + _FIELD_LINE_TEXT + rb")*+")

# Lower-cased names of the fields that framing, keep-alive, upgrades and
# the Host check depend on.
_FRAMING_FIELDS = frozenset(
    (b"connection", b"content-length", b"expect", b"host", b"transfer-encoding", b"upgrade")
)

# A line feed not preceded by a carriage return.
_BARE_LF = re.compile(rb"(?<!\r)\n")

_NO_BODY_STATUSES = (204, 304)

# The head that primes the llhttp parser decoding a chunked body. It
# declares only the framing; the method and target carry no meaning.
_CHUNKED_BODY_HEAD = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Limits:
    """Error statuses and size limits of one reader."""

    def __init__(
        self,
        *,
        bad_status: int,
        long_line_status: int,
        large_head_status: int,
        max_head_size: int,
        max_header_count: int,
    ) -> None:
        if max_head_size <= 0:
            raise ValueError(f"max_head_size must be positive, got {max_head_size}")

        if max_header_count <= 0:
            raise ValueError(
                f"max_header_count must be positive, got {max_header_count}"
            )

        self.bad_status = bad_status
        self.long_line_status = long_line_status
        self.large_head_status = large_head_status
        self.max_head_size = max_head_size
        self.max_header_count = max_header_count

    def bad(self, reason: str) -> HttpError:
        return HttpError(self.bad_status, reason)


# ---------------------------------------------------------------------------
# Heads: finding the end, splitting, checking the grammar.


class _HeadBuffer:
    """Find the end of a head in a growing buffer, with the size limit."""

    def __init__(self, limits: _Limits) -> None:
        self._limits = limits
        self._scanned = 0

    def reset(self) -> None:
        self._scanned = 0

    def take_head(self, buf: bytearray) -> bytes | None:
        """Remove and return a complete head from ``buf``, or None if incomplete.

        The head includes its terminating empty line. Raises ``HttpError`` for
        a bare LF or a head over the size limit, as soon as either is visible.
        """
        start = max(0, self._scanned - 3)
        limit = self._limits.max_head_size

        end = buf.find(b"\r\n\r\n", start, limit)

        if _BARE_LF.search(buf, start, end if end != -1 else limit) is not None:
            raise self._limits.bad("invalid line ending: LF without CR")

        if end == -1:
            self._scanned = len(buf)
            if len(buf) >= limit:
                raise self._too_large(buf)
            return None

        head_size = end + 4

        head = bytes(buf[:head_size])
        del buf[:head_size]
        self._scanned = 0
        return head

    def _too_large(self, buf: bytearray) -> HttpError:
        first_line_end = buf.find(b"\r\n", 0, self._limits.max_head_size + 2)
        if first_line_end == -1 or first_line_end + 2 > self._limits.max_head_size:
            return HttpError(
                self._limits.long_line_status,
                f"start line longer than {self._limits.max_head_size} bytes",
            )

        return HttpError(
            self._limits.large_head_status,
            f"header section larger than {self._limits.max_head_size} bytes",
        )


def _split_head(head: bytes, limits: _Limits) -> tuple[bytes, Headers]:
    """Split a complete head into its start line and checked header fields."""
    start_end = head.find(b"\r\n")
    start_line = head[:start_end]
    section = head[start_end + 2 : -2]
    if b"\r" not in start_line and _FIELD_SECTION.fullmatch(section) is not None:
        headers = tuple(_FIELD_LINE.findall(section))
        if len(headers) <= limits.max_header_count:
            return start_line, headers
    return _split_head_by_line(head, limits)


def _split_head_by_line(head: bytes, limits: _Limits) -> tuple[bytes, Headers]:
    """Split a head line by line, raising the error that fits its first fault."""
    lines = head[:-4].split(b"\r\n")
    start_line = lines[0]

    if b"\r" in start_line:
        raise limits.bad("invalid line ending: CR without LF")

    field_lines = lines[1:]
    if len(field_lines) > limits.max_header_count:
        raise HttpError(
            limits.large_head_status,
            f"more than {limits.max_header_count} header fields",
        )

    headers = tuple(_parse_field_line(line, limits) for line in field_lines)
    return start_line, headers


def _parse_field_line(line: bytes, limits: _Limits) -> tuple[bytes, bytes]:
    """Check one field line (RFC 9112 section 5) and return (name, value)."""
    if line[:1] in (b" ", b"\t"):
        raise limits.bad("obsolete line folding in header section")

    colon = line.find(b":")
    if colon == -1:
        raise limits.bad("header line without colon")

    name = line[:colon]
    if name[-1:] in (b" ", b"\t"):
        raise limits.bad("whitespace between header name and colon")

    if _TOKEN.fullmatch(name) is None:
        raise limits.bad("invalid header name")

    value = line[colon + 1 :].strip(b" \t")
    if _INVALID_VALUE_BYTE.search(value) is not None:
        raise limits.bad(f"invalid character in value of header {_show(name)}")

    return name, value


def _show(value: bytes) -> str:
    """Render untrusted bytes for an error message."""
    return repr(value[:80].decode("ascii", "backslashreplace"))


def _framing_fields(headers: Headers) -> dict[bytes, list[bytes]]:
    """Return the values of the `_FRAMING_FIELDS` in ``headers``, by lower-cased name."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        name = name.lower()
        if name in _FRAMING_FIELDS:
            found.setdefault(name, []).append(value)
    return found


def _tokens(values: list[bytes]) -> set[bytes]:
    """Return the lower-cased comma-separated tokens of field ``values``."""
    tokens = set()
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                tokens.add(item)
    return tokens


def _keep_alive(version: bytes, fields: dict[bytes, list[bytes]]) -> bool:
    """Apply RFC 9112 section 9.3 to the Connection field."""
    connection = _tokens(fields.get(b"connection", ()))
    if b"close" in connection:
        return False

    if version == b"1.1":
        return True

    return b"keep-alive" in connection


def _declared_framing(
    version: bytes, fields: dict[bytes, list[bytes]], limits: _Limits
) -> tuple[Framing | None, int | None]:
    """Read Content-Length and Transfer-Encoding (RFC 9112 section 6).

    Returns (CHUNKED, None), (LENGTH, n) or (None, None) when the message
    declares neither. Several Content-Length fields are rejected even when
    their values are equal, because that is the stricter reading and no
    correct sender needs it.
    """
    lengths = fields.get(b"content-length", ())
    codings = fields.get(b"transfer-encoding", ())

    if lengths and codings:
        raise limits.bad("both Content-Length and Transfer-Encoding")

    if codings:
        if version == b"1.0":
            raise limits.bad("Transfer-Encoding in an HTTP/1.0 message")

        if len(codings) > 1 or codings[0].lower() != b"chunked":
            raise limits.bad("unsupported Transfer-Encoding: only chunked is accepted")

        return Framing.CHUNKED, None

    if lengths:
        if len(lengths) > 1:
            raise limits.bad("more than one Content-Length")

        value = lengths[0]
        if not value.isdigit() or not value.isascii():
            raise limits.bad(f"invalid Content-Length {_show(value)}")

        if len(value) > MAX_CONTENT_LENGTH_DIGITS:
            raise limits.bad(f"Content-Length {_show(value)} too large")

        return Framing.LENGTH, int(value)

    return None, None


def _parse_version(version: bytes, limits: _Limits) -> bytes:
    if version == b"HTTP/1.1":
        return b"1.1"

    if version == b"HTTP/1.0":
        return b"1.0"

    raise limits.bad(f"unsupported HTTP version {_show(version)}")


# ---------------------------------------------------------------------------
# llhttp: second opinion on heads, body decoding.


class _LlhttpHead:
    """Target and fields that llhttp parses from a head, for comparison."""

    def __init__(self) -> None:
        self.target = b""
        self.fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.strip(b" \t")))


def _check_with_llhttp(
    head: bytes,
    parser_class: Callable[[object], httptools.HttpRequestParser],
    headers: Headers,
    limits: _Limits,
) -> _LlhttpHead:
    """Feed ``head`` alone to a fresh llhttp parser and compare its fields."""
    seen = _LlhttpHead()
    parser = parser_class(seen)

    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        # llhttp stops at the end of an Upgrade request's head, which is all
        # it is given here.
        pass
    except httptools.HttpParserError as error:
        raise limits.bad(f"malformed message head: {error}") from None

    if tuple(seen.fields) != headers:
        raise limits.bad("header section parsed differently by llhttp")

    return seen


class _BodyDecoder:
    """Decode one chunked body with llhttp, given exactly the bytes of that body."""

    def __init__(self, limits: _Limits) -> None:
        self._limits = limits
        self._pieces: list[bytes] = []
        self._messages = 0
        self.complete = False
        self._parser = httptools.HttpRequestParser(self)
        self._parser.feed_data(_CHUNKED_BODY_HEAD)

    def on_message_begin(self) -> None:
        self._messages += 1

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def decode(self, data: bytes) -> bytes:
        """Feed body bytes and return the payload they carry."""
        if self.complete:
            raise self._limits.bad("body framing parsed differently by llhttp")

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            raise self._limits.bad(f"malformed body: {error}") from None

        # A second message means llhttp saw the body end before we did.
        if self._messages > 1:
            raise self._limits.bad("body framing parsed differently by llhttp")

        payload = b"".join(self._pieces)
        self._pieces.clear()
        return payload


class _ChunkedFramer:
    """Find where a chunked body ends, checking its framing on the way.

    llhttp decodes the chunks, but httptools does not tell how many bytes a
    message used, so this class finds the message end and takes only the
    bytes of this message out of the buffer.
    """

    _SIZE_LINE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)

    def __init__(self, limits: _Limits) -> None:
        self._limits = limits
        self._state = self._SIZE_LINE
        self._remaining = 0
        self._trailer_size = 0
        self.trailers: list[tuple[bytes, bytes]] = []

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def take(self, buf: bytearray) -> bytes:
        """Remove and return the bytes of ``buf`` that belong to this body."""
        taken = 0
        while self._state != self._DONE:
            step = self._step(buf, taken)
            if step == 0:
                break
            taken += step

        framed = bytes(buf[:taken])
        del buf[:taken]
        return framed

    def _step(self, buf: bytearray, start: int) -> int:
        """Advance over one line or data run at ``start``; return its size, 0 if incomplete."""
        if self._state == self._DATA:
            step = min(self._remaining, len(buf) - start)
            self._remaining -= step
            if self._remaining == 0:
                self._state = self._DATA_END
            return step

        if self._state == self._DATA_END:
            if len(buf) - start < 2:
                return 0
            if buf[start : start + 2] != b"\r\n":
                raise self._limits.bad("chunk data not followed by CRLF")
            self._state = self._SIZE_LINE
            return 2

        line = self._line(buf, start)
        if line is None:
            return 0

        if self._state == self._SIZE_LINE:
            self._read_size_line(line)
        else:
            self._read_trailer_line(line)
        return len(line) + 2

    def _line(self, buf: bytearray, start: int) -> bytes | None:
        if self._state == self._SIZE_LINE:
            max_line = MAX_CHUNK_LINE_SIZE
        else:
            max_line = self._limits.max_head_size - self._trailer_size

        end = buf.find(b"\r\n", start, start + max_line + 2)
        if end == -1:
            pending = buf[start : start + max_line + 2]
            if b"\n" in pending:
                raise self._limits.bad("invalid line ending: LF without CR")
            if len(pending) > max_line:
                raise self._line_too_long()
            return None

        line = bytes(buf[start:end])
        if b"\n" in line or b"\r" in line:
            raise self._limits.bad("invalid line ending in chunked body")
        return line

    def _line_too_long(self) -> HttpError:
        if self._state == self._SIZE_LINE:
            return self._limits.bad("chunk size line too long")

        return HttpError(
            self._limits.large_head_status,
            f"trailer section larger than {self._limits.max_head_size} bytes",
        )

    def _read_size_line(self, line: bytes) -> None:
        match = _CHUNK_SIZE_LINE.fullmatch(line)
        if match is None:
            raise self._limits.bad(f"invalid chunk size line {_show(line)}")

        size = int(match.group(1), 16)
        if size == 0:
            self._state = self._TRAILERS
        else:
            self._remaining = size
            self._state = self._DATA

    def _read_trailer_line(self, line: bytes) -> None:
        self._trailer_size += len(line) + 2

        if line == b"":
            self._state = self._DONE
            return

        if len(self.trailers) >= self._limits.max_header_count:
            raise HttpError(
                self._limits.large_head_status,
                f"more than {self._limits.max_header_count} trailer fields",
            )
        self.trailers.append(_parse_field_line(line, self._limits))


# ---------------------------------------------------------------------------
# Body state shared by both readers.


class _Body:
    """The body being read: its framing, decoder and progress."""

    def __init__(self, framing: Framing, length: int | None, limits: _Limits) -> None:
        self.framing = framing
        self.remaining = length or 0
        chunked = framing is Framing.CHUNKED
        self.decoder = _BodyDecoder(limits) if chunked else None
        self.framer = _ChunkedFramer(limits) if chunked else None
        self._limits = limits

    def take_part(self, data: bytes) -> Data:
        """Take ``data``, shorter than what remains of a Content-Length body, as it is."""
        self.remaining -= len(data)
        return Data(data)

    def read(self, buf: bytearray) -> tuple[list[Data | EndOfMessage], bool]:
        """Consume body bytes from ``buf`` and return (events, whether the body ended)."""
        if self.framer is not None:
            framed = self.framer.take(buf)
            done = self.framer.done
        elif self.framing is Framing.LENGTH:
            framed = _take_bytes(buf, self.remaining)
            self.remaining -= len(framed)
            done = self.remaining == 0
        else:
            framed = _take_bytes(buf, len(buf))
            done = False

        events: list[Data | EndOfMessage] = []
        if self.decoder is None:
            payload = framed
        else:
            payload = self.decoder.decode(framed) if framed else b""
        if payload:
            events.append(Data(payload))

        if done:
            if self.decoder is not None and not self.decoder.complete:
                raise self._limits.bad("body framing parsed differently by llhttp")
            trailers = tuple(self.framer.trailers) if self.framer else ()
            events.append(EndOfMessage(trailers))

        return events, done


def _take_bytes(buf: bytearray, count: int) -> bytes:
    """Remove and return the first ``count`` bytes of ``buf``, copying them once."""
    if count >= len(buf):
        prefix = bytes(buf)
        buf.clear()
        return prefix
    # Both views are released before the resize, which a live view forbids.
    with memoryview(buf) as view, view[:count] as part:
        prefix = bytes(part)
    del buf[:count]
    return prefix


class _Reader:
    """Buffer, error latch and head search shared by both readers."""

    def __init__(self, limits: _Limits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._heads = _HeadBuffer(limits)
        self._body: _Body | None = None
        self._error: HttpError | None = None
        self._closed = False

    def _check_alive(self) -> None:
        if self._error is not None:
            raise self._error

        if self._closed:
            self._fail(self._limits.bad("data after end of stream"))

    def _fail(self, error: HttpError) -> None:
        self._error = error
        raise error

    def take_remaining(self) -> bytes:
        """End HTTP parsing after a switch of protocols; return the bytes not parsed."""
        remaining = bytes(self._buf)
        self._buf.clear()
        self._closed = True
        return remaining

    def _body_part(self, data: bytes) -> list | None:
        """Return ``data`` as an event of the Content-Length body in progress, if it falls inside it.

        This skips the buffer for the bulk of a large body: nothing is
        buffered then, and the body does not end within ``data``.
        """
        body = self._body
        if body is None or self._buf or body.framing is not Framing.LENGTH or len(data) >= body.remaining:
            return None
        return [body.take_part(data)] if data else []

    def _read_body(self, events: list) -> bool:
        """Read the current body into ``events``; return True once it ended."""
        assert self._body is not None
        body_events, done = self._body.read(self._buf)
        events.extend(body_events)
        if done:
            self._body = None
        return done


# ---------------------------------------------------------------------------
# Requests.


class RequestReader(_Reader):
    """Read the requests a client sends on one connection.

    After a request that requests an upgrade, the reader stops parsing:
    bytes that follow may belong to the new protocol. The caller then
    either calls `resume` (the server declined, so HTTP/1.1 goes on) or
    `take_remaining` (the server switched protocols).
    """

    def __init__(
        self,
        *,
        max_head_size: int = MAX_HEAD_SIZE,
        max_header_count: int = MAX_HEADER_COUNT,
    ) -> None:
        super().__init__(
            _Limits(
                bad_status=400,
                long_line_status=414,
                large_head_status=431,
                max_head_size=max_head_size,
                max_header_count=max_header_count,
            )
        )
        self._upgrade_requested = False
        self.paused = False

    def feed(self, data: bytes) -> list[RequestHead | Data | EndOfMessage]:
        """Add received bytes and return the events they complete."""
        self._check_alive()
        if not self.paused:
            part = self._body_part(data)
            if part is not None:
                return part
        self._buf += data
        if self.paused:
            return []
        return self._parse_buffered()

    def resume(self) -> list[RequestHead | Data | EndOfMessage]:
        """Parse on after an upgrade request the server declined."""
        self._check_alive()
        self.paused = False
        return self._parse_buffered()

    @property
    def error(self) -> HttpError | None:
        """The error that ended parsing, if any; later calls raise it."""
        return self._error

    def _parse_buffered(self) -> list[RequestHead | Data | EndOfMessage]:
        """Parse what is buffered.

        When valid events come before an error in the same bytes, they are
        returned and the error waits in `error`, so the caller can respond to
        the valid requests first. With no events before it, the error is raised.
        """
        events: list[RequestHead | Data | EndOfMessage] = []
        try:
            self._read_events(events)
        except HttpError as error:
            if not events:
                self._fail(error)
            self._error = error
        return events

    def feed_eof(self) -> None:
        """Note that the client closed; raise HttpError if a request was cut."""
        self._check_alive()
        self._closed = True

        if self._body is not None or self._buf:
            self._fail(HttpError(400, "connection closed in the middle of a request"))

    def _read_events(self, events: list) -> None:
        while True:
            if self._body is not None:
                if not self._read_body(events):
                    return
                if self._pause_for_upgrade():
                    return
                continue

            # RFC 9112 section 2.2: ignore empty lines before a request-line.
            while self._buf.startswith(b"\r\n"):
                del self._buf[:2]

            head = self._heads.take_head(self._buf)
            if head is None:
                return

            request = self._parse_head(head)
            events.append(request)

            self._upgrade_requested = request.upgrade is not None
            if request.framing is Framing.NONE or request.content_length == 0:
                events.append(EndOfMessage())
                if self._pause_for_upgrade():
                    return
            else:
                self._body = _Body(request.framing, request.content_length, self._limits)

    def _pause_for_upgrade(self) -> bool:
        if not self._upgrade_requested:
            return False
        self._upgrade_requested = False
        self.paused = True
        return True

    def _parse_head(self, head: bytes) -> RequestHead:
        limits = self._limits
        request_line, headers = _split_head(head, limits)

        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise limits.bad(f"invalid request line {_show(request_line)}")
        method, target, version_text = parts

        if _TOKEN.fullmatch(method) is None:
            raise limits.bad(f"invalid method {_show(method)}")

        if method == b"CONNECT":
            raise limits.bad("CONNECT is not supported")

        _check_target(method, target, limits)
        version = _parse_version(version_text, limits)

        fields = _framing_fields(headers)
        hosts = fields.get(b"host", ())
        if len(hosts) > 1:
            raise limits.bad("more than one Host header")
        if version == b"1.1" and not hosts:
            raise limits.bad("missing Host header")

        framing, length = _declared_framing(version, fields, limits)

        seen = _check_with_llhttp(head, httptools.HttpRequestParser, headers, limits)
        if seen.target != target:
            raise limits.bad("request target parsed differently by llhttp")

        upgrade = None
        upgrades = fields.get(b"upgrade")
        if upgrades and b"upgrade" in _tokens(fields.get(b"connection", ())):
            upgrade = b", ".join(upgrades)

        expect = [value.lower() for value in fields.get(b"expect", ())]

        return RequestHead(
            method=method,
            target=target,
            version=version,
            headers=headers,
            keep_alive=_keep_alive(version, fields),
            framing=framing or Framing.NONE,
            content_length=length,
            expect_continue=b"100-continue" in expect,
            upgrade=upgrade,
        )


def _check_target(method: bytes, target: bytes, limits: _Limits) -> None:
    """Accept origin-form, absolute-form, and ``*`` for OPTIONS (RFC 9112 3.2)."""
    if _VISIBLE_ASCII.fullmatch(target) is None:
        raise limits.bad(f"invalid request target {_show(target)}")

    if target.startswith(b"/"):
        return

    if target == b"*":
        if method != b"OPTIONS":
            raise limits.bad("request target * is only valid for OPTIONS")
        return

    if re.match(rb"(?i)https?://[^/?#]", target) is None:
        raise limits.bad(f"invalid request target {_show(target)}")


# ---------------------------------------------------------------------------
# Responses.


class ResponseReader(_Reader):
    """Read the responses a server sends on one connection.

    The caller announces each request with ``expect()`` before its response
    can arrive, because whether a response has a body depends on the request
    method (RFC 9110 section 6.4.1: a response to HEAD never has one).
    """

    def __init__(
        self,
        *,
        max_head_size: int = MAX_HEAD_SIZE,
        max_header_count: int = MAX_HEADER_COUNT,
    ) -> None:
        super().__init__(
            _Limits(
                bad_status=502,
                long_line_status=502,
                large_head_status=502,
                max_head_size=max_head_size,
                max_header_count=max_header_count,
            )
        )
        # (method, upgrade requested) of each request still waiting for its response.
        self._requests: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.switched = False

    def expect(self, request_method: bytes, *, upgrade: bool = False) -> None:
        """Announce a request sent on this connection, in sending order.

        ``upgrade`` means the request asked for a protocol switch, so a 101
        response is allowed. Any other 101 is a bad response.
        """
        self._requests.append((request_method, upgrade))


    def feed(self, data: bytes) -> list[ResponseHead | Data | EndOfMessage]:
        """Add received bytes and return the events they complete."""
        self._check_alive()
        if not self.switched:
            part = self._body_part(data)
            if part is not None:
                return part
        self._buf += data
        if self.switched:
            return []

        events: list[ResponseHead | Data | EndOfMessage] = []
        try:
            self._read_events(events)
        except HttpError as error:
            self._fail(error)
        return events

    def feed_eof(self) -> list[ResponseHead | Data | EndOfMessage]:
        """Note that the server closed; end a close-delimited body.

        Raises HttpError(502) when the close cut a response short.
        """
        self._check_alive()
        self._closed = True

        if self._body is not None and self._body.framing is Framing.CLOSE:
            self._body = None
            return [EndOfMessage()]

        if self._body is not None or self._buf:
            self._fail(HttpError(502, "connection closed in the middle of a response"))

        return []

    def _read_events(self, events: list) -> None:
        while True:
            if self._body is not None:
                if not self._read_body(events):
                    return
                continue

            if not self._buf:
                return

            if not self._requests:
                raise HttpError(502, "unexpected data from the server before a request")

            head = self._heads.take_head(self._buf)
            if head is None:
                return

            response = self._parse_head(head, *self._requests[0])
            events.append(response)

            if response.status == 101:
                # The connection now carries another protocol: what follows
                # is for take_remaining, not for this parser.
                self._requests.popleft()
                self.switched = True
                events.append(EndOfMessage())
                return

            # An interim response leaves the request waiting for its final one.
            if response.status >= 200:
                self._requests.popleft()

            if response.framing is Framing.NONE or response.content_length == 0:
                events.append(EndOfMessage())
            else:
                self._body = _Body(response.framing, response.content_length, self._limits)

    def _parse_head(self, head: bytes, request_method: bytes, upgrade_requested: bool) -> ResponseHead:
        limits = self._limits
        status_line, headers = _split_head(head, limits)

        version_text, _, rest = status_line.partition(b" ")
        version = _parse_version(version_text, limits)

        status_text = rest[:3]
        if not (len(status_text) == 3 and status_text.isdigit() and status_text.isascii()):
            raise limits.bad(f"invalid status line {_show(status_line)}")

        status = int(status_text)
        if not 100 <= status <= 599:
            raise limits.bad(f"invalid status code {status}")

        if status == 101 and not upgrade_requested:
            raise limits.bad("101 Switching Protocols to a request that asked for no upgrade")

        # RFC 9112 section 4: status-code SP [ reason-phrase ]. Some servers
        # drop the SP when the reason is empty, so it is optional here.
        reason = rest[3:]
        if reason and not reason.startswith(b" "):
            raise limits.bad(f"invalid status line {_show(status_line)}")
        reason = reason[1:]
        if _INVALID_VALUE_BYTE.search(reason) is not None:
            raise limits.bad("invalid character in reason phrase")

        fields = _framing_fields(headers)
        framing, length = _declared_framing(version, fields, limits)
        _check_with_llhttp(head, httptools.HttpResponseParser, headers, limits)

        keep_alive = _keep_alive(version, fields)
        if request_method == b"HEAD" or status < 200 or status in _NO_BODY_STATUSES:
            framing, length = Framing.NONE, None
        elif framing is None:
            framing = Framing.CLOSE
            keep_alive = False

        return ResponseHead(
            status=status,
            reason=reason,
            version=version,
            headers=headers,
            keep_alive=keep_alive,
            framing=framing,
            content_length=length,
        )
