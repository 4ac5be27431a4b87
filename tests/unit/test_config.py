"""Unit tests for e5s_proxy.config: YAML loading, validation and the summary."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from e5s_proxy.config import (
    DEFAULT_APP_CONNECT_TIMEOUT,
    DEFAULT_APP_RESPONSE_TIMEOUT,
    DEFAULT_CLIENT_CONNECT_TIMEOUT,
    DEFAULT_CLIENT_IDLE_TIMEOUT,
    DEFAULT_CLIENT_RESPONSE_TIMEOUT,
    DEFAULT_INITIAL_FETCH_TIMEOUT,
    DEFAULT_MAX_IDLE_CONNECTIONS,
    DEFAULT_PEER_HEADER,
    DEFAULT_REQUEST_HEAD_TIMEOUT,
    DEFAULT_SERVER_IDLE_TIMEOUT,
    Address,
    AppTarget,
    Config,
    ConfigError,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    summarize,
)
from e5s_proxy.spiffeid import SpiffeId

SOCKET = "unix:///run/spire/sockets/agent.sock"
NO_ENV: dict[str, str] = {}

FULL_CONFIG = """
version: 1
spire:
  workload_socket: "unix:///run/spire/sockets/agent.sock"
  initial_fetch_timeout: "30s"
server:
  listen_addr: ":8443"
  target: "127.0.0.1:8080"
  allowed_client_trust_domain: "example.org"
  peer_header: "X-Peer-SPIFFE-ID"
client:
  listen_addr: "127.0.0.1:15001"
  server_url: "https://orders.default.svc.cluster.local:8443"
  expected_server_spiffe_id: "spiffe://example.org/orders"
admin:
  listen_addr: "127.0.0.1:15000"
"""

# Realistic e5s (Go library) version-1 files, as its examples write them.
E5S_SERVER_CONFIG = """
spire:
  workload_socket: unix:///tmp/spire-agent/public/api.sock
  initial_fetch_timeout: 30s
server:
  listen_addr: ":8443"
  allowed_client_trust_domain: example.org
"""

E5S_CLIENT_CONFIG = """
version: 1
spire:
  workload_socket: unix:///tmp/spire-agent/public/api.sock
client:
  server_url: https://e5s-server:8443/time
  expected_server_spiffe_id: spiffe://example.org/ns/default/sa/e5s-server
