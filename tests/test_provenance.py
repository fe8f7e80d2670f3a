"""The environment, command and time a result records."""

from __future__ import annotations

import sys
from datetime import datetime
from importlib import metadata

from leanstack.provenance import (
    benchmark_record,
    command_line,
    package_versions,
    runtime_environment,
)


def test_versions_of_installed_packages_and_none_for_a_missing_one():
    versions = package_versions(["numpy", "no-such-distribution-x"])
    assert versions == {"numpy": metadata.version("numpy"), "no-such-distribution-x": None}


def test_runtime_environment_has_python_cores_and_the_named_packages_only():
    env = runtime_environment(("numpy",))
    assert env["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert env["cpu_count"] >= 1 and list(env["packages"]) == ["numpy"]


def test_benchmark_record_adds_conditions_command_without_install_path_and_time(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--quick"])
    record = benchmark_record(("numpy",), threads=2)
    assert record["environment"]["threads"] == 2 and "numpy" in record["environment"]["packages"]
    interpreter, *rest = record["command"].split(" ")
    assert "/" not in interpreter and rest == ["benchmarks/x.py", "--quick"]
    assert datetime.fromisoformat(record["timestamp"]).tzinfo is not None


def test_a_console_script_is_recorded_by_name_and_arguments_are_quoted():
    assert command_line(["/opt/env/bin/leanstack", "chip", "bench", "--question", "a b"]) == \
        "leanstack chip bench --question 'a b'"
    assert command_line(["benchmarks/x.py"]) == "python benchmarks/x.py"
    assert command_line([".venv/bin/leanstack", "kv", "eval"]) == "leanstack kv eval"
    assert command_line(["/opt/repo/benchmarks/x.py", "-q"]) == "python x.py -q"
    assert command_line([]) == ""


def test_the_host_probe_times_its_loop_and_scales_with_it():
    from leanstack.provenance import host_probe_ms

    short = host_probe_ms(repeats=3, loops=50_000)
    long = host_probe_ms(repeats=3, loops=400_000)
    assert 0 < short["min"] <= short["median"]
    assert long["min"] > 3 * short["min"]  # eight times the loop: far more than noise


def test_the_probe_sampler_reads_all_through_the_block_and_stops_at_its_end():
    import time

    import pytest

    from leanstack.provenance import HostProbeSampler

    with HostProbeSampler(every_s=0.05, loops=20_000) as sampler:
        time.sleep(0.4)
    n = len(sampler.samples)
    assert 3 <= n <= 10
    times = [t for t, _ in sampler.samples]
    assert times == sorted(times) and times[0] < 0.05 and times[-1] <= 0.45
    assert all(ms > 0 for _, ms in sampler.samples)  # scaled to the full probe's length
    summary = sampler.summary()
    assert summary["n"] == n and summary["min"] <= summary["median"] <= summary["max"]
    assert sampler.record() == {**summary, "samples": sampler.samples}
    time.sleep(0.15)
    assert len(sampler.samples) == n  # the thread stopped with the block
    assert HostProbeSampler().summary() == {"n": 0}
    with pytest.raises(ValueError, match="every_s must be above 0"):
        HostProbeSampler(every_s=0)
