"""Kubernetes manifests for an app: what ``leanstack micro export --to k8s DIR`` writes.

Per tier a Deployment (logic tiers run the worker command of the local backend, storage tiers the
official redis / memcached images) with CPU requests = limits from an allocation (the tier's cores
split over its replicas), and a Service for every tier that answers requests; one ConfigMap
holding the app (its JSON form), the ports and the peers' host names; one HorizontalPodAutoscaler
(autoscaling/v2) per logic tier with the targets of our HPA model; and a Prometheus scrape config
for the workers' ``/metrics`` and the kubelets' cAdvisor metrics. With an OTLP endpoint the
workers get ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and send their spans there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leanstack.atomic import write_bytes
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.controllers import (
    HPA_SCALE_UP_PERCENT,
    HPA_SCALE_UP_PERIOD_S,
    HPA_SCALE_UP_PODS,
    HPA_STABILIZATION_S,
    HPA_TARGET_UTILIZATION,
    hpa_start_replicas,
)
from leanstack.microservices.local import check_allocation
from leanstack.microservices.observation import Allocation
from leanstack.microservices.otlp import ENDPOINT_ENV
from leanstack.microservices.prometheus import duration

DEFAULT_IMAGE = "leanstack:0.1.0"
DEFAULT_NAMESPACE = "leanstack"
STORAGE_IMAGES = {"redis": "redis:7.2", "memcached": "memcached:1.6"}
SERVICE_PORTS = {"logic": 8080, "redis": 6379, "memcached": 11211}
METRICS_PORT = 9100
CONFIG_DIR = "/etc/leanstack"
RUN_DIR = "/var/run/leanstack"
PART_OF = "leanstack"
APP_LABEL = "leanstack.io/app"
TIER_LABEL = "leanstack.io/tier"
FIELD_MANAGER = "leanstack"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ExportOptions:
    """What a user may choose about the manifests."""

    image: str = DEFAULT_IMAGE
    namespace: str = DEFAULT_NAMESPACE
    hpa_min_replicas: int = 1
    hpa_max_replicas: int = 4
    hpa_target_utilization: float = HPA_TARGET_UTILIZATION
    memory_request: str = "128Mi"
    memory_limit: str = "512Mi"
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces URL the workers send their spans to (``None``: spans stay in the pod)."""


def k8s_name(name: str) -> str:
    """A tier or app name as a Kubernetes object name (DNS label: lowercase, ``-`` for ``_``)."""
    out = name.lower().replace("_", "-")
    if not _DNS_LABEL.fullmatch(out):
        raise LeanstackError(f"'{name}' cannot be a Kubernetes name (a DNS label: lowercase "
                             "letters, digits and '-', at most 63) — rename it in the app file")
    return out


def tier_names(app: AppSpec) -> dict[str, str]:
    """Tier -> object name; raises when two tiers would share one."""
    names = {t: k8s_name(t) for t in app.services}
    seen: dict[str, str] = {}
    for tier, n in names.items():
        if n in seen:
            raise LeanstackError(f"tiers '{seen[n]}' and '{tier}' both become '{n}' in "
                                 "Kubernetes — rename one in the app file")
        seen[n] = tier
    return names


def millicores(cores: float) -> str:
    """CPU as a Kubernetes quantity in millicores (at least 1m)."""
    return f"{max(1, round(cores * 1000))}m"


def config_map_name(app: AppSpec) -> str:
    return f"{k8s_name(app.name)}-app"


def labels(app: AppSpec, tier: str) -> dict[str, str]:
    """The labels every object of a tier carries (the selector uses the tier's two)."""
    return {"app.kubernetes.io/part-of": PART_OF, APP_LABEL: k8s_name(app.name),
            TIER_LABEL: k8s_name(tier)}


def selector(app: AppSpec, tier: str) -> dict[str, str]:
    return {APP_LABEL: k8s_name(app.name), TIER_LABEL: k8s_name(tier)}


def app_config(app: AppSpec, namespace: str) -> dict[str, Any]:
    """The ConfigMap: the app JSON, service ports and the peers' DNS names."""
    names = tier_names(app)
    ports = {t: SERVICE_PORTS["logic" if not s.is_storage else s.kind]
             for t, s in app.services.items()}
    hosts = {t: f"{names[t]}.{namespace}.svc" for t in app.services}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config_map_name(app), "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": PART_OF,
                                APP_LABEL: k8s_name(app.name)}},
        "data": {"app.json": json.dumps(app.to_data(), indent=1, sort_keys=True),
                 "ports.json": json.dumps(ports, sort_keys=True),
                 "hosts.json": json.dumps(hosts, sort_keys=True)},
    }