"""


def server_config(**overrides: str) -> str:
    """Return a minimal valid server config with some server keys replaced."""
    keys = {
        "listen_addr": '":8443"',
        "target": '"127.0.0.1:8080"',
        "allowed_client_trust_domain": '"example.org"',
    }
    keys.update(overrides)
    lines = [f"  {key}: {value}" for key, value in keys.items() if value is not None]
    return f'spire:\n  workload_socket: "{SOCKET}"\nserver:\n' + "\n".join(lines) + "\n"


def client_config(**overrides: str) -> str:
    """Return a minimal valid client config with some client keys replaced."""
    keys = {
        "listen_addr": '"127.0.0.1:15001"',
        "server_url": '"https://orders.example.org:8443"',
        "expected_server_trust_domain": '"example.org"',
    }
    keys.update(overrides)
    lines = [f"  {key}: {value}" for key, value in keys.items() if value is not None]
    return f'spire:\n  workload_socket: "{SOCKET}"\nclient:\n' + "\n".join(lines) + "\n"


def config_errors(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ=NO_ENV if environ is None else environ)
    return raised.value.errors


def single_error(text: str, environ: dict[str, str] | None = None) -> str:
    errors = config_errors(text, environ)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------------------
# Full configs


def test_full_config_parses() -> None:
    config = parse_config(FULL_CONFIG, environ=NO_ENV)

    assert isinstance(config, Config)
    assert config.source == "<string>"
    assert config.spire.workload_socket == "/run/spire/sockets/agent.sock"
    assert config.spire.workload_socket_text == SOCKET
    assert config.spire.initial_fetch_timeout == 30.0


def test_full_config_server_section() -> None:
    server = parse_config(FULL_CONFIG, environ=NO_ENV).server

    assert server is not None
    assert server.listen == Address("", 8443)
    assert server.target == AppTarget("127.0.0.1", 8080, None)
    assert server.allowed_client_trust_domains == ("example.org",)
    assert server.allowed_client_spiffe_ids == ()
    assert server.peer_header == "X-Peer-SPIFFE-ID"


def test_full_config_client_section() -> None:
    client = parse_config(FULL_CONFIG, environ=NO_ENV).client

    assert client is not None
    assert client.listen == Address("127.0.0.1", 15001)
    assert client.server_host == "orders.default.svc.cluster.local"
    assert client.server_port == 8443
    assert client.server_path_prefix == ""
    assert client.expected_server_spiffe_ids == (SpiffeId("example.org", "/orders"),)
    assert client.expected_server_trust_domains == ()


def test_full_config_admin_section() -> None:
    admin = parse_config(FULL_CONFIG, environ=NO_ENV).admin

    assert admin is not None
    assert admin.listen == Address("127.0.0.1", 15000)


def test_server_defaults() -> None:
    server = parse_config(server_config(), environ=NO_ENV).server

    assert server is not None
    assert server.peer_header == DEFAULT_PEER_HEADER
    assert server.app_connect_timeout == DEFAULT_APP_CONNECT_TIMEOUT == 5.0
    assert server.app_response_timeout == DEFAULT_APP_RESPONSE_TIMEOUT == 60.0
    assert server.idle_timeout == DEFAULT_SERVER_IDLE_TIMEOUT == 60.0
    assert server.request_head_timeout == DEFAULT_REQUEST_HEAD_TIMEOUT == 10.0


def test_client_defaults() -> None:
    client = parse_config(client_config(), environ=NO_ENV).client

    assert client is not None
    assert client.connect_timeout == DEFAULT_CLIENT_CONNECT_TIMEOUT == 5.0
    assert client.response_timeout == DEFAULT_CLIENT_RESPONSE_TIMEOUT == 60.0
    assert client.idle_timeout == DEFAULT_CLIENT_IDLE_TIMEOUT == 60.0
    assert client.max_idle_connections == DEFAULT_MAX_IDLE_CONNECTIONS == 32


def test_spire_timeout_default() -> None:
    config = parse_config(server_config(), environ=NO_ENV)

    assert config.spire.initial_fetch_timeout == DEFAULT_INITIAL_FETCH_TIMEOUT == 30.0


def test_optional_sections_absent() -> None:
    config = parse_config(server_config(), environ=NO_ENV)

    assert config.client is None
    assert config.admin is None


def test_timeouts_set_explicitly() -> None:
    text = server_config(
        app_connect_timeout='"1s"',
        app_response_timeout='"2m"',
        idle_timeout='"90s"',
        request_head_timeout='"500ms"',
    )
    server = parse_config(text, environ=NO_ENV).server

    assert server is not None
    assert server.app_connect_timeout == 1.0
    assert server.app_response_timeout == 120.0
    assert server.idle_timeout == 90.0
    assert server.request_head_timeout == 0.5


def test_client_options_set_explicitly() -> None:
    text = client_config(
        connect_timeout='"2s"',
        response_timeout='"1m30s"',
        idle_timeout='"10s"',
        max_idle_connections="4",
    )
    client = parse_config(text, environ=NO_ENV).client

    assert client is not None
    assert client.connect_timeout == 2.0
    assert client.response_timeout == 90.0
    assert client.idle_timeout == 10.0
    assert client.max_idle_connections == 4


def test_config_is_frozen() -> None:
    config = parse_config(FULL_CONFIG, environ=NO_ENV)

    with pytest.raises(AttributeError):
        config.source = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------
# e5s compatibility


def test_e5s_server_config_needs_target() -> None:
    error = single_error(E5S_SERVER_CONFIG)

    assert error.startswith("server.target must be set")
    assert "local application" in error


def test_e5s_client_config_needs_listen_addr() -> None:
    error = single_error(E5S_CLIENT_CONFIG)

    assert error.startswith("client.listen_addr must be set")
    assert "outbound" in error


def test_e5s_server_config_with_target_parses() -> None:
    text = E5S_SERVER_CONFIG + '  target: "127.0.0.1:8080"\n'
    server = parse_config(text, environ=NO_ENV).server

    assert server is not None
    assert server.allowed_client_trust_domains == ("example.org",)


def test_e5s_client_config_with_listen_addr_parses() -> None:
    text = E5S_CLIENT_CONFIG + '  listen_addr: "127.0.0.1:15001"\n'
    client = parse_config(text, environ=NO_ENV).client

    assert client is not None
    assert client.server_host == "e5s-server"
    assert client.server_path_prefix == "/time"
    assert client.expected_server_spiffe_ids == (
        SpiffeId("example.org", "/ns/default/sa/e5s-server"),
    )


def test_client_server_url_required() -> None:
    error = single_error(client_config(server_url=None))

    assert error.startswith("client.server_url must be set")


def test_server_listen_addr_required() -> None:
    error = single_error(server_config(listen_addr=None))

    assert error.startswith("server.listen_addr must be set")


def test_admin_listen_addr_required() -> None:
    error = single_error(server_config() + "admin: {}\n")

    assert error.startswith("admin.listen_addr must be set")


def test_blank_string_counts_as_unset() -> None:
    # e5s trims values and treats a blank one as unset.
    error = single_error(server_config(target='"  "'))

    assert error.startswith("server.target must be set")


def test_values_are_trimmed() -> None:
    text = server_config(allowed_client_trust_domain='" example.org "')
    server = parse_config(text, environ=NO_ENV).server

    assert server is not None
    assert server.allowed_client_trust_domains == ("example.org",)


# ---------------------------------------------------------------------------
# Sections and top level


def test_server_or_client_required() -> None:
    error = single_error(f'spire:\n  workload_socket: "{SOCKET}"\n')

    assert error.startswith("server or client must be set")


def test_empty_section_rejected() -> None:
    error = single_error(f'spire:\n  workload_socket: "{SOCKET}"\nserver:\n')

    assert error.startswith("server: the section is empty")


def test_section_not_mapping_rejected() -> None:
    error = single_error(f'spire:\n  workload_socket: "{SOCKET}"\nserver: ":8443"\n')

    assert error.startswith("server: expected a mapping")


def test_empty_document_rejected() -> None:
    error = single_error("")

    assert "the config is empty" in error


def test_list_document_rejected() -> None:
    error = single_error("- a\n- b\n")

    assert "must be a YAML mapping" in error


@pytest.mark.parametrize("version", ["1.0", "2", "0", "true", '"1"', "null"])
def test_version_invalid(version: str) -> None:
    error = single_error(f"version: {version}\n" + server_config())

    assert error.startswith("version: unsupported value")


def test_version_one_accepted() -> None:
    config = parse_config("version: 1\n" + server_config(), environ=NO_ENV)

    assert config.server is not None


# ---------------------------------------------------------------------------
# Unknown and duplicate keys


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            server_config(allowed_client_trust_domains='"example.org"'),
            'server.allowed_client_trust_domains: unknown key; did you mean '
            '"server.allowed_client_trust_domain"?',
        ),
        (
            client_config(server_ur='"https://x"'),
            'client.server_ur: unknown key; did you mean "client.server_url"?',
        ),
        (
            "servr:\n  listen_addr: x\n" + client_config(),
            'servr: unknown key; did you mean "server"?',
        ),
        (
            "peer_header: X-Peer\n" + server_config(),
            "peer_header: unknown key; it belongs under server",
        ),
        (
            client_config(peer_header='"X-Peer"'),
            "client.peer_header: unknown key; it is a key of server, not of client",
        ),
        (
            server_config(colour='"blue"'),
            "server.colour: unknown key; known keys are listen_addr",
        ),
    ],
)
def test_unknown_key_hint(text: str, expected: str) -> None:
    errors = config_errors(text)
    unknown = [error for error in errors if "unknown key" in error]

    assert len(unknown) == 1, errors
    assert unknown[0].startswith(expected)


def test_unknown_key_typo_not_silently_ignored() -> None:
    # The typo leaves no policy at all, which must fail rather than allow everyone.
    errors = config_errors(server_config(allowed_client_trust_domain=None, allowed_clint_trust_domain='"example.org"'))

    assert len(errors) == 2
    assert errors[0].startswith("server.allowed_clint_trust_domain: unknown key")
    assert errors[1].startswith("server.allowed_client_spiffe_id or")


def test_non_string_key_rejected() -> None:
    error = single_error(server_config() + "1: x\n")

    assert error.startswith("1: keys must be strings")


def test_duplicate_key_rejected() -> None:
    text = server_config() + '  allowed_client_trust_domain: "other.org"\n'
    error = single_error(text)

    assert "duplicate key 'allowed_client_trust_domain' at line 7" in error
    assert "first at line 6" in error


def test_duplicate_top_level_key_rejected() -> None:
    error = single_error(server_config() + "server:\n  listen_addr: x\n")

    assert "duplicate key 'server'" in error


def test_merge_key_override_allowed() -> None:
    text = (
        f'base: &base\n  workload_socket: "{SOCKET}"\n'
        "spire:\n  <<: *base\n  initial_fetch_timeout: 5s\n"
    )
    errors = config_errors(text + "server:\n  listen_addr: ':1'\n")

    assert not any("duplicate" in error for error in errors)


def test_yaml_syntax_error_has_position() -> None:
    error = single_error('spire:\n  workload_socket: "unterminated\nserver: [\n')

    assert "invalid YAML at line" in error
    assert "column" in error


def test_yaml_syntax_error_line_number() -> None:
    error = single_error("server:\n  listen_addr: [a, b\n  target: x\n")

    assert "line 3" in error


# ---------------------------------------------------------------------------
# All errors at once


def test_all_errors_reported_at_once() -> None:
    text = """
