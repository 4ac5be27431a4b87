"""The blocking resolver of single-thread debug mode."""

from __future__ import annotations

from e5s_proxy.singlethread import BlockingResolver, requested


class Receiver:
    def __init__(self) -> None:
        self.addresses = []
        self.began = False
        self.completed = False

    def resolutionBegan(self, resolution) -> None:
        self.began = True

    def addressResolved(self, address) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.completed = True


def test_blocking_resolver_resolves_ip_literal():
    receiver = Receiver()
    BlockingResolver().resolveHostName(receiver, "127.0.0.1", 8080)
    assert [(address.host, address.port) for address in receiver.addresses] == [("127.0.0.1", 8080)]


def test_blocking_resolver_completes_unknown_name():
    receiver = Receiver()
    BlockingResolver().resolveHostName(receiver, "no-such-host.invalid", 80)
    assert receiver.completed
    assert receiver.addresses == []


def test_requested_reads_environment(monkeypatch):
    monkeypatch.setenv("E5S_DEBUG_SINGLE_THREAD", "1")
    assert requested()


def test_requested_off_by_default(monkeypatch):
    monkeypatch.delenv("E5S_DEBUG_SINGLE_THREAD", raising=False)
    assert not requested()
