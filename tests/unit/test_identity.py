"""Workload API socket checks and snapshots, without an agent."""

from __future__ import annotations

import socket

from e5s_proxy.identity import SOCKET_MISSING, check_socket


def test_check_socket_missing(tmp_path):
    assert check_socket(str(tmp_path / "agent.sock")) == SOCKET_MISSING


def test_check_socket_regular_file(tmp_path):
    path = tmp_path / "agent.sock"
    path.write_text("not a socket")
    assert "not a Unix socket" in check_socket(str(path))


def test_check_socket_accepts_unix_socket(tmp_path):
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        assert check_socket(str(path)) is None
    finally:
        server.close()
