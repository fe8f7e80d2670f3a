"""Kubernetes manifests: every shipped app validates against every supported version's schema."""

import json
import shutil
import subprocess

import pytest
import yaml
from tests._require import require

from leanstack.errors import LeanstackError
from leanstack.microservices.app import app_names, load_app, parse_app
from leanstack.microservices.controllers import HPA_STABILIZATION_S, HPAController
from leanstack.microservices.k8s.manifests import (
    ExportOptions,
    deployment,
    hpas,
    k8s_name,
    manifests,
    read_manifests,
    write_manifests,
)
from leanstack.microservices.k8s.validate import (
    check_manifests,
    supported_versions,
    validate_object,
    validation_matrix,
)
from leanstack.microservices.observation import Allocation

from .helpers import run_cli


def test_supported_versions_start_at_1_30_and_reach_the_newest_shipped():
    from kubernetes_validate.utils import latest_version

    versions = supported_versions()
    assert versions[0] == "1.30"
    assert versions[-1] == ".".join(latest_version().split(".")[:2])
    assert len(versions) >= 7


@pytest.mark.parametrize("name", app_names())
def test_every_shipped_app_validates_in_every_version(name, tmp_path):
    app = load_app(name)
    write_manifests(app, tmp_path, opts=ExportOptions(image="registry.example/leanstack:1"))
    objs = read_manifests(tmp_path)
    kinds = {o["kind"] for o in objs}
    assert kinds == {"Namespace", "ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler"}
    matrix = validation_matrix(objs)
    assert set(matrix) == set(supported_versions())
    failures = [(v, ref, e) for v, r in matrix.items() for ref, e in r.items() if e]
    assert failures == []
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    assert len(deployments) == len(app.services)
    # the app in the ConfigMap is the app itself
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert parse_app(json.loads(cm["data"]["app.json"])).to_data() == app.to_data()


def test_strict_schemas_catch_bad_fields_and_types():
    app = load_app("social-network")
    good = deployment(app, "nginx", Allocation.static_max(app), ExportOptions())
    assert validate_object(good, "1.30") is None
    bad = json.loads(json.dumps(good))
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["cpus"] = "1"
    assert "unexpected" in validate_object(bad, "1.30")
    bad = json.loads(json.dumps(good))
    bad["spec"]["replicas"] = "two"
    assert "replicas" in validate_object(bad, "1.37")
    with pytest.raises(LeanstackError, match="not valid in Kubernetes 1.30"):
        check_manifests([bad], ["1.30"])


def test_logic_tier_runs_the_worker_with_the_allocation_split_over_replicas():
    app = load_app("social-network")
    alloc = Allocation.static_max(app).with_tier("text", cpu=1.5, replicas=3)
    dep = deployment(app, "text", alloc, ExportOptions(image="img:tag"))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "img:tag"
    assert c["command"][:3] == ["python", "-m", "leanstack.microservices.worker"]
    assert c["command"][c["command"].index("--service") + 1] == "text"
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "500m"
    assert dep["spec"]["replicas"] == 3
    store = deployment(app, "user-store", alloc, ExportOptions())
    assert store["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        ("redis", "memcached"))


def test_hpa_objects_carry_the_targets_of_our_hpa_model():
    app = load_app("social-network")
    model = HPAController()
    objs = hpas(app)
    assert {o["metadata"]["name"] for o in objs} == {
        k8s_name(t) for t, s in app.services.items() if s.scalable}
    spec = objs[0]["spec"]
    target = spec["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": round(model.target * 100)}
    assert spec["maxReplicas"] == model.max_replicas and spec["minReplicas"] == model.min_replicas
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == HPA_STABILIZATION_S
    ups = {p["type"]: p["value"] for p in spec["behavior"]["scaleUp"]["policies"]}
    assert ups == {"Pods": 4, "Percent": 100}


def test_names_that_cannot_be_kubernetes_names_are_one_line_errors():
    with pytest.raises(LeanstackError, match="DNS label"):
        k8s_name("-bad")
    toml = {"name": "x", "services": {"a_b": {"endpoints": {"e": {"cpu_ms": 1}}},
                                      "a-b": {"endpoints": {"e": {"cpu_ms": 1}}}},
            "classes": {"c": {"entry": "a_b.e", "weight": 1,
                                  "sla": {"percentile": 99, "ms": 10}}}}
    with pytest.raises(LeanstackError, match="both become 'a-b'"):
        manifests(parse_app(toml))


def test_cli_export_writes_valid_manifests_and_a_prometheus_config(monkeypatch, capsys, tmp_path):
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "export", "--app", "video-pipeline",
                           "--to", "k8s", str(tmp_path / "m"), "--namespace", "shop")
    assert rc == 0, err
    assert "valid in Kubernetes 1.30" in out
    objs = read_manifests(tmp_path / "m")
    assert {o["metadata"].get("namespace", "shop") for o in objs} == {"shop"}
    prom = tmp_path / "m" / "prometheus" / "prometheus.yml"
    assert "leanstack-workers" in prom.read_text()
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "export", "--app", "video-pipeline",
                           "--to", "helm", str(tmp_path / "n"))
    assert rc != 0 and "--to k8s" in err


