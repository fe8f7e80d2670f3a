"""The bandit explorer: reward, credit assignment, recovery, and a real run on the simulator."""

from __future__ import annotations

from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, ClassStats, Observation, TierStats
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.sinan.explorer import CREDIT_S, BanditExplorer, ci_shrink


def make_obs(app, t: int, p99: float) -> Observation:
    classes = {n: ClassStats(completed=100, latency_ms={"p99": p99}, sla_ms=c.sla.ms,
                             sla_key="p99") for n, c in app.classes.items()}
    return Observation(t=t, interval_s=1.0, classes=classes, offered_rps=300.0,
                       tiers={n: TierStats(cpu_limit=1.0, cpu_used=0.1) for n in app.services})


def test_reward_shrinks_with_samples():
    assert ci_shrink(0, 0) > ci_shrink(5, 10) > ci_shrink(50, 100) > 0


def test_explorer_reduces_first_then_credits_actions(app):
    ex = BanditExplorer(seed=1, random_share=0.0, hold_share=0.0, act_share=1.0)
    cur = ex.reset(app, 1.0)
    hist = [make_obs(app, t, 5.0) for t in range(1, 6)]
    new = ex.decide(hist, cur)
    assert new.total_cpu() < cur.total_cpu()  # the bias favours reductions
    state = ex._state(hist[-1])
    tier = "frontend"
    cpu = new.tiers[tier].cpu
    assert ex.arm(tier, state, cpu) == (0, 0)  # not credited yet
    cur = new
    for t in range(6, 6 + CREDIT_S):
        hist.append(make_obs(app, t, 5.0))
        cur = ex.decide(hist, cur)
    assert ex.arm(tier, state, cpu) == (1, 1)  # satisfied after 5 s without violation


def test_a_violation_blames_recent_actions_and_only_scales_up(app):
    ex = BanditExplorer(seed=2, random_share=0.0, hold_share=0.0, act_share=1.0)
    cur = ex.reset(app, 1.0)
    hist = [make_obs(app, t, 5.0) for t in range(1, 6)]
    first = ex.decide(hist, cur)
    state = ex._state(hist[-1])
    hist.append(make_obs(app, 6, 500.0))  # violation
    after = ex.decide(hist, first)
    assert ex.arm("frontend", state, first.tiers["frontend"].cpu) == (0, 1)
    for name, ta in after.tiers.items():
        assert ta.cpu >= first.tiers[name].cpu


def test_explorer_runs_on_the_simulator(app, tmp_path):
    ex = BanditExplorer(seed=0)
    r = run_experiment(app, make_backend("sim", 1.0, seed=0), ex,
                       LoadSpec("poisson", 300.0, 20.0), tmp_path / "r.json", progress=False)
    cpus = [sum(a["cpu"] for a in e["allocation"].values()) for e in r["timeline"]]
    top = Allocation.static_max(app).total_cpu()
    assert cpus[0] == top and min(cpus) < top
    assert ex.describe()["arms"] > 0
