"""Arrival schedules: each pattern has the right mean rate and shape; bad settings are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.load import LoadSpec, assign_classes


@pytest.mark.parametrize("pattern", ["constant", "poisson", "diurnal", "step"])
def test_mean_rate_matches(pattern):
    t = LoadSpec(pattern, rps=200, duration_s=300, seed=3).arrival_times()
    assert len(t) / 300 == pytest.approx(200, rel=0.03)
    assert np.all(np.diff(t) >= 0)
    assert t.min() >= 0 and t.max() < 300


def test_diurnal_peaks_mid_period_and_step_doubles():
    t = LoadSpec("diurnal", rps=100, duration_s=400, amplitude=0.5, seed=1).arrival_times()
    first, middle = np.sum(t < 40), np.sum((t >= 180) & (t < 220))
    assert middle > 2 * first
    s = LoadSpec("step", rps=100, duration_s=200, amplitude=0.5, seed=1).arrival_times()
    assert np.sum(s >= 100) / np.sum(s < 100) == pytest.approx(3.0, rel=0.1)


def test_constant_is_evenly_spaced_and_seed_reproduces():
    t = LoadSpec("constant", rps=50, duration_s=2).arrival_times()
    assert np.allclose(np.diff(t), 0.02)
    a = LoadSpec("poisson", rps=50, duration_s=20, seed=7).arrival_times()
    b = LoadSpec("poisson", rps=50, duration_s=20, seed=7).arrival_times()
    c = LoadSpec("poisson", rps=50, duration_s=20, seed=8).arrival_times()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_trace_is_rescaled_to_the_mean(tmp_path: Path):
    f = tmp_path / "trace.csv"
    f.write_text("# t,rate\n0,10\n1,30\n")
    spec = LoadSpec("trace", rps=100, duration_s=200, trace=str(f), seed=2)
    assert spec.rate(np.array([0.5, 1.5])) == pytest.approx([50, 150])
    t = spec.arrival_times()
    assert len(t) / 200 == pytest.approx(100, rel=0.05)


def test_class_mix():
    names = assign_classes({"a": 0.75, "b": 0.25}, 20000, seed=1)
    assert names.count("a") / 20000 == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pattern": "burst"}, "unknown load pattern"),
        ({"rps": 0}, "--rps must be above 0"),
        ({"duration_s": -1}, "--duration"),
        ({"pattern": "trace"}, "needs a trace file"),
        ({"amplitude": 1.5}, "amplitude"),
    ],
)
def test_bad_settings(kwargs, fragment):
    with pytest.raises(LeanstackError, match=fragment):
        LoadSpec(**kwargs)


def test_bad_trace_file(tmp_path: Path):
    f = tmp_path / "t.csv"
    f.write_text("0,ten\n")
    with pytest.raises(LeanstackError, match=r"t\.csv:1: expected a rate"):
        LoadSpec("trace", trace=str(f)).arrival_times()
    with pytest.raises(LeanstackError, match="not found"):
        LoadSpec("trace", trace=str(tmp_path / "none.csv")).arrival_times()

