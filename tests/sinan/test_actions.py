"""The CPU grid and the per-tier actions."""

from __future__ import annotations

from leanstack.sinan.actions import ACTIONS, CpuGrid


def test_actions_stay_on_the_grid_and_in_range(app):
    grid = CpuGrid()
    for tier in ("frontend", "geo-store"):
        top = app.services[tier].max_cpu
        for start in (0.2, 0.5, top):
            for action in ACTIONS:
                cpu = grid.apply(app, tier, action, start)
                assert grid.tier_floor(app, tier) <= cpu <= top
                assert abs(cpu / grid.step - round(cpu / grid.step)) < 1e-6


def test_action_directions(app):
    grid = CpuGrid()
    assert grid.apply(app, "frontend", "down_10pct", 0.6) == 0.5
    assert grid.apply(app, "frontend", "down_1core", 0.6) == 0.2  # the floor
    assert grid.apply(app, "frontend", "hold", 0.6) == 0.6
    assert grid.apply(app, "frontend", "up_25pct", 0.6) == 0.8  # 0.85 rounds to the grid
    assert grid.apply(app, "frontend", "up_1core", 0.6) == 1.0  # capped at max_cpu
    assert grid.apply(app, "geo-store", "down_10pct", 0.5) == 0.4  # at least one step down
