"""The Backend contract: what the simulator and the local runtime both implement."""

from __future__ import annotations

from typing import Protocol

from leanstack.microservices.app import AppSpec
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation, Span


class Backend(Protocol):
    """Runs an app under open-loop load and reports one Observation per control interval.

    Life cycle: ``deploy`` -> ``start`` -> (``observe`` / ``set_allocation``)* -> ``close``.
    ``observe`` blocks until the next interval ends: in real time on the local backend, in
    simulated time on the simulator. ``close`` is idempotent and leaves nothing running.
    """

    name: str
    interval_s: float

    def deploy(self, app: AppSpec, allocation: Allocation) -> None:
        """Start every tier with the given allocation and wait until all are ready."""

    def start(self, load: LoadSpec) -> None:
        """Begin sending the open-loop load (the run's clock starts here)."""

    def set_allocation(self, allocation: Allocation) -> None:
        """Apply a new allocation live (CPU quota now; replica changes as fast as possible)."""

    def observe(self) -> Observation:
        """Wait for the current control interval to end and return what happened in it."""

    def spans(self, since_ns: int = 0) -> list[Span]:
        """Spans that ended at or after ``since_ns``."""

    def close(self) -> None:
        """Stop load and tiers and remove everything the backend created."""
