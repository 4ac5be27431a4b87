"""The proxy's own log level switch."""

from __future__ import annotations

from twisted.logger import globalLogPublisher

from e5s_proxy.logs import logger, set_debug


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
