"""The prerequisite helper: fail in CI, skip with a warning elsewhere, run when nothing lacks."""

from __future__ import annotations

import pytest
from tests._require import needs, require


def test_missing_prerequisite_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="needs yosys .*required in CI"):
        require(["yosys"], "run scripts/system-deps.sh")


def test_missing_prerequisite_skips_loudly_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.warns(UserWarning, match="SKIPPED, needs yosys"), \
            pytest.raises(pytest.skip.Exception, match="needs yosys"):
        require("yosys", "run scripts/system-deps.sh")
    monkeypatch.setenv("CI", "false")
    with pytest.warns(UserWarning), pytest.raises(pytest.skip.Exception):
        require(True, "how")


def test_nothing_missing_runs_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    require([], "how")
    require(None, "how")
    calls = []

    @needs(lambda: [], "how")
    def body(x: int) -> None:
        calls.append(x)

    body(3)
    assert calls == [3]
