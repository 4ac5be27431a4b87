"""ConnectionPool's idle connections, with Twisted's clock and in-memory transports."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from e5s_proxy.pool import ConnectionPool, UpstreamConnection


def no_endpoint():
    raise AssertionError("the pool opened a connection")


def make_pool(clock: Clock, max_idle: int = 4) -> ConnectionPool:
    return ConnectionPool(clock, no_endpoint, tls=False, connect_timeout=5, max_idle=max_idle, idle_timeout=60)


def open_connection() -> UpstreamConnection:
    connection = UpstreamConnection(tls=False)
    connection.makeConnection(StringTransport())
    return connection


def test_take_idle_returns_none_when_empty():
    assert make_pool(Clock()).take_idle() is None


def test_take_idle_returns_most_recently_released():
    pool = make_pool(Clock())
    first, second = open_connection(), open_connection()
    pool.release(first)
    pool.release(second)
    assert pool.take_idle() is second


def test_take_idle_marks_connection_reused():
    pool = make_pool(Clock())
    connection = open_connection()
    pool.release(connection)
    assert pool.take_idle().reused


def test_take_idle_skips_closed_connection():
    pool = make_pool(Clock())
    connection = open_connection()
    pool.release(connection)
    connection.closed = True
    assert pool.take_idle() is None


def test_release_beyond_max_idle_aborts_connection():
    pool = make_pool(Clock(), max_idle=1)
    first, extra = open_connection(), open_connection()
    pool.release(first)
    pool.release(extra)
    assert extra.transport.disconnecting


def test_idle_connection_kept_until_timeout():
    clock = Clock()
    pool = make_pool(clock)
    connection = open_connection()
    pool.release(connection)
    clock.advance(59.9)
    assert not connection.transport.disconnecting


def test_idle_connection_closed_at_timeout():
    clock = Clock()
    pool = make_pool(clock)
    connection = open_connection()
    pool.release(connection)
    clock.advance(60)
    assert connection.transport.disconnecting


def test_expired_connection_leaves_pool():
    clock = Clock()
    pool = make_pool(clock)
    pool.release(open_connection())
    clock.advance(60)
    assert pool.take_idle() is None


def test_later_release_outlives_earlier_expiry():
    clock = Clock()
    pool = make_pool(clock)
    early, late = open_connection(), open_connection()
    pool.release(early)
    clock.advance(30)
    pool.release(late)
    clock.advance(30)
    assert not late.transport.disconnecting


def test_later_release_expires_on_its_own_time():
    clock = Clock()
    pool = make_pool(clock)
    pool.release(open_connection())
    clock.advance(30)
    late = open_connection()
    pool.release(late)
    clock.advance(60)
    assert late.transport.disconnecting


def test_reused_connection_escapes_expiry():
    clock = Clock()
    pool = make_pool(clock)
    connection = open_connection()
    pool.release(connection)
    reused = pool.take_idle()
    clock.advance(60)
    assert not reused.transport.disconnecting


def test_close_idle_aborts_connections():
    pool = make_pool(Clock())
    connection = open_connection()
    pool.release(connection)
    pool.close_idle()
    assert connection.transport.disconnecting


def test_close_idle_cancels_expiry_call():
    clock = Clock()
    pool = make_pool(clock)
    pool.release(open_connection())
    pool.close_idle()
    assert clock.getDelayedCalls() == []


def test_take_idle_skips_connection_past_idle_timeout():
    clock = Clock()
    pool = make_pool(clock)
    pool.release(open_connection())
    # Time passes but the expiry call has not run yet, as when the reactor is busy.
    clock.rightNow += 60
    assert pool.take_idle() is None
