"""Strict SPIFFE ID and trust domain parsing.

The rules follow the SPIFFE ID specification (github.com/spiffe/spiffe,
standards/SPIFFE-ID.md):

- the ID is ``spiffe://<trust domain><path>`` with the scheme in lower case;
- the trust domain is non-empty, at most 255 bytes, and contains only
  lower-case letters, digits, ".", "-" and "_", so it can carry no port,
  userinfo or percent-encoding;
- the path is empty or a series of "/segment" parts, where each segment is
  non-empty, is not "." or "..", and contains only letters, digits, ".", "-"
  and "_", and the path has no trailing slash;
- the ID has no query or fragment and is at most 2048 bytes.

py-spiffe 0.3.2 is looser: it lower-cases an upper-case scheme or trust
domain, accepts a trailing newline after a trust domain or path segment, and
sets no length limit. This module rejects all of these, so a configured ID
matches only the exact ID that a peer certificate carries.

Every error is a ``SpiffeIdError`` whose message names the value, states what is
wrong and how to fix it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

SCHEME_PREFIX = "spiffe://"

# Limits from the SPIFFE ID specification, in bytes of the UTF-8 encoding.
MAX_SPIFFE_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255

_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")

_ID_EXAMPLE = '"spiffe://example.org/web"'
_TRUST_DOMAIN_EXAMPLE = '"example.org"'


class SpiffeIdError(ValueError):
    """An invalid SPIFFE ID or trust domain. The message states how to fix it."""


# A problem is a pair (what is wrong, how to fix it).
_Problem = tuple[str, str]


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A valid SPIFFE ID: a trust domain name and a path ("" or "/a/b")."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        problem = _trust_domain_problem(self.trust_domain)
        if problem is None:
            problem = _path_problem(self.path)
        if problem is None and len(str(self).encode()) > MAX_SPIFFE_ID_LENGTH:
            problem = _too_long_problem(str(self))
        if problem is not None:
            why, fix = problem
            raise SpiffeIdError(
                f"invalid SPIFFE ID parts (trust domain {self.trust_domain!r}, "
                f"path {self.path!r}): {why}; {fix}"
            )

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse a SPIFFE ID such as "spiffe://example.org/web".

    Raises SpiffeIdError when the text breaks any rule of the specification.
    """
    if not isinstance(text, str):
        raise SpiffeIdError(
            f"invalid SPIFFE ID {text!r}: expected a string; use the form {_ID_EXAMPLE}"
        )
    result = _split_spiffe_id(text)
    if isinstance(result, SpiffeId):
        return result
    why, fix = result
    raise SpiffeIdError(f'invalid SPIFFE ID "{text}": {why}; {fix}')


def parse_trust_domain(text: str) -> str:
    """Parse a trust domain given as "example.org" or "spiffe://example.org".

    Returns the trust domain name. Raises SpiffeIdError for an invalid name,
    and for an ID with a path, because a trust domain setting that silently
    dropped the path would allow far more peers than the user meant.
    """
    if not isinstance(text, str):
        raise SpiffeIdError(
            f"invalid trust domain {text!r}: expected a string; "
            f"use a lower-case DNS-like name such as {_TRUST_DOMAIN_EXAMPLE}"
        )
    problem = _trust_domain_text_problem(text)
    if isinstance(problem, str):
        return problem
    why, fix = problem
    raise SpiffeIdError(f'invalid trust domain "{text}": {why}; {fix}')


