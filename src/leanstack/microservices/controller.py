"""The Controller contract: a policy that turns observation history into an allocation."""

from __future__ import annotations

from typing import Protocol

from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import Allocation, Observation


class Controller(Protocol):
    """Decides the next allocation once per control interval.

    ``reset`` is called once with the app and the backend's interval before the run; ``decide``
    sees every observation so far (newest last) and the allocation now in force.
    ``describe`` returns plain data about the policy's settings, written into the result.
    """

    name: str

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Prepare for a run and return the initial allocation."""

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """Return the allocation for the next interval (``current`` to hold)."""

    def describe(self) -> dict:
        """Settings worth recording in the result (e.g. HPA time-constant scaling)."""