def worker_command(tier: str, otlp: bool = False) -> list[str]:
    """The container command of a logic tier: the local backend's worker, listening on all
    addresses, reading the app, ports and hosts from the ConfigMap; with ``otlp`` its spans go
    only to the OTLP endpoint (no span files growing in the pod)."""
    return ["python", "-m", "leanstack.microservices.worker",
            "--app", f"{CONFIG_DIR}/app.json", "--service", tier,
            "--port", str(SERVICE_PORTS["logic"]), "--admin-port", str(METRICS_PORT),
            "--run-dir", RUN_DIR, "--ports", f"{CONFIG_DIR}/ports.json",
            "--hosts", f"{CONFIG_DIR}/hosts.json", "--bind", "0.0.0.0",
            *(["--no-span-files"] if otlp else [])]


def resources(pod_cpu: float, opts: ExportOptions) -> dict[str, Any]:
    """Requests = limits (Guaranteed QoS for CPU, as CFS quota on the local backend)."""
    cpu = millicores(pod_cpu)
    return {"requests": {"cpu": cpu, "memory": opts.memory_request},
            "limits": {"cpu": cpu, "memory": opts.memory_limit}}


def deployment(app: AppSpec, tier: str, allocation: Allocation,
               opts: ExportOptions) -> dict[str, Any]:
    """The Deployment of one tier; pods get ``allocation`` cores / replicas each."""
    svc, ta = app.services[tier], allocation.tiers[tier]
    name = k8s_name(tier)
    container: dict[str, Any] = {
        "name": "storage" if svc.is_storage else "worker",
        "resources": resources(ta.cpu / ta.replicas, opts),
        "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
    }
    annotations: dict[str, str] = {}
    volumes: list[dict[str, Any]] = []
    if svc.is_storage:
        port = SERVICE_PORTS[svc.kind]
        container["image"] = STORAGE_IMAGES[svc.kind]
        container["args"] = (["--save", "", "--appendonly", "no"] if svc.kind == "redis"
                             else ["-t", "1", "-m", "64", "-c", "4096"])
        container["ports"] = [{"name": "data", "containerPort": port}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 2}
    else:
        container["image"] = opts.image
        container["command"] = worker_command(tier, otlp=opts.otlp_endpoint is not None)
        if opts.otlp_endpoint is not None:
            container["env"] = [{"name": ENDPOINT_ENV, "value": opts.otlp_endpoint}]
        container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT}]
        if svc.queue is None:
            container["ports"].insert(0, {"name": "http",
                                          "containerPort": SERVICE_PORTS["logic"]})
        container["readinessProbe"] = {"httpGet": {"path": "/health", "port": METRICS_PORT},
                                       "periodSeconds": 2}
        container["volumeMounts"] = [{"name": "app", "mountPath": CONFIG_DIR, "readOnly": True},
                                     {"name": "run", "mountPath": RUN_DIR}]
        volumes = [{"name": "app", "configMap": {"name": config_map_name(app)}},
                   {"name": "run", "emptyDir": {}}]
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                       "prometheus.io/path": "/metrics"}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if volumes:
        pod_spec["volumes"] = volumes
    template: dict[str, Any] = {"metadata": {"labels": labels(app, tier)}, "spec": pod_spec}
    if annotations:
        template["metadata"]["annotations"] = annotations
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": labels(app, tier)},
        "spec": {"replicas": ta.replicas, "selector": {"matchLabels": selector(app, tier)},
                 "template": template},
    }


def service(app: AppSpec, tier: str, namespace: str) -> dict[str, Any] | None:
    """A ClusterIP Service for a tier that answers requests (``None`` for queue-fed tiers)."""
    svc = app.services[tier]
    if not svc.is_storage and svc.queue is not None:
        return None
    port = SERVICE_PORTS["logic" if not svc.is_storage else svc.kind]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": k8s_name(tier), "namespace": namespace,
                     "labels": labels(app, tier)},
        "spec": {"selector": selector(app, tier),
                 "ports": [{"name": "http" if not svc.is_storage else "data", "port": port,
                            "targetPort": port}]},
    }


def hpa(app: AppSpec, tier: str, opts: ExportOptions) -> dict[str, Any]:
    """An autoscaling/v2 HPA with the targets of :class:`HPAController`: CPU utilisation of the
    request, scale-down stabilisation 5 min, scale-up max(4 pods, 100%) per 15 s."""
    period = round(HPA_SCALE_UP_PERIOD_S)
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": k8s_name(tier), "namespace": opts.namespace,
                     "labels": labels(app, tier)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": k8s_name(tier)},
            "minReplicas": opts.hpa_min_replicas, "maxReplicas": opts.hpa_max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization",
                "averageUtilization": round(opts.hpa_target_utilization * 100)}}}],
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": round(HPA_STABILIZATION_S),
                              "policies": [{"type": "Percent", "value": 100,
                                            "periodSeconds": period}]},
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                            "policies": [{"type": "Pods", "value": HPA_SCALE_UP_PODS,
                                          "periodSeconds": period},
                                         {"type": "Percent", "value": round(HPA_SCALE_UP_PERCENT),
                                          "periodSeconds": period}]},
            },
        },
    }


