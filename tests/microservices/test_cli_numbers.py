"""Property test: any number given to a numeric CLI option is either refused in one line before
anything runs, or reaches the run as a valid value — never a traceback."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from leanstack.cli import app
from leanstack.errors import LeanstackError
from leanstack.microservices.load import MAX_REQUESTS

NUMBERS = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["0", "-0", "1e309", "1.5", "-1"]))


class Reached(Exception):
    """Raised by the stand-in for the expensive part: the arguments got through."""

    def __init__(self, **args) -> None:
        super().__init__("reached")
        self.args_seen = args


def _outcome(args: list[str]):
    result = CliRunner().invoke(app, args)
    e = result.exception
    if isinstance(e, Reached):
        return e.args_seen
    if isinstance(e, LeanstackError):
        assert "\n" not in str(e), str(e)
        return None
    assert isinstance(e, SystemExit) and result.exit_code == 2, (args, repr(e))  # usage error
    return None


@pytest.fixture()
def stubs(monkeypatch):
    def run_experiment(app_spec, backend, controller, load, *a, **k):
        raise Reached(rps=load.rps, duration=load.duration_s, seed=load.seed,
                      interval=backend.interval_s, amplitude=load.amplitude)

    def violation_rate_at(app_spec, allocation, load, seed=0):
        raise Reached(rps=load.rps, duration=load.duration_s, seed=seed)

    def collect(app_spec, loads, **k):
        raise Reached(rps=max(ld.rps for ld in loads), duration=loads[0].duration_s,
                      seed=min(ld.seed for ld in loads), repeats=len(loads) // 6)

    monkeypatch.setattr("leanstack.microservices.runner.run_experiment", run_experiment)
    monkeypatch.setattr("leanstack.ursa.oracle.violation_rate_at", violation_rate_at)
    monkeypatch.setattr("leanstack.sinan.dataset.collect", collect)


def _valid(seen: dict) -> None:
    for k in ("rps", "duration", "interval"):
        if k in seen:
            assert math.isfinite(seen[k]) and seen[k] > 0, (k, seen)
    if "rps" in seen and "duration" in seen:
        assert seen["rps"] * seen["duration"] <= MAX_REQUESTS
    if "repeats" in seen:
        assert 1 <= seen["repeats"] <= 100
    if "seed" in seen:
        assert isinstance(seen["seed"], int) and seen["seed"] >= 0, seen
    if "amplitude" in seen:
        assert 0 <= seen["amplitude"] < 1


COMMANDS = {
    "micro run": (["micro", "run", "--app", "hotel-reservation", "--quiet", "--out", "OUT"],
                  ["--rps", "--duration", "--seed", "--interval", "--amplitude"]),
    "ursa oracle": (["ursa", "oracle", "--app", "hotel-reservation", "--rps", "50"],
                    ["--rps", "--duration", "--target", "--seed"]),
    "sinan collect": (["sinan", "collect", "--app", "hotel-reservation", "--quiet", "--out",
                       "OUT"], ["--rps", "--duration", "--seed", "--repeats"]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numeric_options_fail_in_one_line_or_reach_the_run_valid(stubs, tmp_path, command,
                                                                  data):
    base, options = COMMANDS[command]
    args = [str(tmp_path / "out.json") if a == "OUT" else a for a in base]
    for flag in data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=3,
                                   unique=True)):
        args += [flag, str(data.draw(NUMBERS))]
    seen = _outcome(args)
    if seen is not None:
        _valid(seen)
    assert not (tmp_path / "out.json").exists()
