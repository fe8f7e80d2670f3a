"""Real work kinds: each spends the CPU it is asked for, and targets follow mean and cv."""

import time

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import WORK_KINDS
from leanstack.microservices.work import UNITS, do_work, draw_cpu_ms


@pytest.mark.parametrize("kind", WORK_KINDS)
def test_work_spends_the_target_cpu(kind):
    start = time.thread_time()
    used_ms = do_work(kind, 5.0)
    measured_ms = (time.thread_time() - start) * 1e3
    assert 5.0 <= used_ms < 7.0  # at most one unit of overshoot
    assert measured_ms == pytest.approx(used_ms, abs=0.5)


@pytest.mark.parametrize("kind", WORK_KINDS)
def test_work_units_compute_something_real(kind):
    a, b = UNITS[kind](1), UNITS[kind](2)
    assert a is not None and b is not None


def test_zero_target_does_no_work():
    assert do_work("json", 0.0) < 0.2


def test_unknown_work_kind_is_a_one_line_error():
    with pytest.raises(LeanstackError, match="unknown work kind 'gpu' — use one of json") as e:
        do_work("gpu", 1.0)
    assert "\n" not in str(e.value)


def test_draws_follow_mean_and_cv():
    rng = np.random.default_rng(3)
    x = np.array([draw_cpu_ms(2.0, 0.5, rng) for _ in range(20000)])
    assert x.mean() == pytest.approx(2.0, rel=0.03)
    assert x.std() / x.mean() == pytest.approx(0.5, rel=0.05)
    assert x.min() >= 0


def test_deterministic_and_degenerate_draws():
    rng = np.random.default_rng(0)
    assert draw_cpu_ms(1.5, 0.0, rng) == 1.5
    assert draw_cpu_ms(0.0, 0.5, rng) == 0.0