spire:
  workload_socket: "unix://run/spire/agent.sock"
  initial_fetch_timeout: 30
server:
  listen_addr: ":8443"
  target: "127.0.0.1:8080"
  allowed_client_trust_domain: "Example..org"
  peer_header: "X Peer"
"""
    errors = config_errors(text)

    assert len(errors) == 4, errors
    assert any(error.startswith("spire.workload_socket: ") for error in errors)
    assert any(error.startswith("spire.initial_fetch_timeout: ") for error in errors)
    assert any(error.startswith("server.allowed_client_trust_domain: ") for error in errors)
    assert any(error.startswith("server.peer_header: ") for error in errors)


def test_config_error_str_one_per_line() -> None:
    text = server_config(listen_addr='"8443"', target='"x"')
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ=NO_ENV)

    assert len(raised.value.errors) == 2
    assert str(raised.value).splitlines() == raised.value.errors


def test_trust_domain_error_message_format() -> None:
    error = single_error(server_config(allowed_client_trust_domain='"Example..org"'))

    assert error == (
        'server.allowed_client_trust_domain: invalid trust domain "Example..org": '
        'it contains upper-case letters; use the lower-case form "example..org"'
    )


# ---------------------------------------------------------------------------
# Workload API socket and SPIFFE_ENDPOINT_SOCKET


@pytest.mark.parametrize(
    "text, path",
    [
        ("unix:///run/spire/agent.sock", "/run/spire/agent.sock"),
        ("unix:/run/spire/agent.sock", "/run/spire/agent.sock"),
        ("/run/spire/agent.sock", "/run/spire/agent.sock"),
        ("  unix:///tmp/a.sock  ", "/tmp/a.sock"),
    ],
)
def test_workload_socket_valid(text: str, path: str) -> None:
    config = parse_config(
        server_config().replace(SOCKET, text), environ={"SPIFFE_ENDPOINT_SOCKET": "/env.sock"}
    )

    assert config.spire.workload_socket == path
    assert config.spire.workload_socket_text == text.strip()
    assert config.spire.workload_socket_from_env is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ("unix://run/spire/agent.sock", 'needs a third slash for an absolute path'),
        ("unix://run/spire/agent.sock", 'use "unix:///run/spire/agent.sock"'),
        ("unix:run/agent.sock", "must be absolute"),
        ("tcp://127.0.0.1:8081", 'the scheme "tcp" is not supported'),
        ("http://127.0.0.1:8081", 'the scheme "http" is not supported'),
        ("run/spire/agent.sock", "must be absolute"),
        ("agent.sock", "must be absolute"),
        ("unix:///run/spire/", "names a directory"),
        ("unix:///run/agent.sock?x=1", "query or fragment"),
    ],
)
def test_workload_socket_invalid(text: str, expected: str) -> None:
    error = single_error(server_config().replace(SOCKET, text))

    assert error.startswith("spire.workload_socket: ")
    assert expected in error


def test_workload_socket_not_string() -> None:
    error = single_error(server_config().replace(f'"{SOCKET}"', "8081"))

    assert error.startswith("spire.workload_socket: expected a string")


def test_workload_socket_missing_everywhere() -> None:
    text = server_config().replace(f'  workload_socket: "{SOCKET}"\n', "  initial_fetch_timeout: 5s\n")
    error = single_error(text)

    assert error.startswith("spire.workload_socket must be set (or set SPIFFE_ENDPOINT_SOCKET)")


def test_workload_socket_from_env() -> None:
    text = server_config().replace(f'spire:\n  workload_socket: "{SOCKET}"\n', "")
    config = parse_config(text, environ={"SPIFFE_ENDPOINT_SOCKET": "unix:///env/agent.sock"})

    assert config.spire.workload_socket == "/env/agent.sock"
    assert config.spire.workload_socket_text == "unix:///env/agent.sock"
    assert config.spire.workload_socket_from_env is True


def test_workload_socket_empty_uses_env() -> None:
    text = server_config().replace(f'"{SOCKET}"', '""')
    config = parse_config(text, environ={"SPIFFE_ENDPOINT_SOCKET": "/env/agent.sock"})

    assert config.spire.workload_socket == "/env/agent.sock"


def test_workload_socket_config_beats_env() -> None:
    config = parse_config(server_config(), environ={"SPIFFE_ENDPOINT_SOCKET": "/env/agent.sock"})

    assert config.spire.workload_socket == "/run/spire/sockets/agent.sock"


def test_workload_socket_invalid_env_named() -> None:
    text = server_config().replace(f'spire:\n  workload_socket: "{SOCKET}"\n', "")
    error = single_error(text, {"SPIFFE_ENDPOINT_SOCKET": "tcp://127.0.0.1:8081"})

    assert error.startswith("SPIFFE_ENDPOINT_SOCKET: ")
    assert "tcp" in error


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "/from/os/environ.sock")
    text = server_config().replace(f'spire:\n  workload_socket: "{SOCKET}"\n', "")

    assert parse_config(text).spire.workload_socket == "/from/os/environ.sock"


# ---------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("1h2m3s4ms", 3723.004),
        ("10ns", 1e-8),
        ("10us", 1e-5),
        ("10\u00b5s", 1e-5),
        ("10\u03bcs", 1e-5),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("+5s", 5.0),
        ("-5s", -5.0),
    ],
)
def test_parse_duration_valid(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "it is empty"),
        ("30", 'missing unit; add a unit, e.g. "30s"'),
        ("1m30", "missing unit"),
        ("30 s", 'unknown unit " s"'),
        ("30sec", 'unknown unit "sec"'),
        ("5d", 'unknown unit "d"'),
        ("s", "expected a number"),
        ("1.2.3s", "expected a number"),
        ("-", "it is empty"),
        ("3000000h", "maximum"),
        ("\u0663s", "expected a number"),
    ],
)
def test_parse_duration_invalid(text: str, expected: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_duration(text)

    assert expected in str(raised.value)


def test_parse_duration_rejects_int() -> None:
    with pytest.raises(ValueError):
        parse_duration(30)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ['"0"', '"0s"', '"-1s"'])
def test_duration_config_must_be_positive(value: str) -> None:
    error = single_error(server_config(idle_timeout=value))

    assert error.startswith("server.idle_timeout: must be at least 1ms")


@pytest.mark.parametrize("value", ["30", "1.5"])
def test_duration_config_rejects_yaml_number(value: str) -> None:
    error = single_error(server_config(app_connect_timeout=value))

    assert error.startswith(f"server.app_connect_timeout: invalid duration {value} (a YAML number)")
    assert f'add a unit, e.g. "{value}s"' in error


def test_duration_config_rejects_string_number() -> None:
    error = single_error(client_config(connect_timeout='"30"'))

    assert 'client.connect_timeout: invalid duration "30": missing unit' in error


def test_duration_config_rejects_boolean() -> None:
    error = single_error(client_config(idle_timeout="true"))

    assert error.startswith('client.idle_timeout: expected a duration such as "30s"')


def test_spire_timeout_zero_rejected() -> None:
    text = server_config().replace(
        f'  workload_socket: "{SOCKET}"\n', f'  workload_socket: "{SOCKET}"\n  initial_fetch_timeout: "0"\n'
    )
    error = single_error(text)

    assert error.startswith("spire.initial_fetch_timeout: must be at least 1ms")


@pytest.mark.parametrize(
    "seconds, text",
    [(30.0, "30s"), (90.0, "1m30s"), (0.5, "500ms"), (3600.0, "1h"), (5.0, "5s"), (60.0, "1m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ---------------------------------------------------------------------------
# Listen addresses


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443),
        (":8443", "", 8443),
        ("0.0.0.0:1", "0.0.0.0", 1),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:8443", "::1", 8443),
        ("[::]:8443", "::", 8443),
        ("[fe80::1%eth0]:8443", "fe80::1%eth0", 8443),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_listen_addr_valid(text: str, host: str, port: int) -> None:
    server = parse_config(server_config(listen_addr=f'"{text}"'), environ=NO_ENV).server

    assert server is not None
    assert server.listen == Address(host, port)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8443", "the port is missing"),
        ("127.0.0.1", "the port is missing"),
        ("::1:8443", "put an IPv6 address in brackets"),
        ("[::1]8443", 'expected "[ipv6]:port"'),
        ("[not-v6]:8443", "is not an IPv6 address"),
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:-1", 'invalid port "-1"'),
        ("127.0.0.1:http", 'invalid port "http"'),
        ("127.0.0.1:", 'invalid port ""'),
        ("*:8443", 'invalid host "*"'),
        ("bad host:8443", 'invalid host "bad host"'),
    ],
)
def test_listen_addr_invalid(text: str, expected: str) -> None:
    error = single_error(server_config(listen_addr=f'"{text}"'))

    assert error.startswith("server.listen_addr: invalid address")
    assert expected in error


def test_listen_addr_yaml_number_rejected() -> None:
    error = single_error(server_config(listen_addr="8443"))

    assert error.startswith("server.listen_addr: expected a string")


def test_listener_port_conflict() -> None:
    text = server_config() + 'admin:\n  listen_addr: "127.0.0.1:8443"\n'
    error = single_error(text)

    assert error.startswith('admin.listen_addr: "127.0.0.1:8443" uses the same port as server.listen_addr')


def test_listener_port_zero_no_conflict() -> None:
    text = server_config(listen_addr='"127.0.0.1:0"') + 'admin:\n  listen_addr: "127.0.0.1:0"\n'

    assert parse_config(text, environ=NO_ENV).admin is not None


def test_listener_different_hosts_no_conflict() -> None:
    text = server_config(listen_addr='"127.0.0.1:8443"') + 'admin:\n  listen_addr: "127.0.0.2:8443"\n'

    assert parse_config(text, environ=NO_ENV).admin is not None


# ---------------------------------------------------------------------------
# Application target


@pytest.mark.parametrize(
    "text, target",
    [
        ("127.0.0.1:8080", AppTarget("127.0.0.1", 8080, None)),
        ("app.local:80", AppTarget("app.local", 80, None)),
        ("[::1]:8080", AppTarget("::1", 8080, None)),
        ("unix:/run/app.sock", AppTarget(None, None, "/run/app.sock")),
        ("unix:///run/app.sock", AppTarget(None, None, "/run/app.sock")),
    ],
)
def test_target_valid(text: str, target: AppTarget) -> None:
    server = parse_config(server_config(target=f'"{text}"'), environ=NO_ENV).server

    assert server is not None
    assert server.target == target


@pytest.mark.parametrize(
    "text, expected",
    [
        ("unix://run/app.sock", "needs a third slash"),
        ("unix:run/app.sock", "must be absolute"),
        ("http://127.0.0.1:8080", "it is an address, not a URL"),
        (":8080", 'the host is missing; use e.g. "127.0.0.1:8080"'),
        ("127.0.0.1:0", "port 0 cannot be dialed"),
        ("127.0.0.1", "the port is missing"),
        ("/run/app.sock", "the port is missing"),
    ],
)
def test_target_invalid(text: str, expected: str) -> None:
    error = single_error(server_config(target=f'"{text}"'))

    assert error.startswith("server.target: ")
    assert expected in error


def test_target_str_forms() -> None:
    assert str(AppTarget(None, None, "/run/app.sock")) == "unix:/run/app.sock"
    assert str(AppTarget("::1", 8080, None)) == "[::1]:8080"


# ---------------------------------------------------------------------------
# Client server URL


@pytest.mark.parametrize(
    "text, host, port, prefix, authority",
    [
        ("https://orders.example.org", "orders.example.org", 443, "", "orders.example.org"),
        ("https://orders.example.org/", "orders.example.org", 443, "", "orders.example.org"),
        ("https://orders:8443", "orders", 8443, "", "orders:8443"),
        ("https://orders:443/api/v1/", "orders", 443, "/api/v1", "orders"),
        ("https://Orders.Example.org/API", "orders.example.org", 443, "/API", "orders.example.org"),
        ("HTTPS://orders/x", "orders", 443, "/x", "orders"),
        ("https://[::1]:8443/x", "::1", 8443, "/x", "[::1]:8443"),
        ("https://[::1]", "::1", 443, "", "[::1]"),
        ("https://10.0.0.1:9443", "10.0.0.1", 9443, "", "10.0.0.1:9443"),
    ],
)
def test_server_url_valid(text: str, host: str, port: int, prefix: str, authority: str) -> None:
    client = parse_config(client_config(server_url=f'"{text}"'), environ=NO_ENV).client

    assert client is not None
    assert client.server_host == host
    assert client.server_port == port
    assert client.server_path_prefix == prefix
    assert client.server_authority == authority


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://orders:8080", "the proxy always uses mTLS to the server, so the scheme must be https"),
        ("ftp://orders", "the scheme must be https"),
        ("orders:8443", "the scheme must be https"),
        ("https://user:pw@orders", "userinfo"),
        ("https://orders/x?y=1", "a query is not allowed"),
        ("https://orders/x?", "a query is not allowed"),
        ("https://orders/x#frag", "a fragment is not allowed"),
        ("https:///x", "the host is missing"),
        ("https://orders:0", "port 0"),
        ("https://orders:70000", "invalid port"),
        ("https://orders:abc", "invalid port"),
        ("https://orders:/x", "the port is empty"),
        ("https://[::1", "invalid URL"),
        ("https://or ders", "whitespace"),
        ("https://or*ders", 'invalid host "or*ders"'),
    ],
)
def test_server_url_invalid(text: str, expected: str) -> None:
    error = single_error(client_config(server_url=f'"{text}"'))

    assert error.startswith("client.server_url: ")
    assert expected in error


def test_server_url_http_suggests_https() -> None:
    error = single_error(client_config(server_url='"http://orders:8080/api"'))

    assert 'use "https://orders:8080/api"' in error


# ---------------------------------------------------------------------------
# Peer policies


def test_allowed_client_spiffe_id_list() -> None:
    text = server_config(
        allowed_client_trust_domain=None,
        allowed_client_spiffe_id='["spiffe://example.org/web", "spiffe://example.org/web", "spiffe://other.org/api"]',
    )
    server = parse_config(text, environ=NO_ENV).server

    assert server is not None
    assert server.allowed_client_spiffe_ids == (
        SpiffeId("example.org", "/web"),
        SpiffeId("example.org", "/web"),
        SpiffeId("other.org", "/api"),
    )
    assert server.allowed_client_trust_domains == ()


def test_allowed_client_trust_domain_list() -> None:
    text = server_config(allowed_client_trust_domain='["example.org", "spiffe://other.org"]')
    server = parse_config(text, environ=NO_ENV).server

    assert server is not None
    assert server.allowed_client_trust_domains == ("example.org", "other.org")


def test_trust_domain_spiffe_form_normalized() -> None:
    text = client_config(expected_server_trust_domain='"spiffe://example.org"')
    client = parse_config(text, environ=NO_ENV).client

    assert client is not None
    assert client.expected_server_trust_domains == ("example.org",)


def test_trust_domain_with_path_rejected() -> None:
    error = single_error(server_config(allowed_client_trust_domain='"spiffe://example.org/web"'))

    assert error.startswith("server.allowed_client_trust_domain: invalid trust domain")
    assert "a trust domain has no path" in error


def test_policy_both_set_rejected() -> None:
    text = server_config(allowed_client_spiffe_id='"spiffe://example.org/web"')
    error = single_error(text)

    assert error.startswith(
        "server: set only one of allowed_client_spiffe_id and allowed_client_trust_domain"
    )


def test_policy_neither_set_rejected() -> None:
    error = single_error(client_config(expected_server_trust_domain=None))

    assert error.startswith(
        "client.expected_server_spiffe_id or client.expected_server_trust_domain must be set"
    )


def test_policy_empty_list_rejected() -> None:
    text = server_config(allowed_client_trust_domain=None, allowed_client_spiffe_id="[]")
    errors = config_errors(text)

    assert errors == [
        "server.allowed_client_spiffe_id: the list is empty; add at least one value or remove the key"
    ]


def test_policy_list_item_error_has_index() -> None:
    text = server_config(allowed_client_trust_domain='["example.org", "Bad.org"]')
    error = single_error(text)

    assert error.startswith("server.allowed_client_trust_domain[1]: invalid trust domain")


def test_policy_list_item_not_string() -> None:
    error = single_error(server_config(allowed_client_trust_domain="[1]"))

    assert error.startswith("server.allowed_client_trust_domain[0]: expected a string")


def test_policy_mapping_rejected() -> None:
    error = single_error(server_config(allowed_client_trust_domain="{a: b}"))

    assert error.startswith("server.allowed_client_trust_domain: expected a string or a list")


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"spiffe://Example.org/web"', 'use "spiffe://example.org/web"'),
        ('"spiffe://example.org:443/web"', "no port"),
        ('"spiffe://example.org/web/"', "trailing slash"),
        ('"example.org/web"', 'does not start with "spiffe://"'),
    ],
)
def test_expected_server_spiffe_id_invalid(value: str, expected: str) -> None:
    text = client_config(expected_server_trust_domain=None, expected_server_spiffe_id=value)
    error = single_error(text)

    assert error.startswith("client.expected_server_spiffe_id: invalid SPIFFE ID")
    assert expected in error


# ---------------------------------------------------------------------------
# Peer header and max idle connections


@pytest.mark.parametrize("value", ["X-Peer-SPIFFE-ID", "x-client-id", "X_Peer", "Peer!#$%&'*+.^`|~"])
def test_peer_header_valid(value: str) -> None:
    server = parse_config(server_config(peer_header=f'"{value}"'), environ=NO_ENV).server

    assert server is not None
    assert server.peer_header == value


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"X Peer"', "' '"),
        ('"X-Peer:"', "':'"),
        ('"X-Pe\u00e9r"', "'\u00e9'"),
        ('""', "invalid header name ''"),
        ("1", "invalid header name 1"),
        ('"Host"', "controls HTTP framing or routing"),
        ('"content-length"', "controls HTTP framing or routing"),
        ('"Transfer-Encoding"', "controls HTTP framing or routing"),
    ],
)
def test_peer_header_invalid(value: str, expected: str) -> None:
    error = single_error(server_config(peer_header=value))

    assert error.startswith("server.peer_header: ")
    assert expected in error


@pytest.mark.parametrize("value", ["0", "-1", '"32"', "1.5", "true"])
def test_max_idle_connections_invalid(value: str) -> None:
    error = single_error(client_config(max_idle_connections=value))

    assert error.startswith("client.max_idle_connections: invalid value")


# ---------------------------------------------------------------------------
# load_config


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "e5s.yaml"
    path.write_text(FULL_CONFIG, encoding="utf-8")
    config = load_config(str(path), environ=NO_ENV)

    assert config.source == str(path)
    assert config.server is not None


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=NO_ENV)

    assert raised.value.errors == [f"config file {path!r} not found; check the path or create the file"]


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path), environ=NO_ENV)

    assert "is a directory" in str(raised.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_load_config_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "e5s.yaml"
    path.write_text(FULL_CONFIG, encoding="utf-8")
    path.chmod(0)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ=NO_ENV)

    assert "permission denied" in str(raised.value)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "e5s.yaml"
    path.write_bytes(b"server:\n  target: \xff\xfe\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ=NO_ENV)

    assert "is not valid UTF-8" in str(raised.value)


def test_load_config_yaml_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "e5s.yaml"
    path.write_text("server: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ=NO_ENV)

    assert str(raised.value).startswith(f"{path}: invalid YAML at line")


def test_load_config_scalar_document(tmp_path: Path) -> None:
    path = tmp_path / "e5s.yaml"
    path.write_text("just a string\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ=NO_ENV)

    assert str(raised.value).startswith(f"{path}: the config must be a YAML mapping")


def test_load_config_error_source(tmp_path: Path) -> None:
    path = tmp_path / "e5s.yaml"
    path.write_text(E5S_SERVER_CONFIG, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ=NO_ENV)

    assert raised.value.source == str(path)


# ---------------------------------------------------------------------------
# summarize


def test_summarize_full_config() -> None:
    summary = summarize(parse_config(FULL_CONFIG, environ=NO_ENV))

    assert "/run/spire/sockets/agent.sock" in summary
    assert "initial fetch timeout: 30s" in summary
    assert ":8443  (all interfaces)" in summary
    assert "forward to app:  127.0.0.1:8080" in summary
    assert "any SPIFFE ID in trust domain example.org" in summary
    assert "peer header:     X-Peer-SPIFFE-ID" in summary
    assert "https://orders.default.svc.cluster.local:8443" in summary
    assert "only spiffe://example.org/orders" in summary
    assert "127.0.0.1:15000" in summary
    assert "request head 10s" in summary


def test_summarize_fits_one_screen() -> None:
    summary = summarize(parse_config(FULL_CONFIG, environ=NO_ENV))

    assert len(summary.splitlines()) <= 30


def test_summarize_env_socket() -> None:
    text = server_config().replace(f'spire:\n  workload_socket: "{SOCKET}"\n', "")
    summary = summarize(parse_config(text, environ={"SPIFFE_ENDPOINT_SOCKET": "/env.sock"}))

    assert "from SPIFFE_ENDPOINT_SOCKET" in summary


def test_summarize_warns_public_admin() -> None:
    text = server_config() + 'admin:\n  listen_addr: ":15000"\n'
    summary = summarize(parse_config(text, environ=NO_ENV))

    assert "not on loopback" in summary


def test_summarize_no_warning_loopback_admin() -> None:
    summary = summarize(parse_config(FULL_CONFIG, environ=NO_ENV))

    assert "not on loopback" not in summary


def test_documented_example_config_valid() -> None:
    # The annotated example from the user documentation must stay valid.
    text = textwrap.dedent(
        """\
        version: 1                       # optional
        spire:
          workload_socket: "unix:///run/spire/sockets/agent.sock"
          initial_fetch_timeout: "30s"
        server:
          listen_addr: ":8443"
          target: "127.0.0.1:8080"
          allowed_client_trust_domain: "example.org"
          # allowed_client_spiffe_id: "spiffe://example.org/web"
          peer_header: "X-Peer-SPIFFE-ID"
        client:
          listen_addr: "127.0.0.1:15001"
          server_url: "https://orders.default.svc.cluster.local:8443"
          expected_server_trust_domain: "example.org"
        admin:
          listen_addr: "127.0.0.1:15000"
        """
    )

    assert parse_config(text, environ=NO_ENV).client is not None


# --- keys for SVID choice, drain, HTTP limits and access logs -------------------

MINIMAL_SERVER = """
spire:
  workload_socket: /run/agent.sock
