"""The microservice substrate: apps as data, backends, load, experiments, baseline controllers."""

from leanstack.microservices.app import AppSpec, AppSpecError, load_app
from leanstack.microservices.observation import (
    Allocation,
    ClassStats,
    Observation,
    Span,
    TierAllocation,
    TierStats,
)

__all__ = [
    "Allocation",
    "AppSpec",
    "AppSpecError",
    "ClassStats",
    "Observation",
    "Span",
    "TierAllocation",
    "TierStats",
    "load_app",
]
