"""The proxy's own log level switch."""

from __future__ import annotations

from twisted.logger import globalLogPublisher

from e5s_proxy.logs import RepeatLimiter, logger, set_debug


def capture(emit) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        emit()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [event for event in events if event.get("log_namespace") == "e5s_proxy.test"]


def test_debug_events_held_back_by_default():
    set_debug(False)
    events = capture(lambda: logger("e5s_proxy.test").debug("hidden"))
    assert events == []


def test_debug_events_pass_after_set_debug():
    set_debug(True)
    try:
        events = capture(lambda: logger("e5s_proxy.test").debug("shown"))
    finally:
        set_debug(False)
    assert [event["log_format"] for event in events] == ["shown"]


def test_info_events_pass_by_default():
    set_debug(False)
    events = capture(lambda: logger("e5s_proxy.test").info("shown"))
    assert len(events) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def seconds(self) -> float:
        return self.now


def test_repeat_limiter_lets_first_line_through():
    assert RepeatLimiter(FakeClock()).check("peer") == 0


def test_repeat_limiter_holds_back_repeats_in_window():
    limiter = RepeatLimiter(FakeClock(), window=10)
    limiter.check("peer")
    assert limiter.check("peer") is None


def test_repeat_limiter_reports_held_back_count_after_window():
    clock = FakeClock()
    limiter = RepeatLimiter(clock, window=10)
    limiter.check("peer")
    limiter.check("peer")
    limiter.check("peer")
    clock.now += 11
    assert limiter.check("peer") == 2


def test_repeat_limiter_keys_are_independent():
    limiter = RepeatLimiter(FakeClock(), window=10)
    limiter.check("peer-a")
    assert limiter.check("peer-b") == 0
