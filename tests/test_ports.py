"""Server ports come from below the ephemeral range, where client connections never take them."""

from __future__ import annotations

import contextlib
import socket

import pytest

from leanstack import ports
from leanstack.errors import LeanstackError
from leanstack.ports import LOWEST_PORT, ephemeral_low, free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    got = free_ports(20)
    assert len(set(got)) == 20
    assert all(LOWEST_PORT <= p < ephemeral_low() for p in got)
    for p in got:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_never_handed_out_and_too_few_free_ports_is_one_clear_error():
    pool = range(40100, 40108)
    with contextlib.ExitStack() as stack:
        busy = [stack.enter_context(socket.socket()) for _ in range(7)]
        for s, port in zip(busy, pool, strict=False):
            s.bind(("127.0.0.1", port))
            s.listen()
        for _ in range(10):
            assert free_ports(1, candidates=pool) == [40107]
        with pytest.raises(LeanstackError, match=r"only 1 of 2 TCP ports in 40100-40107 are free"):
            free_ports(2, candidates=pool)


def test_an_unreadable_or_tiny_ephemeral_range_falls_back_to_the_kernels_choice(monkeypatch,
                                                                                 tmp_path):
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ephemeral_low() == ports.DEFAULT_EPHEMERAL_LOW
    bad = tmp_path / "range"
    bad.write_text(f"{LOWEST_PORT + 2}\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", bad)
    got = free_ports(3)
    assert len(set(got)) == 3
    assert all(p >= LOWEST_PORT + 2 for p in got)  # from the kernel, not the 2-port pool


def test_ports_promised_to_servers_that_have_not_bound_yet_are_never_handed_out():
    pool = range(40200, 40208)
    promised = set(pool) - {40202}
    for _ in range(10):  # the scan starts at a random place; only one port is left
        assert free_ports(1, candidates=pool, exclude=promised) == [40202]
    with pytest.raises(LeanstackError, match="only 1 of 2 TCP ports"):
        free_ports(2, candidates=pool, exclude=promised)
