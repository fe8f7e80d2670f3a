"""Observations read from Prometheus' HTTP API: the metrics path of a Kubernetes cluster, usable
with the local backend too.

:class:`PrometheusObserver` turns the workers' ``/metrics`` (request counts, the latency
histogram per endpoint and request class, storage calls, in-flight time) and, where there is one,
cAdvisor's container metrics into per-tier and per-class statistics of a time window. Counters are
read with two instant queries, at the window's start and end, and differenced per series (a
series that restarted counts from zero, as PromQL's ``increase`` does, without its
extrapolation); percentiles come from the histogram buckets' differences, interpolated within a
bucket as ``histogram_quantile`` does. Samples are those of the last scrape before each instant, so
a window is exact to within one scrape interval.

:class:`PrometheusServer` runs the Debian ``prometheus`` binary with its own config and data
directory on a loopback port, scraping a list of targets (file-based discovery, so the list can
change during a run).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from leanstack.atomic import write_bytes
from leanstack.errors import LeanstackError
from leanstack.microservices.app import SLA_PERCENTILES, AppSpec, percentile_key
from leanstack.microservices.observation import ClassStats, TierStats
from leanstack.ports import free_ports

Series = dict[tuple[tuple[str, str], ...], float]
"""Query result: the series' labels (sorted pairs) -> value."""


