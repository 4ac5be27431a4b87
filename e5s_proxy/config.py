"""Configuration loading and validation for e5s-proxy.

The file is YAML and a superset of the version-1 config format of the Go e5s
library (github.com/sufield/e5s). Every e5s key keeps its meaning. The proxy
adds ``server.target``, ``client.listen_addr``, ``server.peer_header``, the
``admin`` section and the optional timeouts below. An e5s file without the
added required keys fails validation with an error that names the key.

Validation collects every problem and raises one ``ConfigError`` whose
``errors`` list has one message per problem. Each message names the key, the
bad value and the fix. Unknown keys and duplicate keys are errors, because a
typo or a repeated key must not silently disable an authorization check.

Durations use Go ``time.ParseDuration`` syntax ("1m30s", "500ms") and must be
greater than zero. Listen addresses are "host:port", ":port" (all interfaces)
or "[v6]:port", and port 0 means that the system picks a free port.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from e5s_proxy.spiffeid import SpiffeId, SpiffeIdError, parse_spiffe_id, parse_trust_domain

CONFIG_VERSION = 1

# The variable that SPIFFE Workload API clients read when no socket is
# configured (SPIFFE Workload Endpoint specification).
SPIFFE_ENDPOINT_SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"

# 30s because e5s uses 30s (DefaultInitialFetchTimeout in its
# internal/config/validate.go), which leaves a SPIRE agent time to attest a new workload.
DEFAULT_INITIAL_FETCH_TIMEOUT = 30.0

# 5s because the application runs on the same host, so a healthy one accepts
# a connection in milliseconds, and a longer wait only delays the caller.
DEFAULT_APP_CONNECT_TIMEOUT = 5.0

# 60s because it is a common read timeout for HTTP reverse proxies, so most
# applications already answer within it. This is a judgment, not a measurement.
DEFAULT_APP_RESPONSE_TIMEOUT = 60.0

# 60s because it is long enough to reuse a connection across bursts of
# requests and short enough to free idle sockets soon.
DEFAULT_SERVER_IDLE_TIMEOUT = 60.0

# 10s because a legitimate client sends a request head in well under a
# second, and a short limit blocks slow-header (Slowloris) clients.
DEFAULT_REQUEST_HEAD_TIMEOUT = 10.0

# 5s because a TCP connect plus an mTLS handshake inside a cluster takes
# milliseconds, so 5s only expires when the server is unreachable.
DEFAULT_CLIENT_CONNECT_TIMEOUT = 5.0

# 60s for the same reason as DEFAULT_APP_RESPONSE_TIMEOUT.
DEFAULT_CLIENT_RESPONSE_TIMEOUT = 60.0

# 60s for the same reason as DEFAULT_SERVER_IDLE_TIMEOUT.
DEFAULT_CLIENT_IDLE_TIMEOUT = 60.0

# 32 because it covers the concurrency of a typical single service while
# bounding the number of idle mTLS connections kept open to one server.
DEFAULT_MAX_IDLE_CONNECTIONS = 32

# The header that carries the verified client SPIFFE ID to the application.
DEFAULT_PEER_HEADER = "X-Peer-SPIFFE-ID"

# 15s: in-flight requests of an HTTP API finish in well under that, and it
# stays inside Kubernetes' default 30s grace period with room for the app.
DEFAULT_DRAIN_TIMEOUT = 15.0

# 64 KiB and 100 fields: close to Envoy's defaults (60 KiB, 100 headers),
# far above what browsers and HTTP clients send.
DEFAULT_MAX_HEAD_SIZE = 64 * 1024
DEFAULT_MAX_HEADER_COUNT = 100

OUTBOUND_EXPOSED_WARNING = (
    "client.listen_addr is not on loopback: anyone who can reach it can send requests that "
    'leave with this workload\'s SPIFFE ID; use e.g. "127.0.0.1:15001"'
)

# Timeouts shorter than a millisecond would fire before any network
# round trip, so they can only be typos (such as "1ns" for "1s").
MIN_DURATION = 0.001

# One process runs one reactor thread, so it uses one core at most; more
# workers share the listen ports with SO_REUSEPORT. The cap only catches
# typos: a sidecar rarely gets more cores than this.
DEFAULT_WORKERS = 1
MAX_WORKERS = 64

# A head limit below this could not hold an ordinary request line and Host.
_MIN_HEAD_SIZE = 1024

# Header names that control HTTP message framing or routing. Using one as the
# peer header would corrupt or redirect the forwarded request.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# RFC 9110 section 5.6.2: token characters.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_HOSTNAME_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")

_TOP_LEVEL_KEYS = ("version", "spire", "server", "client", "admin", "drain_timeout", "workers")
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "spire": ("workload_socket", "initial_fetch_timeout", "svid_spiffe_id"),
    "server": (
        "listen_addr",
        "target",
        "allowed_client_trust_domain",
        "allowed_client_spiffe_id",
        "peer_header",
        "app_connect_timeout",
        "app_response_timeout",
        "idle_timeout",
        "request_head_timeout",
        "max_head_size",
        "max_header_count",
        "access_log",
    ),
    "client": (
        "listen_addr",
        "server_url",
        "expected_server_trust_domain",
        "expected_server_spiffe_id",
        "connect_timeout",
        "response_timeout",
        "idle_timeout",
        "max_idle_connections",
        "max_head_size",
        "max_header_count",
        "access_log",
    ),
    "admin": ("listen_addr",),
}


class ConfigError(Exception):
    """An invalid configuration; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str], source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Address:
    """A listen address. host "" means all interfaces; IPv6 has no brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return _join_host_port(self.host, self.port)


@dataclass(frozen=True)
class AppTarget:
    """The local application: either host and port, or a Unix socket path."""

    host: str | None
    port: int | None
    unix_path: str | None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return _join_host_port(self.host or "", self.port or 0)


@dataclass(frozen=True)
class SpireConfig:
    """SPIRE Workload API settings. Timeouts are in seconds."""

    workload_socket: str
    workload_socket_text: str
    initial_fetch_timeout: float
    workload_socket_from_env: bool = False
    svid_spiffe_id: SpiffeId | None = None  # which SVID to use when the agent returns several


@dataclass(frozen=True)
class ServerConfig:
    """The inbound listener: mTLS from clients, plain HTTP to the local app.

    Exactly one of the two allow lists is non-empty. Timeouts are in seconds.
    """

    listen: Address
    target: AppTarget
    allowed_client_trust_domains: tuple[str, ...]
    allowed_client_spiffe_ids: tuple[SpiffeId, ...]
    peer_header: str
    app_connect_timeout: float
    app_response_timeout: float
    idle_timeout: float
    request_head_timeout: float
    max_head_size: int = DEFAULT_MAX_HEAD_SIZE
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    access_log: bool = False


@dataclass(frozen=True)
class ClientConfig:
    """The outbound listener: plain HTTP from the local app, mTLS to a server.

    Exactly one of the two expected lists is non-empty. Timeouts are in
    seconds. server_path_prefix is "" or a path without a trailing slash.
    """

    listen: Address
    server_host: str
    server_port: int
    server_path_prefix: str
    expected_server_trust_domains: tuple[str, ...]
    expected_server_spiffe_ids: tuple[SpiffeId, ...]
    connect_timeout: float
    response_timeout: float
    idle_timeout: float
    max_idle_connections: int
    max_head_size: int = DEFAULT_MAX_HEAD_SIZE
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    access_log: bool = False

    @property
    def server_authority(self) -> str:
        """The Host header value: "host" for port 443, else "host:port"."""
        host = f"[{self.server_host}]" if ":" in self.server_host else self.server_host
        if self.server_port == 443:
            return host
        return f"{host}:{self.server_port}"


@dataclass(frozen=True)
class AdminConfig:
    """The plaintext admin listener for /healthz, /readyz and /metrics."""

    listen: Address


@dataclass(frozen=True)
class Config:
    """A validated configuration; source is the file path or "<string>"."""

    spire: SpireConfig
    server: ServerConfig | None
    client: ClientConfig | None
    admin: AdminConfig | None
    source: str
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # seconds to let in-flight requests finish on SIGTERM
    workers: int = DEFAULT_WORKERS  # processes sharing the listen ports (e5s-proxy run only)


# ---------------------------------------------------------------------------
# Durations


_DURATION_UNITS = {
    "ns": Decimal(1),
    "us": Decimal(1_000),
    "\u00b5s": Decimal(1_000),  # MICRO SIGN, as Go accepts
    "\u03bcs": Decimal(1_000),  # GREEK SMALL LETTER MU, as Go accepts
    "ms": Decimal(1_000_000),
    "s": Decimal(1_000_000_000),
    "m": Decimal(60_000_000_000),
    "h": Decimal(3_600_000_000_000),
}
_MAX_DURATION_NS = 2**63 - 1  # Go stores a Duration as int64 nanoseconds.
_UNIT_HELP = "units are ns, us, ms, s, m and h"
_DURATION_NUMBER_CHARS = frozenset("0123456789.")


def parse_duration(text: str) -> float:
    """Parse a Go time.ParseDuration string such as "1m30s" into seconds.

    Accepts what Go accepts, including "0" and negative values, so callers
    that need a positive duration must check the result. Raises ValueError
    with a message that says what is wrong and how to fix it.
    """
    if not isinstance(text, str):
        raise ValueError(f'invalid duration {text!r}: expected a string such as "30s"')
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if rest == "":
        raise ValueError(f'invalid duration "{text}": it is empty; use e.g. "30s" or "1m30s"')

    total_ns = Decimal(0)
    while rest:
        number_end = 0
        while number_end < len(rest) and rest[number_end] in _DURATION_NUMBER_CHARS:
            number_end += 1
        number_text = rest[:number_end]
        if number_text in ("", ".") or number_text.count(".") > 1:
            raise ValueError(
                f'invalid duration "{text}": expected a number before the unit; '
                'use e.g. "30s" or "1m30s"'
            )
        unit_end = number_end
        while unit_end < len(rest) and rest[unit_end] not in _DURATION_NUMBER_CHARS:
            unit_end += 1
        unit = rest[number_end:unit_end]
        if unit == "":
            raise ValueError(
                f'invalid duration "{text}": missing unit; add a unit, e.g. "{text}s"'
            )
        if unit not in _DURATION_UNITS:
            raise ValueError(f'invalid duration "{text}": unknown unit "{unit}"; {_UNIT_HELP}')
        try:
            total_ns += Decimal(number_text) * _DURATION_UNITS[unit]
        except InvalidOperation:
            raise ValueError(f'invalid duration "{text}": bad number "{number_text}"') from None
        rest = rest[unit_end:]
        if total_ns > _MAX_DURATION_NS:
            raise ValueError(
                f'invalid duration "{text}": it exceeds the maximum of about 2562047h'
            )

    seconds = float(int(total_ns) / 1_000_000_000)
    return -seconds if negative else seconds


def format_duration(seconds: float) -> str:
    """Format seconds in Go duration syntax, e.g. 90.0 -> "1m30s"."""
    if seconds < 1:
        milliseconds = seconds * 1000
        return f"{milliseconds:g}ms"
    hours, remainder = divmod(seconds, 3600)
    minutes, secs = divmod(remainder, 60)
    parts = []
    if hours:
        parts.append(f"{int(hours)}h")
    if minutes:
        parts.append(f"{int(minutes)}m")
    if secs or not parts:
        parts.append(f"{secs:g}s")
    return "".join(parts)


# ---------------------------------------------------------------------------
# YAML loading


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that records duplicate mapping keys instead of overwriting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_key_errors: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # An unhashable key; the base class reports it.
            if first is not None:
                mark = key_node.start_mark
                self.duplicate_key_errors.append(
                    f"duplicate key {key!r} at line {mark.line + 1}, column "
                    f"{mark.column + 1} (first at line {first.start_mark.line + 1}); "
                    "remove one of them, because a repeated key silently replaces "
                    "the first value"
                )
            else:
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "syntax error"
        raise ConfigError(
            [f"{source}: invalid YAML{where}: {problem}; fix the YAML syntax"], source
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{source}: invalid YAML: {error}; fix the YAML syntax"], source) from None
    finally:
        loader.dispose()
    if loader.duplicate_key_errors:
        raise ConfigError([f"{source}: {message}" for message in loader.duplicate_key_errors], source)
    return data


# ---------------------------------------------------------------------------
# Public entry points


def load_config(path: str, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at path.

    Raises ConfigError, naming the path, when the file is missing, unreadable,
    not UTF-8, not YAML or invalid.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ConfigError(
            [f"config file {path!r} not found; check the path or create the file"], path
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [f"config file {path!r} is a directory; pass the path of the YAML file"], path
        ) from None
    except PermissionError:
        raise ConfigError(
            [f"config file {path!r} cannot be read: permission denied; "
             "make it readable by the proxy user"],
            path,
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"config file {path!r} is not valid UTF-8 ({error.reason} at byte "
             f"{error.start}); save it as UTF-8 text"],
            path,
        ) from None
    except OSError as error:
        raise ConfigError(
            [f"config file {path!r} cannot be read: {error.strerror or error}; check the path"],
            path,
        ) from None
    return parse_config(text, environ=environ, source=path)


def parse_config(
    text: str, *, environ: Mapping[str, str] | None = None, source: str = "<string>"
) -> Config:
    """Parse and validate config text. Raises ConfigError with every problem."""
    if environ is None:
        environ = os.environ
    data = _load_yaml(text, source)
    if data is None:
        raise ConfigError(
            [f"{source}: the config is empty; add a spire section and a server or client section"],
            source,
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: the config must be a YAML mapping of sections, "
             f"but it is a {_yaml_type(data)}; start with keys such as \"spire:\" and \"server:\""],
            source,
        )

    errors: list[str] = []
    _check_keys(data, "", _TOP_LEVEL_KEYS, errors)
    _check_version(data, errors)
    drain_timeout = _duration(data, "", "drain_timeout", DEFAULT_DRAIN_TIMEOUT, errors)
    workers = data.get("workers", DEFAULT_WORKERS)
    if type(workers) is not int or not 1 <= workers <= MAX_WORKERS:
        errors.append(
            f"workers: invalid value {workers!r}; use a whole number from 1 to {MAX_WORKERS}, "
            "usually the number of cores the proxy may use"
        )

    spire = None
    spire_section = _section(data, "spire", errors, optional=True)
    if spire_section is not None:
        spire = _parse_spire(spire_section, environ, errors)
    server = None
    client = None
    admin = None
    if "server" in data:
        section = _section(data, "server", errors)
        if section is not None:
            server = _parse_server(section, errors)
    if "client" in data:
        section = _section(data, "client", errors)
        if section is not None:
            client = _parse_client(section, errors)
    if "admin" in data:
        section = _section(data, "admin", errors)
        if section is not None:
            admin = _parse_admin(section, errors)

    if "server" not in data and "client" not in data:
        errors.append(
            "server or client must be set: add a server section to accept mTLS "
            "connections for the local app, a client section to send the app's "
            "requests to a server over mTLS, or both"
        )
    _check_listener_conflicts(server, client, admin, errors)
    if type(workers) is int and workers > 1:
        for key, section in (("server.listen_addr", server), ("client.listen_addr", client)):
            if section is not None and section.listen.port == 0:
                errors.append(
                    f"{key}: port 0 cannot be shared by {workers} workers, since each would get its "
                    "own port; set a port, or workers: 1"
                )

    if errors:
        raise ConfigError(errors, source)
    assert spire is not None and drain_timeout is not None
    return Config(
        spire=spire,
        server=server,
        client=client,
        admin=admin,
        source=source,
        drain_timeout=drain_timeout,
        workers=workers,
    )


# ---------------------------------------------------------------------------
# Sections


def _section(
    data: dict, name: str, errors: list[str], *, optional: bool = False
) -> dict | None:
    value = data.get(name)
    if value is None:
        if name in data and not optional:
            errors.append(f"{name}: the section is empty; add its keys or remove the section")
        return {} if optional else None
    if not isinstance(value, dict):
        errors.append(
            f"{name}: expected a mapping of keys, got the {_yaml_type(value)} {value!r}; "
            f'indent its keys under "{name}:"'
        )
        return None
    _check_keys(value, name, _SECTION_KEYS[name], errors)
    return value


def _check_version(data: dict, errors: list[str]) -> None:
    if "version" not in data:
        return
    version = data["version"]
    if type(version) is not int or version != CONFIG_VERSION:
        errors.append(
            f"version: unsupported value {version!r}; use {CONFIG_VERSION} "
            "(the only config version this proxy reads) or remove the key"
        )


def _parse_spire(
    section: dict, environ: Mapping[str, str], errors: list[str]
) -> SpireConfig | None:
    timeout = _duration(
        section, "spire", "initial_fetch_timeout", DEFAULT_INITIAL_FETCH_TIMEOUT, errors
    )

    socket_value = section.get("workload_socket")
    from_env = False
    if socket_value is None or (isinstance(socket_value, str) and socket_value.strip() == ""):
        env_value = environ.get(SPIFFE_ENDPOINT_SOCKET_ENV, "")
        if env_value.strip() == "":
            errors.append(
                f"spire.workload_socket must be set (or set {SPIFFE_ENDPOINT_SOCKET_ENV}): "
                'it is the SPIRE agent Workload API socket, e.g. '
                '"unix:///run/spire/sockets/agent.sock"'
            )
            return None
        key = SPIFFE_ENDPOINT_SOCKET_ENV
        socket_text = env_value.strip()
        from_env = True
    elif not isinstance(socket_value, str):
        errors.append(
            f"spire.workload_socket: expected a string, got the {_yaml_type(socket_value)} "
            f'{socket_value!r}; use e.g. "unix:///run/spire/sockets/agent.sock"'
        )
        return None
    else:
        key = "spire.workload_socket"
        socket_text = socket_value.strip()

    try:
        socket_path = parse_workload_socket(socket_text)
    except ValueError as error:
        errors.append(f"{key}: {error}")
        return None
    svid_spiffe_id = None
    svid_text = section.get("svid_spiffe_id")
    if svid_text is not None:
        if not isinstance(svid_text, str):
            errors.append(
                f"spire.svid_spiffe_id: expected a SPIFFE ID string, got the {_yaml_type(svid_text)} "
                f'{svid_text!r}; use e.g. "spiffe://example.org/web"'
            )
            return None
        try:
            svid_spiffe_id = parse_spiffe_id(svid_text.strip())
        except SpiffeIdError as error:
            errors.append(f"spire.svid_spiffe_id: {error}")
            return None
    if timeout is None:
        return None
    return SpireConfig(
        workload_socket=socket_path,
        workload_socket_text=socket_text,
        initial_fetch_timeout=timeout,
        workload_socket_from_env=from_env,
        svid_spiffe_id=svid_spiffe_id,
    )


def _parse_server(section: dict, errors: list[str]) -> ServerConfig | None:
    count = len(errors)
    listen = _required(
        section, "server", "listen_addr", errors,
        'it is the address where the proxy accepts mTLS connections, e.g. ":8443"',
    )
    listen_addr = None if listen is None else _address(listen, "server.listen_addr", errors)
    target = _required(
        section, "server", "target", errors,
        "it is the address of the local application that receives the forwarded "
        'requests, e.g. "127.0.0.1:8080" or "unix:/run/app.sock"',
    )
    app_target = None if target is None else _app_target(target, "server.target", errors)
    trust_domains, spiffe_ids = _peer_policy(
        section, "server", "allowed_client", "decides which clients may connect", errors
    )
    peer_header = _peer_header(section.get("peer_header", DEFAULT_PEER_HEADER), errors)
    timeouts = {
        key: _duration(section, "server", key, default, errors)
        for key, default in (
            ("app_connect_timeout", DEFAULT_APP_CONNECT_TIMEOUT),
            ("app_response_timeout", DEFAULT_APP_RESPONSE_TIMEOUT),
            ("idle_timeout", DEFAULT_SERVER_IDLE_TIMEOUT),
            ("request_head_timeout", DEFAULT_REQUEST_HEAD_TIMEOUT),
        )
    }
    limits = _http_limits(section, "server", errors)
    if len(errors) > count:
        return None
    assert listen_addr is not None and app_target is not None and peer_header is not None
    return ServerConfig(
        listen=listen_addr,
        target=app_target,
        allowed_client_trust_domains=trust_domains,
        allowed_client_spiffe_ids=spiffe_ids,
        peer_header=peer_header,
        **timeouts,  # type: ignore[arg-type]
        **limits,
    )


def _parse_client(section: dict, errors: list[str]) -> ClientConfig | None:
    count = len(errors)
    listen = _required(
        section, "client", "listen_addr", errors,
        "it is the local address where the application sends its outbound "
        'requests, e.g. "127.0.0.1:15001"',
    )
    listen_addr = None if listen is None else _address(listen, "client.listen_addr", errors)
    url = _required(
        section, "client", "server_url", errors,
        'it is the server that receives the requests over mTLS, e.g. "https://orders:8443"',
    )
    server = None if url is None else _server_url(url, errors)
    trust_domains, spiffe_ids = _peer_policy(
        section, "client", "expected_server", "decides which servers the proxy trusts", errors
    )
    timeouts = {
        key: _duration(section, "client", key, default, errors)
        for key, default in (
            ("connect_timeout", DEFAULT_CLIENT_CONNECT_TIMEOUT),
            ("response_timeout", DEFAULT_CLIENT_RESPONSE_TIMEOUT),
            ("idle_timeout", DEFAULT_CLIENT_IDLE_TIMEOUT),
        )
    }
    max_idle = section.get("max_idle_connections", DEFAULT_MAX_IDLE_CONNECTIONS)
    if type(max_idle) is not int or max_idle <= 0:
        errors.append(
            f"client.max_idle_connections: invalid value {max_idle!r}; use a whole "
            f"number greater than zero, e.g. {DEFAULT_MAX_IDLE_CONNECTIONS}"
        )
    limits = _http_limits(section, "client", errors)
    if len(errors) > count:
        return None
    assert listen_addr is not None and server is not None
    host, port, prefix = server
    return ClientConfig(
        listen=listen_addr,
        server_host=host,
        server_port=port,
        server_path_prefix=prefix,
        expected_server_trust_domains=trust_domains,
        expected_server_spiffe_ids=spiffe_ids,
        max_idle_connections=max_idle,
        **timeouts,  # type: ignore[arg-type]
        **limits,
    )


def _http_limits(section: dict, name: str, errors: list[str]) -> dict[str, Any]:
    """Read max_head_size, max_header_count and access_log of a listener section."""
    limits: dict[str, Any] = {}
    head_size = section.get("max_head_size", DEFAULT_MAX_HEAD_SIZE)
    if type(head_size) is not int or head_size < _MIN_HEAD_SIZE:
        errors.append(
            f"{name}.max_head_size: invalid value {head_size!r}; use a number of bytes of at least "
            f"{_MIN_HEAD_SIZE}, e.g. {DEFAULT_MAX_HEAD_SIZE}"
        )
    else:
        limits["max_head_size"] = head_size

    header_count = section.get("max_header_count", DEFAULT_MAX_HEADER_COUNT)
    if type(header_count) is not int or header_count <= 0:
        errors.append(
            f"{name}.max_header_count: invalid value {header_count!r}; use a whole number greater "
            f"than zero, e.g. {DEFAULT_MAX_HEADER_COUNT}"
        )
    else:
        limits["max_header_count"] = header_count

    access_log = section.get("access_log", False)
    if type(access_log) is not bool:
        errors.append(f"{name}.access_log: expected true or false, got {access_log!r}")
    else:
        limits["access_log"] = access_log
    return limits


def _parse_admin(section: dict, errors: list[str]) -> AdminConfig | None:
    listen = _required(
        section, "admin", "listen_addr", errors,
        'it is the plaintext address for /healthz, /readyz and /metrics, e.g. "127.0.0.1:15000"',
    )
    if listen is None:
        return None
    address = _address(listen, "admin.listen_addr", errors)
    if address is None:
        return None
    return AdminConfig(listen=address)


def _check_listener_conflicts(
    server: ServerConfig | None,
    client: ClientConfig | None,
    admin: AdminConfig | None,
    errors: list[str],
) -> None:
    listeners = []
    if server is not None:
        listeners.append(("server.listen_addr", server.listen))
    if client is not None:
        listeners.append(("client.listen_addr", client.listen))
    if admin is not None:
        listeners.append(("admin.listen_addr", admin.listen))
    wildcard_hosts = ("", "0.0.0.0", "::")
    if server is not None and server.target.port is not None:
        target = server.target
        if target.port == server.listen.port and (
            target.host == server.listen.host
            or server.listen.host in wildcard_hosts
            or (is_loopback_host(target.host) and is_loopback_host(server.listen.host))
        ):
            errors.append(
                f'server.target: "{target}" is the proxy\'s own server.listen_addr "{server.listen}"; '
                "point it at the local app's port instead"
            )
    for index, (first_key, first) in enumerate(listeners):
        for second_key, second in listeners[index + 1 :]:
            if first.port == 0 or first.port != second.port:
                continue
            if first.host == second.host or first.host in wildcard_hosts or second.host in wildcard_hosts:
                errors.append(
                    f"{second_key}: \"{second}\" uses the same port as {first_key} "
                    f"\"{first}\"; give each listener its own port"
                )


# ---------------------------------------------------------------------------
# Keys and values


def _check_keys(mapping: dict, section: str, known: tuple[str, ...], errors: list[str]) -> None:
    prefix = f"{section}." if section else ""
    for key in mapping:
        if not isinstance(key, str):
            errors.append(f"{prefix}{key!r}: keys must be strings; remove or rename this key")
            continue
        if key in known:
            continue
        message = f"{prefix}{key}: unknown key"
        matches = difflib.get_close_matches(key, known, n=1)
        owners = [name for name, keys in _SECTION_KEYS.items() if key in keys and name != section]
        if matches:
            message += f'; did you mean "{prefix}{matches[0]}"?'
        elif section == "" and owners:
            message += f"; it belongs under {' or '.join(owners)}"
        elif owners:
            message += f"; it is a key of {' or '.join(owners)}, not of {section}"
        else:
            message += f"; known keys are {', '.join(known)}"
        message += " (unknown keys are rejected so that a typo cannot disable a check)"
        errors.append(message)


def _required(
    section: dict, section_name: str, key: str, errors: list[str], purpose: str
) -> str | None:
    """Return the string value of a required key, or None after an error."""
    value = section.get(key)
    full_key = f"{section_name}.{key}"
    if value is None or (isinstance(value, str) and value.strip() == ""):
        errors.append(f"{full_key} must be set: {purpose}")
        return None
    if not isinstance(value, str):
        errors.append(
            f"{full_key}: expected a string, got the {_yaml_type(value)} {value!r}; "
            "quote the value"
        )
        return None
    return value.strip()


def _duration(
    section: dict, section_name: str, key: str, default: float, errors: list[str]
) -> float | None:
    full_key = f"{section_name}.{key}" if section_name else key
    if key not in section or section[key] is None:
        return default
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        errors.append(
            f'{full_key}: expected a duration such as "30s", got the '
            f"{_yaml_type(value)} {value!r}"
        )
        return None
    if not isinstance(value, str):
        errors.append(
            f"{full_key}: invalid duration {value!r} (a YAML number): missing unit; "
            f'add a unit, e.g. "{value}s"'
        )
        return None
    text = value.strip()
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        errors.append(f"{full_key}: {error}")
        return None
    if seconds < MIN_DURATION:
        errors.append(
            f'{full_key}: must be at least 1ms, got "{text}"; use e.g. '
            f'"{format_duration(default)}"'
        )
        return None
    return seconds


def _peer_policy(
    section: dict, section_name: str, stem: str, purpose: str, errors: list[str]
) -> tuple[tuple[str, ...], tuple[SpiffeId, ...]]:
    """Parse the "<stem>_trust_domain" / "<stem>_spiffe_id" pair (exactly one)."""
    id_key = f"{stem}_spiffe_id"
    domain_key = f"{stem}_trust_domain"
    id_items = _string_list(section, section_name, id_key, errors)
    domain_items = _string_list(section, section_name, domain_key, errors)
    if id_items is not None and domain_items is not None:
        if id_items and domain_items:
            errors.append(
                f"{section_name}: set only one of {id_key} and {domain_key}, not both; "
                f"keep {id_key} to match exact workloads or {domain_key} to match a "
                "whole trust domain"
            )
        elif not id_items and not domain_items:
            errors.append(
                f"{section_name}.{id_key} or {section_name}.{domain_key} must be set: "
                f'it {purpose}, e.g. {domain_key}: "example.org"'
            )

    spiffe_ids: list[SpiffeId] = []
    for key, item in id_items or []:
        try:
            spiffe_ids.append(parse_spiffe_id(item))
        except SpiffeIdError as error:
            errors.append(f"{key}: {error}")
    trust_domains: list[str] = []
    for key, item in domain_items or []:
        try:
            trust_domains.append(parse_trust_domain(item))
        except SpiffeIdError as error:
            errors.append(f"{key}: {error}")
    return tuple(trust_domains), tuple(spiffe_ids)


def _string_list(
    section: dict, section_name: str, key: str, errors: list[str]
) -> list[tuple[str, str]] | None:
    """Return (key for messages, stripped item) pairs; [] when unset, None on error.

    A blank string counts as unset, as in e5s.
    """
    full_key = f"{section_name}.{key}"
    value = section.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [(full_key, value.strip())] if value.strip() else []
    if not isinstance(value, list):
        errors.append(
            f"{full_key}: expected a string or a list of strings, got the "
            f"{_yaml_type(value)} {value!r}"
        )
        return None
    if not value:
        errors.append(f"{full_key}: the list is empty; add at least one value or remove the key")
        return None
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            errors.append(
                f"{full_key}[{index}]: expected a string, got the {_yaml_type(item)} "
                f"{item!r}; quote the value"
            )
            return None
        items.append((f"{full_key}[{index}]", item.strip()))
    return items


def _peer_header(value: Any, errors: list[str]) -> str | None:
    key = "server.peer_header"
    if not isinstance(value, str) or value == "":
        errors.append(
            f"{key}: invalid header name {value!r}; use a header field name such as "
            f'"{DEFAULT_PEER_HEADER}"'
        )
        return None
    bad = [char for char in value if char not in _TOKEN_CHARS]
    if bad:
        errors.append(
            f'{key}: invalid header name "{value}": it contains {bad[0]!r}, which an '
            f"HTTP field name (RFC 9110 token) cannot contain; use e.g. "
            f'"{DEFAULT_PEER_HEADER}"'
        )
        return None
    if value.lower() in _RESERVED_HEADERS:
        errors.append(
            f'{key}: "{value}" controls HTTP framing or routing, so it cannot carry '
            f'the peer ID; use e.g. "{DEFAULT_PEER_HEADER}"'
        )
        return None
    return value


# ---------------------------------------------------------------------------
# Addresses, sockets and URLs


def parse_workload_socket(text: str) -> str:
    """Return the filesystem path of a Workload API socket address.

    Accepts "unix:///abs/path", "unix:/abs/path" and "/abs/path". Raises
    ValueError for other schemes, relative paths and empty text.
    """
    example = '"unix:///run/spire/sockets/agent.sock"'
    if text == "":
        raise ValueError(f"the socket address is empty; use e.g. {example}")
    if "?" in text or "#" in text:
        raise ValueError(
            f'invalid Workload API socket "{text}": a query or fragment is not allowed; '
            f"use e.g. {example}"
        )
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(
                f'invalid Workload API socket "{text}": "unix://" needs a third slash '
                f'for an absolute path, so "unix://{path}" names the host "{path.split("/")[0]}"; '
                f'use "unix:///{path}"'
            )
    elif text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(
                f'invalid Workload API socket "{text}": the path must be absolute; '
                f'use "unix:///{path}" with the full path'
            )
    elif text.startswith("/"):
        path = text
    elif ":" in text.split("/", 1)[0]:
        scheme = text.split(":", 1)[0]
        raise ValueError(
            f'invalid Workload API socket "{text}": the scheme "{scheme}" is not '
            f"supported, only Unix domain sockets are; use e.g. {example}"
        )
    else:
        raise ValueError(
            f'invalid Workload API socket "{text}": the path must be absolute; '
            f"use e.g. {example}"
        )
    if path == "/" or path.endswith("/"):
        raise ValueError(
            f'invalid Workload API socket "{text}": the path names a directory, not a '
            f"socket; use e.g. {example}"
        )
    if "\x00" in path:
        raise ValueError(f'invalid Workload API socket "{text}": the path contains a NUL byte')
    return path


def parse_listen_address(text: str) -> Address:
    """Parse "host:port", ":port" or "[v6]:port". Port 0 picks a free port."""
    host, port = _split_host_port(text, 'e.g. "127.0.0.1:8443" or ":8443"')
    return Address(host=host, port=port)


def _address(text: str, key: str, errors: list[str]) -> Address | None:
    try:
        return parse_listen_address(text)
    except ValueError as error:
        errors.append(f"{key}: {error}")
        return None


def _app_target(text: str, key: str, errors: list[str]) -> AppTarget | None:
    example = '"127.0.0.1:8080" or "unix:/run/app.sock"'
    if text.startswith("unix:"):
        try:
            path = parse_workload_socket(text)
        except ValueError as error:
            message = str(error).replace("Workload API socket", "target")
            errors.append(f"{key}: {message}")
            return None
        return AppTarget(host=None, port=None, unix_path=path)
    if "://" in text:
        errors.append(
            f'{key}: invalid target "{text}": it is an address, not a URL; use e.g. {example}'
        )
        return None
    try:
        host, port = _split_host_port(text, f"use e.g. {example}")
    except ValueError as error:
        errors.append(f"{key}: {error}")
        return None
    if host == "":
        errors.append(
            f'{key}: invalid target "{text}": the host is missing; use e.g. "127.0.0.1{text}"'
        )
        return None
    if port == 0:
        errors.append(f'{key}: invalid target "{text}": port 0 cannot be dialed; use the port of the app')
        return None
    return AppTarget(host=host, port=port, unix_path=None)


def _split_host_port(text: str, example: str) -> tuple[str, int]:
    """Split an address like Go net.SplitHostPort; validate host and port."""
    if not isinstance(text, str) or text == "":
        raise ValueError(f"the address is empty; use {example}")
    if text.startswith("["):
        close = text.find("]")
        if close == -1 or text[close + 1 : close + 2] != ":":
            raise ValueError(f'invalid address "{text}": expected "[ipv6]:port"; use {example}')
        host = text[1:close]
        port_text = text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f'invalid address "{text}": "{host}" in brackets is not an IPv6 address; use {example}'
            ) from None
    else:
        if ":" not in text:
            raise ValueError(
                f'invalid address "{text}": the port is missing; use {example}'
            )
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(
                f'invalid address "{text}": put an IPv6 address in brackets, e.g. "[::1]:8443"'
            )
        if host and not _valid_host(host):
            raise ValueError(f'invalid address "{text}": invalid host "{host}"; use {example}')
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f'invalid address "{text}": invalid port "{port_text}"; use {example}')
    port = int(port_text)
    if port > 65535:
        raise ValueError(
            f'invalid address "{text}": port {port} is out of range 0-65535; use {example}'
        )
    return host, port


def _valid_host(host: str) -> bool:
    if len(host) > 253:
        return False
    if not all(char in _HOSTNAME_CHARS for char in host):
        return False
    return all(label != "" for label in host.split("."))


def _server_url(text: str, errors: list[str]) -> tuple[str, int, str] | None:
    key = "client.server_url"
    example = '"https://orders.example.org:8443"'
    if any(char in text for char in " \t\r\n\x00"):
        errors.append(f'{key}: invalid URL "{text}": it contains whitespace; use e.g. {example}')
        return None
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as error:
        errors.append(f'{key}: invalid URL "{text}": {error}; use e.g. {example}')
        return None
    scheme = parts.scheme.lower()
    if scheme == "http":
        errors.append(
            f'{key}: invalid URL "{text}": the proxy always uses mTLS to the server, so '
            f'the scheme must be https; use "https{text[4:]}"'
        )
        return None
    if scheme != "https":
        errors.append(
            f'{key}: invalid URL "{text}": the scheme must be https; use e.g. {example}'
        )
        return None
    if "@" in parts.netloc:
        errors.append(
            f'{key}: invalid URL "{text}": userinfo ("user@") is not allowed, because '
            f"the proxy authenticates with its SPIFFE certificate; remove it"
        )
        return None
    if "?" in text:
        errors.append(
            f'{key}: invalid URL "{text}": a query is not allowed; move it to the '
            "requests that the application sends"
        )
        return None
    if "#" in text:
        errors.append(f'{key}: invalid URL "{text}": a fragment is not allowed; remove it')
        return None
    host = parts.hostname or ""
    if host == "":
        errors.append(f'{key}: invalid URL "{text}": the host is missing; use e.g. {example}')
        return None
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            errors.append(f'{key}: invalid URL "{text}": "{host}" is not an IPv6 address')
            return None
    elif not _valid_host(host):
        errors.append(f'{key}: invalid URL "{text}": invalid host "{host}"; use e.g. {example}')
        return None
    try:
        port = parts.port
    except ValueError:
        errors.append(f'{key}: invalid URL "{text}": invalid port; use a port in 1-65535')
        return None
    if port is None:
        if parts.netloc.endswith(":"):
            errors.append(f'{key}: invalid URL "{text}": the port is empty; remove ":" or add a port')
            return None
        port = 443
    if port == 0:
        errors.append(f'{key}: invalid URL "{text}": port 0 cannot be dialed; use a port in 1-65535')
        return None
    path = parts.path.rstrip("/")
    segments = path.lower().replace("%2e", ".").split("/")
    if any(segment in (".", "..") for segment in segments) or "%2f" in path.lower():
        errors.append(
            f'{key}: invalid URL "{text}": the path prefix has a "." or ".." segment or an encoded '
            'slash; write the prefix as the server resolves it, e.g. "/api/v1"'
        )
        return None
    return host, port, path


def _join_host_port(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _yaml_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "list", dict: "mapping", str: "string"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# Summary


def summarize(config: Config) -> str:
    """Return the one-screen summary that `e5s-proxy validate` prints."""
    spire = config.spire
    origin = SPIFFE_ENDPOINT_SOCKET_ENV if spire.workload_socket_from_env else "spire.workload_socket"
    lines = [
        f"Config {config.source} is valid.",
        "",
        "SPIRE Workload API",
        f"  socket:                {spire.workload_socket}  (from {origin} \"{spire.workload_socket_text}\")",
        f"  initial fetch timeout: {format_duration(spire.initial_fetch_timeout)}",
        f"  SVID used:             {spire.svid_spiffe_id or 'the first one the agent returns'}",
        f"Drain on SIGTERM:        up to {format_duration(config.drain_timeout)}",
        f"Worker processes:        {config.workers}",
    ]

    server = config.server
    if server is not None:
        lines += [
            "",
            "Server (inbound: mTLS from clients, plain HTTP to the app)",
            f"  listen:          {_describe_listen(server.listen)}",
            f"  forward to app:  {server.target}",
            f"  allowed clients: {_describe_policy(server.allowed_client_trust_domains, server.allowed_client_spiffe_ids)}",
            f"  peer header:     {server.peer_header} (set to the verified client SPIFFE ID)",
            "  timeouts:        "
            f"app connect {format_duration(server.app_connect_timeout)}, "
            f"app response {format_duration(server.app_response_timeout)}, "
            f"idle {format_duration(server.idle_timeout)}, "
            f"request head {format_duration(server.request_head_timeout)}",
            f"  limits:          head {server.max_head_size} bytes, {server.max_header_count} header fields",
            f"  access log:      {'on' if server.access_log else 'off'}",
        ]

    client = config.client
    if client is not None:
        upstream = f"https://{client.server_authority}{client.server_path_prefix}"
        lines += [
            "",
            "Client (outbound: plain HTTP from the app, mTLS to the server)",
            f"  listen:          {_describe_listen(client.listen)}",
            f"  server:          {upstream}",
            f"  expected server: {_describe_policy(client.expected_server_trust_domains, client.expected_server_spiffe_ids)}",
            "  timeouts:        "
            f"connect {format_duration(client.connect_timeout)}, "
            f"response {format_duration(client.response_timeout)}, "
            f"idle {format_duration(client.idle_timeout)}",
            f"  max idle connections: {client.max_idle_connections}",
            f"  limits:          head {client.max_head_size} bytes, {client.max_header_count} header fields",
            f"  access log:      {'on' if client.access_log else 'off'}",
        ]

    admin = config.admin
    if admin is not None:
        lines += [
            "",
            "Admin (plaintext HTTP: /healthz, /readyz, /metrics)",
            f"  listen: {_describe_listen(admin.listen)}",
        ]
        if not is_loopback_host(admin.listen.host):
            lines.append("  WARNING: the admin listener is not on loopback; anyone who can reach it can read it")
    if client is not None and not is_loopback_host(client.listen.host):
        lines += ["", f"WARNING: {OUTBOUND_EXPOSED_WARNING}"]
    return "\n".join(lines)


def _describe_listen(address: Address) -> str:
    notes = []
    if address.host == "":
        notes.append("all interfaces")
    if address.port == 0:
        notes.append("the system picks a free port")
    return f"{address}  ({', '.join(notes)})" if notes else str(address)


def _describe_policy(trust_domains: tuple[str, ...], spiffe_ids: tuple[SpiffeId, ...]) -> str:
    if trust_domains:
        names = ", ".join(trust_domains)
        return f"any SPIFFE ID in trust domain {names}"
    return "only " + ", ".join(str(spiffe_id) for spiffe_id in spiffe_ids)


def is_loopback_host(host: str) -> bool:
    """Whether a listen host accepts connections from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
