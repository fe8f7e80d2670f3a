"""The Detector contract: watches observations, raises alerts, and may act on them.

A detector sees every observation right after the controller decided; its ``update`` returns the
alerts it raises for that interval, and ``adjust`` may change the controller's allocation (for
example, give the tier an alert names more CPU until the alert clears). The runner records the
alerts in the result's timeline. Detectors are found by name in :data:`DETECTORS`, imported
lazily, so the substrate never imports a part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import Allocation, Observation
from leanstack.registry import checked_options, load_target


@dataclass(frozen=True)
class Alert:
    """An anticipated QoS violation: when, how likely, and the tier most likely at fault.

    ``ranking`` maps tiers to their culprit probability, most likely first.
    """

    t: float
    p_violation: float
    culprit: str
    confidence: float
    ranking: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Detector(Protocol):
    """``reset`` once before the run, then ``update`` and ``adjust`` once per interval."""

    name: str

    def reset(self, app: AppSpec, interval_s: float) -> None:
        """Prepare for a run of ``app`` observed every ``interval_s`` seconds."""

    def update(self, observation: Observation) -> list[Alert]:
        """Take one interval's observation; return the alerts active after it."""

    def adjust(self, allocation: Allocation) -> Allocation:
        """The allocation to apply given the controller's decision and the active alerts."""

    def describe(self) -> dict[str, Any]:
        """Settings worth recording in the result."""


DETECTORS: dict[str, str] = {
    "seer": "leanstack.seer.detector:SeerDetector",
}
"""Detector name -> ``"module:factory"``; the factory takes keyword options only."""


def make_detector(name: str, **opts: Any) -> Detector:
    """Build a detector by name; options set to ``None`` keep the detector's default."""
    if name not in DETECTORS:
        raise LeanstackError(f"unknown detector '{name}' — use one of {', '.join(DETECTORS)}")
    factory = load_target(DETECTORS[name], f"detector '{name}'")
    return factory(**checked_options(f"detector '{name}'", factory, opts))