server:
  listen_addr: ":8443"
  target: "127.0.0.1:8080"
  allowed_client_trust_domain: example.org
"""


def test_svid_spiffe_id_parsed():
    config = parse_config(MINIMAL_SERVER.replace("/run/agent.sock", "/run/agent.sock\n  svid_spiffe_id: spiffe://example.org/web"))
    assert str(config.spire.svid_spiffe_id) == "spiffe://example.org/web"


def test_svid_spiffe_id_invalid_names_key():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER.replace("/run/agent.sock", "/run/agent.sock\n  svid_spiffe_id: spiffe://Example.org/web"))
    assert caught.value.errors[0].startswith("spire.svid_spiffe_id:")


def test_drain_timeout_defaults_to_15s():
    assert parse_config(MINIMAL_SERVER).drain_timeout == 15.0


def test_drain_timeout_parsed():
    assert parse_config(MINIMAL_SERVER + 'drain_timeout: "2m"\n').drain_timeout == 120.0


def test_drain_timeout_without_unit_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER + "drain_timeout: 30\n")
    assert caught.value.errors[0].startswith("drain_timeout:")


def test_http_limits_default():
    server = parse_config(MINIMAL_SERVER).server
    assert (server.max_head_size, server.max_header_count) == (65536, 100)


def test_max_head_size_too_small_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER + "  max_head_size: 10\n")
    assert "server.max_head_size: invalid value 10" in caught.value.errors[0]


def test_max_header_count_zero_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER + "  max_header_count: 0\n")
    assert "server.max_header_count" in caught.value.errors[0]


def test_access_log_must_be_boolean():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER + '  access_log: "yes please"\n')
    assert caught.value.errors[0].startswith("server.access_log: expected true or false")


def test_summary_mentions_drain_timeout():
    assert "up to 15s" in summarize(parse_config(MINIMAL_SERVER))


def test_duration_below_one_millisecond_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER + '  idle_timeout: "1ns"\n')
    assert caught.value.errors[0].startswith("server.idle_timeout: must be at least 1ms")


def test_target_equal_to_listen_rejected():
    text = MINIMAL_SERVER.replace('listen_addr: ":8443"', 'listen_addr: "127.0.0.1:8080"')
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.errors[0].startswith('server.target: "127.0.0.1:8080" is the proxy\'s own')


@pytest.mark.parametrize("path", ["/api/../admin", "/api/%2e%2e/admin", "/api/./v1", "/a%2Fb"])
def test_server_url_dot_segment_rejected(path):
    text = f"""
spire:
  workload_socket: /run/agent.sock
client:
  listen_addr: "127.0.0.1:15001"
  server_url: "https://orders:8443{path}"
  expected_server_trust_domain: example.org
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert "path prefix has a" in caught.value.errors[0]


def test_summary_warns_about_exposed_outbound_listener():
    text = """
spire:
  workload_socket: /run/agent.sock
client:
  listen_addr: "0.0.0.0:15001"
  server_url: "https://orders:8443"
  expected_server_trust_domain: example.org
"""
    assert "WARNING: client.listen_addr is not on loopback" in summarize(parse_config(text))


def test_workers_default_one():
    assert parse_config(MINIMAL_SERVER).workers == 1


def test_workers_zero_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL_SERVER + "workers: 0\n")
    assert caught.value.errors[0].startswith("workers: invalid value 0")


def test_workers_with_port_zero_rejected():
    text = MINIMAL_SERVER.replace('listen_addr: ":8443"', 'listen_addr: "127.0.0.1:0"') + "workers: 2\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert "port 0 cannot be shared by 2 workers" in caught.value.errors[0]
