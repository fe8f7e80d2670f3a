"""The Kubernetes backend: an app's tiers as Deployments on a cluster, driven through its API.

- ``deploy``: server-side apply (``application/apply-patch+yaml``, field manager ``leanstack``) of
  the manifests of :mod:`.manifests`, then wait until every Deployment has its replicas ready.
  With ``adopt=True`` nothing is applied: the app must already run (``micro control``).
- ``set_allocation``: replicas through each Deployment's ``scale`` subresource; a tier's CPU
  per pod through the pods' ``resize`` subresource (in-place, no restart) when the API server is
  1.33 or newer, else by patching the Deployment's pod template (a rolling restart). With
  resize, pods started later by the ReplicaSet are resized when they are first seen.
- ``observe``: waits for the interval's end plus one scrape interval, then reads the window from
  Prometheus (:class:`~leanstack.microservices.prometheus.PrometheusObserver`): tier rates and
  latency histograms from the workers' ``/metrics``, CPU, throttling and memory from cAdvisor.
- ``spans``: with ``otlp_listen`` the backend runs an OTLP/HTTP receiver
  (:class:`~leanstack.microservices.otlp.OtlpReceiver`) that the workers send their spans to
  (the export's ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``observe`` then also reports each
  tier's own latency from them, as the local backend does. Without it there are no spans.
- ``close``: deletes what ``deploy`` applied unless ``keep`` (an adopted app is left alone).

API errors: conflicts (409), throttling (429), server errors and timeouts are retried with
exponential backoff; forbidden (403), not found (404) and the rest become one-line errors.
The client is the official ``kubernetes`` package (kubeconfig, in-cluster config, or ``api_url``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.k8s.manifests import (
    DEFAULT_IMAGE,
    DEFAULT_NAMESPACE,
    FIELD_MANAGER,
    ExportOptions,
    k8s_name,
    manifests,
    millicores,
    namespace_object,
    resources,
    selector,
    tier_names,
)
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import check_allocation
from leanstack.microservices.observation import (
    Allocation,
    Observation,
    Span,
    TierAllocation,
    own_latencies_ms,
    percentiles_ms,
)
from leanstack.microservices.otlp import OtlpReceiver
from leanstack.microservices.prometheus import PrometheusClient, PrometheusObserver

RESIZE_MIN_VERSION = (1, 33)
"""In-place pod resize through the ``resize`` subresource: beta and on by default from 1.33."""
RETRY_STATUSES = {409, 429, 500, 502, 503, 504}
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def read_allocation(path: str | Path, app: AppSpec) -> Allocation:
    """An allocation JSON ``{tier: {"cpu": c, "replicas": r}}`` (tiers left out stay at max)."""
    path = Path(path)
    how = 'write {"tier": {"cpu": 1.0, "replicas": 1}, ...}'
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LeanstackError(f"{path}: cannot read an allocation JSON ({e}) — {how}") from None
    if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
        raise LeanstackError(f"{path}: an allocation is an object of tiers — {how}")
    tiers = dict(Allocation.static_max(app).tiers)
    for name, t in data.items():
        try:
            tiers[name] = TierAllocation(float(t["cpu"]), int(t.get("replicas", 1)))
        except (KeyError, TypeError, ValueError) as e:
            raise LeanstackError(f"{path}: tier '{name}': bad or missing {e} — {how}") from None
    alloc = Allocation(tiers)
    check_allocation(app, alloc)
    return alloc


class KubernetesBackend:
    """Runs an app on a Kubernetes cluster (see the module docstring).

    No load generator: the load is the cluster's real traffic (or one the user runs), so
    ``start`` only starts the clock and observations report what arrived.
    """

    name = "k8s"

    def __init__(self, interval_s: float = 5.0, prometheus: str = "http://127.0.0.1:9090",
                 namespace: str = DEFAULT_NAMESPACE, image: str = DEFAULT_IMAGE,
                 keep: bool = False, adopt: bool = False, kubeconfig: str | None = None,
                 context: str | None = None, api_url: str | None = None,
                 scrape_s: float = 5.0, timeout_s: float = 10.0, retries: int = 4,
                 ready_timeout_s: float = 300.0, otlp_listen: str | None = None,
                 otlp_endpoint: str | None = None) -> None:
        """``otlp_listen`` (``HOST:PORT``): receive the workers' spans there; ``otlp_endpoint``:
        the URL the applied workers send them to (when ``deploy`` applies the app)."""
        if not interval_s > 0:
            raise LeanstackError(f"interval must be above 0 seconds, got {interval_s}")
        self.interval_s = float(interval_s)
        self.namespace = k8s_name(namespace)
        self.opts = ExportOptions(image=image, namespace=self.namespace,
                                  otlp_endpoint=otlp_endpoint)
        self.otlp_listen = _host_port(otlp_listen) if otlp_listen is not None else None
        self.receiver: OtlpReceiver | None = None
        self._last_spans: list[Span] = []
        self.keep, self.adopt = keep, adopt
        self.prometheus = PrometheusClient(prometheus)
        self.scrape_s = scrape_s
        self.timeout_s, self.retries, self.ready_timeout_s = timeout_s, retries, ready_timeout_s
        self._api = _api_client(kubeconfig, context, api_url)
        self.app: AppSpec | None = None
        self.allocation: Allocation | None = None
        self.applied: list[tuple[str, str]] = []  # (collection path, name), in apply order
        self.resize_supported = False
        self.server_version = (0, 0)
        self._observer: PrometheusObserver | None = None
        self._t0 = 0.0
        self._last_end = 0.0
        self._index = 0
        self._closed = False

    # --- Backend protocol ---------------------------------------------------------------------

    def deploy(self, app: AppSpec, allocation: Allocation) -> None:
        """Apply the app's objects (or adopt a running one) and wait until every tier is ready."""
        if self.app is not None:
            raise LeanstackError("this KubernetesBackend is already deployed — create a new one")
        check_allocation(app, allocation)
        names = tier_names(app)
        self.server_version = self._version()
        self.resize_supported = self.server_version >= RESIZE_MIN_VERSION
        if self.otlp_listen is not None:  # listening before any pod starts sending
            self.receiver = OtlpReceiver(*self.otlp_listen)
        self.app = app
        if self.adopt:
            for tier in app.services:
                self._request("GET", self._deployment_path(names[tier]))
            self.allocation = self._current_allocation()
            self.set_allocation(allocation)
        else:
            try:
                self._apply(namespace_object(self.namespace))
                for obj in manifests(app, allocation, self.opts):
                    self._apply(obj)
            except BaseException:
                self.close()
                raise
            self.allocation = allocation
        self._wait_ready()
        names_by_pod = {n: t for t, n in names.items()}
        self._observer = PrometheusObserver(
            self.prometheus, app, selector=f'namespace="{self.namespace}"',
            cadvisor=self.namespace, pod_tier=lambda pod: _pod_tier(pod, names_by_pod))

    def start(self, load: LoadSpec | None = None) -> None:
        """Start the clock; the cluster's own traffic is the load (nothing is sent)."""
        self._deployed()
        self._t0 = self._last_end = time.time()
        self._index = 0

    def set_allocation(self, allocation: Allocation) -> None:
        """Scale replicas; resize pods in place (1.33+) or patch the pod template."""
        app = self._deployed()
        check_allocation(app, allocation)
        old = self.allocation
        for tier, ta in allocation.tiers.items():
            name = k8s_name(tier)
            before = old.tiers[tier] if old is not None else None
            if before is None or before.replicas != ta.replicas:
                self._request("PATCH", self._deployment_path(name) + "/scale",
                              {"spec": {"replicas": ta.replicas}}, MERGE)
            pod_cpu = ta.cpu / ta.replicas
            if before is not None and abs(before.cpu / before.replicas - pod_cpu) < 5e-4:
                continue
            if self.resize_supported:
                self._resize_pods(tier, pod_cpu)
            else:
                self._patch_template(tier, pod_cpu)
        self.allocation = allocation

    def observe(self) -> Observation:
        """Wait for the interval (and one scrape) to end; read its window from Prometheus."""
        app = self._deployed()
        if self._t0 == 0.0:
            self.start()
        t_end = self._t0 + (self._index + 1) * self.interval_s
        time.sleep(max(0.0, t_end + self.scrape_s - time.time()))
        self._index += 1
        window = self._observer.window(self._last_end, t_end)
        if self.receiver is not None:
            self._own_latencies(window.tiers, self._last_end, t_end)
        self._last_end = t_end
        if self.resize_supported:
            self._resize_new_pods()
        for tier, st in window.tiers.items():
            ta = self.allocation.tiers[tier]
            st.cpu_limit = ta.cpu
            if app.services[tier].is_storage:
                st.replicas = 1
        offered = sum(c.completed + c.errors for c in window.classes.values()) / self.interval_s
        return Observation(t=t_end - self._t0, interval_s=self.interval_s,
                           classes=window.classes, tiers=window.tiers, offered_rps=offered)

    def spans(self, since_ns: int = 0) -> list[Span]:
        """The spans the workers sent to the OTLP receiver that ended at or after ``since_ns``
        (none without ``otlp_listen``: the workers' span files stay in their pods)."""
        return self.receiver.spans(since_ns) if self.receiver is not None else []

    def close(self) -> None:
        """Delete every object ``deploy`` applied, newest first, unless ``keep`` (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.receiver is not None:
            self.receiver.close()
        if self.keep or self.adopt:
            return
        for collection, name in reversed(self.applied):
            with contextlib.suppress(LeanstackError):
                self._request("DELETE", f"{collection}/{name}",
                              query={"propagationPolicy": "Background"}, missing_ok=True)
        self.applied = []

    # --- internals ----------------------------------------------------------------------------

    def _deployed(self) -> AppSpec:
        if self.app is None or self._closed:
            raise LeanstackError("the k8s backend is not deployed (or already closed) — call "
                                 "deploy(app, allocation) first")
        return self.app

    def _own_latencies(self, tiers: dict[str, Any], t0: float, t1: float) -> None:
        """Each tier's own latency over ``(t0, t1]`` (wall seconds) from the received spans."""
        batch = [s for s in self.receiver.spans(int(t0 * 1e9)) if s.end_ns <= t1 * 1e9]
        own = own_latencies_ms(batch, self._last_spans)
        self._last_spans = batch
        for tier, values in own.items():
            if tier in tiers:
                tiers[tier].own_latency_ms = percentiles_ms(values)

    def _deployment_path(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    def _version(self) -> tuple[int, int]:
        info = self._request("GET", "/version")
        try:
            return int(info["major"]), int(re.match(r"\d+", info["minor"]).group())
        except (KeyError, TypeError, ValueError, AttributeError):
            raise LeanstackError(f"the API server's /version answer is not understood: "
                                 f"{str(info)[:120]}") from None

    def _apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply of one object; remember it for ``close``."""
        collection = _collection(obj)
        name = obj["metadata"]["name"]
        self._request("PATCH", f"{collection}/{name}", obj, APPLY,
                      query={"fieldManager": FIELD_MANAGER, "force": "true"})
        self.applied.append((collection, name))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = [k8s_name(t) for t in self.app.services]
        while pending:
            pending = [n for n in pending if not _ready(self._request(
                "GET", self._deployment_path(n)))]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LeanstackError(f"Deployment(s) {', '.join(pending)} not ready after "
                                     f"{self.ready_timeout_s:g} s — see 'kubectl -n "
                                     f"{self.namespace} describe deployment {pending[0]}'")
            time.sleep(1.0)

    def _current_allocation(self) -> Allocation:
        """The running Deployments' replicas and CPU limits (an adopted app)."""
        tiers = {}
        for tier in self.app.services:
            dep = self._request("GET", self._deployment_path(k8s_name(tier)))
            reps = int(dep["spec"].get("replicas", 1))
            limit = dep["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get(
                "limits", {}).get("cpu", "1")
            tiers[tier] = TierAllocation(cpu_cores(limit) * reps, max(reps, 1))
        return Allocation(tiers)

    def _pods(self, tier: str | None = None) -> list[dict[str, Any]]:
        sel = selector(self.app, tier) if tier else {"leanstack.io/app": k8s_name(self.app.name)}
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in sel.items())}
        out = self._request("GET", f"/api/v1/namespaces/{self.namespace}/pods", query=query)
        return [p for p in out.get("items", []) if not p["metadata"].get("deletionTimestamp")]

    def _resize_pods(self, tier: str, pod_cpu: float) -> None:
        for pod in self._pods(tier):
            self._resize(pod, pod_cpu)

    def _resize(self, pod: dict[str, Any], pod_cpu: float) -> None:
        container = pod["spec"]["containers"][0]["name"]
        body = {"spec": {"containers": [{"name": container,
                                         "resources": resources(pod_cpu, self.opts)}]}}
        self._request("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/"
                      f"{pod['metadata']['name']}/resize", body, STRATEGIC)

    def _resize_new_pods(self) -> None:
        """Pods the ReplicaSet started from the template since: bring them to the allocation."""
        names = {k8s_name(t): t for t in self.app.services}
        for pod in self._pods():
            tier = names.get(pod["metadata"].get("labels", {}).get("leanstack.io/tier", ""))
            if tier is None:
                continue
            ta = self.allocation.tiers[tier]
            want = millicores(ta.cpu / ta.replicas)
            have = pod["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("cpu")
            if have is not None and cpu_cores(have) != cpu_cores(want):
                self._resize(pod, ta.cpu / ta.replicas)

    def _patch_template(self, tier: str, pod_cpu: float) -> None:
        container = "storage" if self.app.services[tier].is_storage else "worker"
        body = {"spec": {"template": {"spec": {"containers": [
            {"name": container, "resources": resources(pod_cpu, self.opts)}]}}}}
        self._request("PATCH", self._deployment_path(k8s_name(tier)), body, STRATEGIC)

    def _request(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                 query: dict[str, str] | None = None, missing_ok: bool = False) -> dict[str, Any]:
        """One API call with retries and one-line errors; the answer's JSON."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        url_path = path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        what = f"{method} {path}"
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                params = self._api.param_serialize(method, url_path, header_params=headers,
                                                   body=body, auth_settings=["BearerToken"])
                resp = self._api.call_api(*params, _request_timeout=self.timeout_s)
                resp.read()
                status, data = resp.status, resp.data
            except ApiException as e:
                status, data = e.status or 0, (e.body or "").encode()
            except (Urllib3Error, OSError) as e:
                status, data = 0, str(e).encode()
            if 200 <= status < 300:
                return json.loads(data) if data else {}
            if status == 404 and missing_ok:
                return {}
            retriable = status == 0 or status in RETRY_STATUSES
            if not retriable or attempt == self.retries:
                raise LeanstackError(_explain(what, status, data, self.namespace,
                                              attempt + 1))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


def _explain(what: str, status: int, data: bytes, namespace: str, attempts: int) -> str:
    """One line for a failed API call: what was asked, what the server said, what to do."""
    try:
        message = json.loads(data).get("message", "")
    except (ValueError, AttributeError):
        message = data.decode(errors="replace")[:160]
    fixes = {
        0: "check that the API server is reachable (kubeconfig server, network)",
        401: "the credentials were refused — refresh your kubeconfig",
        403: f"the user or service account lacks this permission in namespace '{namespace}' — "
             "grant it (RBAC: deployments, deployments/scale, pods, pods/resize, services, "
             "configmaps)",
        404: f"no such object — deploy the app first, or check --namespace ({namespace})",
        409: "another writer keeps changing this object — retry later",
        422: "the server rejected the object — check the app file and the cluster version",
    }
    fix = fixes.get(status, "see the API server's message")
    where = "no answer" if status == 0 else f"HTTP {status}"
    tries = f" after {attempts} tries" if attempts > 1 else ""
    return f"Kubernetes API {what}: {where}{tries}: {message.strip() or '-'} — {fix}"


def _api_client(kubeconfig: str | None, context: str | None, api_url: str | None) -> Any:
    """An official-client ApiClient: ``api_url`` as given, in-cluster, or from a kubeconfig."""
    from kubernetes import client, config

    if api_url is not None:
        return client.ApiClient(client.Configuration(host=api_url.rstrip("/")))
    if kubeconfig is None and context is None:
        with contextlib.suppress(config.ConfigException):
            config.load_incluster_config()
            return client.ApiClient()
    conf = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context,
                                client_configuration=conf)
    except (config.ConfigException, OSError, TypeError) as e:
        raise LeanstackError(f"no usable Kubernetes config ({e}) — pass --kubeconfig FILE, run "
                             "inside a pod, or set KUBECONFIG") from None
    return client.ApiClient(conf)


def _host_port(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``":PORT"``, every address) as ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise LeanstackError(f"--otlp-listen '{value}' is not HOST:PORT — give e.g. "
                             "0.0.0.0:4318")
    return host or "0.0.0.0", int(port)


def _collection(obj: dict[str, Any]) -> str:
    """The API path of the collection an object belongs to."""
    kind, ns = obj["kind"], obj["metadata"].get("namespace")
    plural = {"Namespace": "namespaces", "ConfigMap": "configmaps", "Service": "services",
              "Deployment": "deployments",
              "HorizontalPodAutoscaler": "horizontalpodautoscalers"}[kind]
    group = obj["apiVersion"]
    base = "/api/v1" if group == "v1" else f"/apis/{group}"
    return f"{base}/namespaces/{ns}/{plural}" if ns and kind != "Namespace" else f"{base}/{plural}"


def _ready(dep: dict[str, Any]) -> bool:
    want = dep.get("spec", {}).get("replicas", 1)
    st = dep.get("status", {})
    return st.get("readyReplicas", 0) >= want and st.get("updatedReplicas", want) >= want


def _pod_tier(pod: str, names: dict[str, str]) -> str | None:
    """The tier of a Deployment's pod ``<deployment>-<replicaset hash>-<pod hash>``."""
    m = re.fullmatch(r"(.+)-[a-z0-9]+-[a-z0-9]+", pod)
    return names.get(m.group(1)) if m else None


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (``"250m"``, ``"2"``, ``"0.5"``) in cores."""
    q = str(quantity).strip()
    try:
        return float(q[:-1]) / 1000 if q.endswith("m") else float(q)
    except ValueError:
        raise LeanstackError(f"CPU quantity '{quantity}' is not understood — use e.g. 250m or "
                             "0.5") from None
