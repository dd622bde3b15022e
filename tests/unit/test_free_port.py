"""free_port never hands out a port a later bind to port 0 can get."""

from __future__ import annotations

import socket

import pytest

from extproc import demo


def test_free_port_is_below_the_kernels_ephemeral_range() -> None:
    low = demo._ephemeral_low()
    for _ in range(50):
        assert demo.free_port() < low


def test_free_port_never_returns_the_same_port_twice() -> None:
    ports = [demo.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


class _Picks:
    """A random source that offers the given ports in order."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    def randrange(self, low: int, high: int) -> int:
        return self.ports.pop(0)


def test_free_port_skips_a_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    busy, spare = demo.free_port(), demo.free_port()
    demo._handed_out.discard(spare)
    monkeypatch.setattr(demo.random, "SystemRandom", lambda: _Picks([busy, spare]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy))
        taken.listen()
        demo._handed_out.discard(busy)
        assert demo.free_port() == spare