def hpa_allocation(app: AppSpec, opts: ExportOptions) -> Allocation:
    """The HPA model's pods: ``max_cpu / max_replicas`` cores each, as many as
    :class:`HPAController` starts with (:func:`hpa_start_replicas`), not the app's replicas."""
    alloc = Allocation.static_max(app)
    for tier, svc in app.services.items():
        if svc.scalable:
            reps = hpa_start_replicas(svc.replicas, opts.hpa_min_replicas, opts.hpa_max_replicas)
            alloc = alloc.with_tier(tier, cpu=svc.max_cpu / opts.hpa_max_replicas * reps,
                                    replicas=reps)
    return alloc


def namespace_object(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": PART_OF}}}


def manifests(app: AppSpec, allocation: Allocation | None = None,
              opts: ExportOptions | None = None) -> list[dict[str, Any]]:
    """Every object of the app, in apply order (ConfigMap, Services, Deployments); no HPA."""
    opts = opts or ExportOptions()
    allocation = allocation or Allocation.static_max(app)
    check_allocation(app, allocation)
    tier_names(app)
    k8s_name(opts.namespace)
    if opts.otlp_endpoint is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?",
                                                           opts.otlp_endpoint):
        raise LeanstackError(f"OTLP endpoint '{opts.otlp_endpoint}' is not an http(s) URL — give "
                             "e.g. http://collector.monitoring.svc:4318/v1/traces")
    out = [app_config(app, opts.namespace)]
    out += [s for t in app.services if (s := service(app, t, opts.namespace)) is not None]
    out += [deployment(app, t, allocation, opts) for t in app.services]
    return out


def hpas(app: AppSpec, opts: ExportOptions | None = None) -> list[dict[str, Any]]:
    """One HPA per logic tier."""
    opts = opts or ExportOptions()
    return [hpa(app, t, opts) for t, s in app.services.items() if s.scalable]


def scrape_config(namespace: str = DEFAULT_NAMESPACE, interval_s: float = 5.0) -> dict[str, Any]:
    """A Prometheus config scraping the workers (pods annotated ``prometheus.io/scrape``) and
    the kubelets' cAdvisor (container CPU, throttling, memory), from inside the cluster."""
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    return {
        "global": {"scrape_interval": duration(interval_s),
                   "evaluation_interval": duration(interval_s)},
        "scrape_configs": [
            {"job_name": "leanstack-workers",
             "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
             "relabel_configs": [
                 {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                  "action": "keep", "regex": "true"},
                 {"source_labels": ["__address__",
                                    "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                  "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)",
                  "replacement": "$1:$2", "target_label": "__address__"},
                 {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                 {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
             ]},
            {"job_name": "kubernetes-cadvisor", "scheme": "https",
             "metrics_path": "/metrics/cadvisor",
             "tls_config": {"ca_file": f"{sa}/ca.crt"},
             "authorization": {"credentials_file": f"{sa}/token"},
             "kubernetes_sd_configs": [{"role": "node"}],
             "metric_relabel_configs": [
                 {"source_labels": ["namespace"], "action": "keep", "regex": namespace}]},
        ],
    }


def write_manifests(app: AppSpec, out_dir: str | Path, allocation: Allocation | None = None,
                    opts: ExportOptions | None = None) -> list[Path]:
    """Write the app's manifests to ``out_dir`` (``kubectl apply -f DIR`` applies them all but
    ``hpa/``); return the files written."""
    opts = opts or ExportOptions()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LeanstackError(f"{out} is a file — give a directory to export into")
    objs = manifests(app, allocation, opts)
    files: dict[str, list[dict[str, Any]]] = {"00-namespace.yaml": [namespace_object(
        opts.namespace)], "01-config.yaml": [objs[0]]}
    for obj in objs[1:]:
        files.setdefault(f"{obj['metadata']['name']}.yaml", []).append(obj)
    files["hpa/hpa.yaml"] = hpas(app, opts)
    written = []
    for name, docs in files.items():
        text = yaml.safe_dump_all(docs, sort_keys=False)
        written.append(write_bytes(out / name, text.encode()))
    prom = yaml.safe_dump(scrape_config(opts.namespace), sort_keys=False)
    written.append(write_bytes(out / "prometheus" / "prometheus.yml", prom.encode()))
    return written


def read_manifests(directory: str | Path) -> list[dict[str, Any]]:
    """Every Kubernetes object in the ``*.yaml`` files under ``directory`` (not Prometheus')."""
    objs = []
    for path in sorted(Path(directory).rglob("*.yaml")):
        objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return objs