def _trust_domain_text_problem(text: str) -> str | _Problem:
    """Return the trust domain name in text, or the problem with it."""
    scheme, separator, _ = text.partition("://")
    is_spiffe_form = text[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX
    if separator and not is_spiffe_form:
        return (
            f'it is a URL with the scheme "{scheme}"',
            f"use the bare name such as {_TRUST_DOMAIN_EXAMPLE} "
            'or the form "spiffe://example.org"',
        )
    if not is_spiffe_form:
        problem = _trust_domain_problem(text)
        if problem is not None:
            return problem
        return text

    result = _split_spiffe_id(text)
    if not isinstance(result, SpiffeId):
        return result
    if result.path:
        return (
            f'it has the path "{result.path}", but a trust domain has no path',
            f'use "{result.trust_domain}" to match the whole trust domain, '
            "or set a SPIFFE ID instead to match one workload",
        )
    return result.trust_domain


def _split_spiffe_id(text: str) -> SpiffeId | _Problem:
    """Return the SpiffeId in text, or the first problem found."""
    if text == "":
        return ("it is empty", f"use the form {_ID_EXAMPLE}")
    if len(text.encode()) > MAX_SPIFFE_ID_LENGTH:
        return _too_long_problem(text)

    if text != text.strip():
        return (
            "it has leading or trailing whitespace",
            f'remove it: "{text.strip()}"',
        )

    problem = _scheme_problem(text)
    if problem is not None:
        return problem

    rest = text[len(SCHEME_PREFIX) :]
    for marker, part in (("?", "a query"), ("#", "a fragment")):
        if marker in rest:
            cleaned = text.split(marker, 1)[0]
            return (
                f'it contains {part} ("{marker}"), which a SPIFFE ID cannot have',
                f'remove it: "{cleaned}"',
            )

    trust_domain, slash, path = rest.partition("/")
    path = slash + path

    problem = _trust_domain_problem(trust_domain)
    if problem is not None:
        why, fix = problem
        if why.startswith("it contains upper-case"):
            fix = f'use "{SCHEME_PREFIX}{trust_domain.lower()}{path}"'
        return (why.replace("it ", "the trust domain ", 1), fix)

    problem = _path_problem(path)
    if problem is not None:
        why, fix = problem
        if why == "the path ends with a slash":
            fix = f'remove the trailing slash: "{text.rstrip("/")}"'
        return (why, fix)

    return SpiffeId(trust_domain, path)


def _scheme_problem(text: str) -> _Problem | None:
    if text.startswith(SCHEME_PREFIX):
        return None
    if text[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX:
        return (
            'the scheme must be the lower-case "spiffe"',
            f'use "{SCHEME_PREFIX}{text[len(SCHEME_PREFIX):]}"',
        )
    if text.lower().startswith("spiffe:"):
        return (
            'the scheme "spiffe:" must be followed by "//" and the trust domain',
            f"use the form {_ID_EXAMPLE}",
        )
    scheme, separator, _ = text.partition("://")
    if separator:
        return (
            f'the scheme is "{scheme}", but it must be "spiffe"',
            f"use the form {_ID_EXAMPLE}",
        )
    return ('it does not start with "spiffe://"', f"use the form {_ID_EXAMPLE}")


def _trust_domain_problem(name: str) -> _Problem | None:
    """Return the problem with a bare trust domain name, or None if valid."""
    if not isinstance(name, str):
        return ("it is not a string", f"use a name such as {_TRUST_DOMAIN_EXAMPLE}")
    if name == "":
        return ("it is empty", f"use a lower-case DNS-like name such as {_TRUST_DOMAIN_EXAMPLE}")
    if len(name.encode()) > MAX_TRUST_DOMAIN_LENGTH:
        return (
            f"it is {len(name.encode())} bytes long, more than the maximum of "
            f"{MAX_TRUST_DOMAIN_LENGTH}",
            "use a shorter trust domain name",
        )
    if "%" in name:
        return (
            'it contains percent-encoding ("%"), which a trust domain cannot have',
            'write the name with only lower-case letters, digits, ".", "-" and "_"',
        )
    if "@" in name:
        return (
            'it contains userinfo ("user@"), which a trust domain cannot have',
            f'remove it: "{name.rsplit("@", 1)[1]}"',
        )
    if ":" in name and "[" not in name:
        return (
            'it contains ":" (a port?), but a trust domain has no port',
            f'remove the port: "{name.split(":", 1)[0]}"',
        )
    lowered = name.lower()
    if lowered != name and all(char in _TRUST_DOMAIN_CHARS for char in lowered):
        return ("it contains upper-case letters", f'use the lower-case form "{lowered}"')
    for char in name:
        if char not in _TRUST_DOMAIN_CHARS:
            return (
                f"it contains the character {char!r}, but only lower-case letters, "
                'digits, ".", "-" and "_" are allowed',
                f"use a lower-case DNS-like name such as {_TRUST_DOMAIN_EXAMPLE}",
            )
    return None


def _path_problem(path: str) -> _Problem | None:
    """Return the problem with a path ("" or "/a/b"), or None if valid."""
    if not isinstance(path, str):
        return ("the path is not a string", 'use "" or a path such as "/web"')
    if path == "":
        return None
    if not path.startswith("/"):
        return ('the path does not start with "/"', 'use "" or a path such as "/web"')
    if path.endswith("/"):
        return ("the path ends with a slash", "remove the trailing slash")
    for segment in path[1:].split("/"):
        if segment == "":
            return ('the path contains an empty segment ("//")', "remove the extra slash")
        if segment in (".", ".."):
            return (
                f'the path contains the segment "{segment}"',
                'write the path without "." and ".." segments',
            )
        if "%" in segment:
            return (
                'the path contains percent-encoding ("%"), which a SPIFFE ID cannot have',
                'write path segments with only letters, digits, ".", "-" and "_"',
            )
        for char in segment:
            if char not in _PATH_SEGMENT_CHARS:
                return (
                    f'the path segment "{segment}" contains the character {char!r}',
                    'use only letters, digits, ".", "-" and "_" in path segments',
                )
    return None


def _too_long_problem(text: str) -> _Problem:
    return (
        f"it is {len(text.encode())} bytes long, more than the maximum of "
        f"{MAX_SPIFFE_ID_LENGTH}",
        "use a shorter ID",
    )