def test_prometheus_scrape_config_passes_promtool(tmp_path):
    """Everything but the discovery: Debian's prometheus is built without Kubernetes service
    discovery, so ``kubernetes_sd_configs`` is swapped for file discovery here."""
    require(shutil.which("promtool") is None and "promtool",
            "run scripts/system-deps.sh (Debian package 'prometheus')")
    write_manifests(load_app("hotel-reservation"), tmp_path)
    cfg = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["leanstack-workers",
                                                              "kubernetes-cadvisor"]
    for job in cfg["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
        if "authorization" in job:  # the in-cluster token and CA exist only in a pod
            job["authorization"]["credentials_file"] = str(tmp_path / "token")
            job["tls_config"]["ca_file"] = str(tmp_path / "ca.crt")
    checked = tmp_path / "checked.yml"
    checked.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(["promtool", "check", "config", "--syntax-only", str(checked)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_export_pod_sizes_from_an_allocation_file_or_the_hpa_model(monkeypatch, capsys,
                                                                      tmp_path):
    good = tmp_path / "alloc.json"
    good.write_text(json.dumps({"upload": {"cpu": 0.6, "replicas": 3}}))
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "export", "--app", "video-pipeline",
                           str(tmp_path / "a"), "--allocation", str(good))
    assert rc == 0, err
    dep = next(o for o in read_manifests(tmp_path / "a")
               if o["kind"] == "Deployment" and o["metadata"]["name"] == "upload")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "200m"
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "export", "--app", "video-pipeline",
                           str(tmp_path / "h"), "--hpa-pods")
    assert rc == 0, err
    app = load_app("video-pipeline")
    dep = next(o for o in read_manifests(tmp_path / "h")
               if o["kind"] == "Deployment" and o["metadata"]["name"] == "upload")
    pod_cpu = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert pod_cpu == f"{round(app.services['upload'].max_cpu / 4 * 1000)}m"
    # every logic tier starts with the pods the HPA model starts with, not the app's replicas
    hpa_start = HPAController().reset(app, 1.0)
    deps = {o["metadata"]["name"]: o for o in read_manifests(tmp_path / "h")
            if o["kind"] == "Deployment"}
    for tier, svc in app.services.items():
        want = hpa_start.tiers[tier].replicas if svc.scalable else svc.replicas
        assert deps[tier]["spec"]["replicas"] == want, tier
    assert any(deps[t]["spec"]["replicas"] != s.replicas
               for t, s in app.services.items() if s.scalable)
    for text, message in (("[1]", "an object of tiers"), ('{"upload": {"replicas": 2}}',
                                                          "bad or missing 'cpu'"),
                          ('{"upload": {"cpu": 0.001}}', "0.01-core minimum"),
                          ('{"nope": {"cpu": 1}}', "unknown tier")):
        good.write_text(text)
        rc, out, err = run_cli(monkeypatch, capsys, "micro", "export", "--app",
                               "video-pipeline", str(tmp_path / "b"), "--allocation", str(good))
        assert rc == 2 and message in err, (text, err)
        assert len(err.strip().splitlines()) == 1