class PrometheusClient:
    """Instant queries against ``url`` (e.g. ``http://127.0.0.1:9090``)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str, at: float) -> Series:
        """Evaluate ``expr`` at unix time ``at``; a vector result as :data:`Series`."""
        qs = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}",
                                        timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:200]
            raise LeanstackError(f"Prometheus at {self.url} rejected '{expr}' ({e.code}: "
                                 f"{detail}) — check the query and the server version") from None
        except (OSError, ValueError) as e:
            raise LeanstackError(f"cannot query Prometheus at {self.url} ({e}) — check that it "
                                 "runs and the --prometheus URL") from None
        if body.get("status") != "success" or body["data"]["resultType"] != "vector":
            raise LeanstackError(f"Prometheus at {self.url}: unexpected answer to '{expr}': "
                                 f"{str(body)[:200]}")
        return {tuple(sorted(r["metric"].items())): float(r["value"][1])
                for r in body["data"]["result"]}

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                return resp.status == 200
        except OSError:
            return False


@dataclass
class Window:
    """Per-tier and per-class statistics of one window, as far as metrics tell them."""

    tiers: dict[str, TierStats] = field(default_factory=dict)
    classes: dict[str, ClassStats] = field(default_factory=dict)


class PrometheusObserver:
    """Reads an app's statistics for a time window from Prometheus (see the module docstring).

    ``selector`` narrows every worker query (e.g. ``namespace="leanstack"``); ``cadvisor`` names
    the namespace whose container metrics give CPU, throttling and memory, with ``pod_tier``
    mapping a pod name to its tier (``None`` when no cAdvisor is scraped, as on the local
    backend, whose CPU comes from its cgroups).
    """

    def __init__(self, client: PrometheusClient, app: AppSpec, selector: str = "",
                 cadvisor: str | None = None,
                 pod_tier: Callable[[str], str | None] | None = None) -> None:
        self.client = client
        self.app = app
        self.selector = selector
        self.cadvisor = cadvisor
        self.pod_tier = pod_tier

    def window(self, t_start: float, t_end: float) -> Window:
        """Statistics of ``[t_start, t_end]`` (unix times)."""
        dt = max(t_end - t_start, 1e-9)
        sel = "{" + self.selector + "}"
        served = self._increase(f"sum by (service, instance) (leanstack_requests_total{sel})",
                                t_start, t_end, ("service",))
        calls = self._increase(f"sum by (service, instance) (leanstack_storage_calls_total{sel})",
                               t_start, t_end, ("service",))
        busy = self._increase(f"sum by (service, instance) (leanstack_inflight_seconds_total{sel})",
                              t_start, t_end, ("service",))
        buckets = self._increase(
            "sum by (service, endpoint, class, ok, le, instance) "
            f"(leanstack_request_duration_seconds_bucket{sel})", t_start, t_end,
            ("service", "endpoint", "class", "ok", "le"))
        replicas = _by(self.client.query(f"count by (service) (leanstack_inflight_requests{sel})",
                                         t_end), ("service",))
        out = Window()
        for name, svc in self.app.services.items():
            st = TierStats()
            if svc.is_storage:
                st.rps = calls.get((name,), 0.0) / dt
            else:
                st.rps = served.get((name,), 0.0) / dt
                st.inflight = busy.get((name,), 0.0) / dt
                st.replicas = max(1, round(replicas.get((name,), 1)))
                st.latency_ms = percentiles_from_buckets(
                    _sum_over(buckets, lambda k, n=name: k[0] == n))
            out.tiers[name] = st
        for cname, rc in self.app.classes.items():
            entry = (rc.entry.service, rc.entry.endpoint, cname)
            ok = _sum_over(buckets, lambda k, e=entry: k[:3] == e and k[3] == "true")
            bad = _sum_over(buckets, lambda k, e=entry: k[:3] == e and k[3] == "false")
            completed = round(ok.get("+Inf", 0.0))
            out.classes[cname] = ClassStats(
                completed=completed, errors=round(bad.get("+Inf", 0.0)),
                throughput_rps=completed / dt, latency_ms=percentiles_from_buckets(ok),
                sla_ms=rc.sla.ms, sla_key=rc.sla.key)
        if self.cadvisor is not None:
            self._add_cadvisor(out, t_start, t_end, dt)
        return out

    def _add_cadvisor(self, out: Window, t_start: float, t_end: float, dt: float) -> None:
        """CPU used, throttling and memory per tier from the kubelets' cAdvisor metrics."""
        sel = f'{{namespace="{self.cadvisor}", container!="", container!="POD"}}'
        used = self._pod_increase(f"container_cpu_usage_seconds_total{sel}", t_start, t_end)
        periods = self._pod_increase(f"container_cpu_cfs_throttled_periods_total{sel}",
                                     t_start, t_end)
        throttled = self._pod_increase(f"container_cpu_cfs_throttled_seconds_total{sel}",
                                       t_start, t_end)
        memory = self._pods(self.client.query(
            f"sum by (pod) (container_memory_working_set_bytes{sel})", t_end))
        for tier, st in out.tiers.items():
            st.cpu_used = used.get(tier, 0.0) / dt
            st.throttled_periods = round(periods.get(tier, 0.0))
            st.throttled_s = throttled.get(tier, 0.0)
            st.memory_bytes = round(memory.get(tier, 0.0))

    def _pod_increase(self, metric: str, t_start: float, t_end: float) -> dict[str, float]:
        expr = f"sum by (pod) ({metric})"
        before, after = self.client.query(expr, t_start), self.client.query(expr, t_end)
        return self._pods({k: _counter_delta(before.get(k), v) for k, v in after.items()})

    def _pods(self, series: Series) -> dict[str, float]:
        """Per-pod values summed per tier (pods no tier claims are left out)."""
        out: dict[str, float] = {}
        for labels, v in series.items():
            tier = self.pod_tier(dict(labels).get("pod", "")) if self.pod_tier else None
            if tier is not None:
                out[tier] = out.get(tier, 0.0) + v
        return out

    def _increase(self, expr: str, t_start: float, t_end: float,
                  keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """Per-series counter increase over the window, summed by ``keys``."""
        before, after = self.client.query(expr, t_start), self.client.query(expr, t_end)
        deltas = {k: _counter_delta(before.get(k), v) for k, v in after.items()}
        return _by(deltas, keys)


def _counter_delta(before: float | None, after: float) -> float:
    """Increase of a counter; a new or restarted series counts from zero."""
    if before is None or after < before:
        return after
    return after - before


def _by(series: Series, keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for labels, v in series.items():
        d = dict(labels)
        k = tuple(d.get(key, "") for key in keys)
        out[k] = out.get(k, 0.0) + v
    return out


def _sum_over(buckets: dict[tuple[str, ...], float],
              keep: Callable[[tuple[str, ...]], bool]) -> dict[str, float]:
    """Bucket counts (by ``le``) of the series ``keep`` selects, summed."""
    out: dict[str, float] = {}
    for k, v in buckets.items():
        if keep(k):
            out[k[-1]] = out.get(k[-1], 0.0) + v
    return out


def percentiles_from_buckets(cumulative: dict[str, float]) -> dict[str, float]:
    """``{"p50": ms, ...}`` from cumulative bucket counts keyed by ``le``, interpolated linearly
    within the bucket holding the rank (as PromQL's ``histogram_quantile``); ``{}`` when empty."""
    bounds = sorted((float(le), c) for le, c in cumulative.items())
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return {}
    out = {}
    for p in SLA_PERCENTILES:
        rank = p / 100.0 * total
        lower, below = 0.0, 0.0
        value = lower
        for upper, count in bounds:
            if count >= rank:
                if math.isinf(upper):
                    value = lower  # the highest finite bound, as histogram_quantile does
                elif count > below:
                    value = lower + (upper - lower) * (rank - below) / (count - below)
                else:
                    value = upper
                break
            lower, below = upper, count
        out[percentile_key(p)] = value * 1e3
    return out


class PrometheusServer:
    """A private Prometheus (the Debian binary) scraping ``targets`` every ``scrape_s`` seconds
    on a free loopback port, with its data in a temporary directory removed by :meth:`stop`."""

    def __init__(self, scrape_s: float = 1.0, job: str = "leanstack",
                 binary: str = "prometheus", labels: dict[str, str] | None = None) -> None:
        self.scrape_s = scrape_s
        self.labels = labels or {}  # added to every target (e.g. a namespace)
        self.job = job
        self.binary = binary
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: dict[str, list[str]]) -> PrometheusServer:
        """Start scraping ``targets`` (service -> ``host:port`` list); wait until ready."""
        exe = shutil.which(self.binary)
        if exe is None:
            raise LeanstackError("prometheus is not installed — run scripts/system-deps.sh "
                                 "(Debian package 'prometheus')")
        self.dir = Path(tempfile.mkdtemp(prefix="leanstack-prometheus-"))
        self.set_targets(targets)
        config = {"global": {"scrape_interval": duration(self.scrape_s),
                             "scrape_timeout": duration(min(self.scrape_s, 10.0))},
                  "scrape_configs": [{"job_name": self.job, "file_sd_configs": [
                      {"files": [str(self.dir / "targets.json")], "refresh_interval": "1s"}]}]}
        write_bytes(self.dir / "prometheus.yml", yaml.safe_dump(config).encode())
        self.port = free_ports(1)[0]
        log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - owned by the child
        with log:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        client = PrometheusClient(self.url)
        deadline = time.monotonic() + 30.0
        while not client.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "prometheus.log").read_text(errors="replace")[-300:]
                self.stop()
                raise LeanstackError(f"prometheus did not start: {tail.strip()}")
            time.sleep(0.1)
        return self

    def set_targets(self, targets: dict[str, list[str]]) -> None:
        """Replace the scraped targets (picked up within about a second)."""
        groups = [{"targets": addrs, "labels": {**self.labels, "tier": tier}}
                  for tier, addrs in targets.items()]
        write_bytes(self.dir / "targets.json", json.dumps(groups).encode())

    def wait_for_targets(self, n: int, timeout_s: float = 15.0) -> None:
        """Wait until ``n`` targets have been scraped successfully at least once."""
        deadline = time.monotonic() + timeout_s
        client = PrometheusClient(self.url)
        while time.monotonic() < deadline:
            up = client.query(f'up{{job="{self.job}"}} == 1', time.time())
            if len(up) >= n:
                return
            time.sleep(0.2)
        raise LeanstackError(f"prometheus scraped fewer than {n} targets in {timeout_s:g} s")

    def stop(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_targets(backend: Any) -> dict[str, list[str]]:
    """The ``/metrics`` addresses of a deployed local backend's workers, by tier."""
    return {name: [f"127.0.0.1:{w.admin_port}" for w in tier.workers]
            for name, tier in backend.tiers.items() if tier.workers}


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (whole milliseconds: ``250ms``, ``5000ms``)."""
    return f"{max(1, round(seconds * 1000))}ms"
