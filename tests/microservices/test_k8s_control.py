"""``leanstack micro control``: the control loop against a cluster with no load generator (the
API server is the FAKE of k8s_fake.py; Prometheus is the real Debian binary)."""

import json
import shutil

import pytest
from tests._require import require

from leanstack.microservices.app import load_app
from leanstack.microservices.observation import Allocation
from leanstack.microservices.prometheus import PrometheusServer
from leanstack.microservices.runner import make_backend

from .helpers import run_cli
from .k8s_fake import FakeApiServer


@pytest.fixture(scope="module")
def prometheus():
    require(shutil.which("prometheus") is None and "prometheus",
            "run scripts/system-deps.sh (Debian package 'prometheus')")
    with PrometheusServer(scrape_s=0.25) as prom:
        prom.start({})
        yield prom


def _control(monkeypatch, capsys, fake, prom, out, *extra):
    return run_cli(monkeypatch, capsys, "micro", "control", "--app", "video-pipeline",
                   "--backend", "k8s", "--controller", "hpa", "--opt", "time_scale=0.01",
                   "--api-url", fake.url, "--prometheus", prom.url, "--interval", "0.5",
                   "--scrape", "0.1", "--duration", "2", "--out", str(out), *extra)


def test_control_drives_an_adopted_deployment_and_leaves_it(monkeypatch, capsys, tmp_path,
                                                            prometheus):
    app = load_app("video-pipeline")
    with FakeApiServer("1.33") as fake:
        owner = make_backend("k8s", 1.0, api_url=fake.url, keep=True)
        owner.deploy(app, Allocation.static_max(app))
        owner.close()
        before = set(fake.objects)
        fake.requests.clear()
        rc, out, err = _control(monkeypatch, capsys, fake, prometheus, tmp_path / "r.json")
        assert rc == 0, err
        result = json.loads((tmp_path / "r.json").read_text())
        assert result["backend"] == "k8s" and result["controller"] == "hpa"
        assert len(result["timeline"]) == 4 and result["completed"]
        # adopted: nothing applied, nothing deleted; HPA acted through scale/resize only
        assert not any(r["method"] in ("DELETE",) or r["content_type"] ==
                       "application/apply-patch+yaml" for r in fake.requests)
        patched = {r["path"].rsplit("/", 1)[-1] for r in fake.requests if r["method"] == "PATCH"}
        assert patched <= {"scale", "resize"} and patched
        assert set(fake.objects) >= {k for k in before if k[0] != "pods"}
        assert fake.violations == []


def test_control_with_deploy_removes_the_app_unless_kept(monkeypatch, capsys, tmp_path,
                                                         prometheus):
    with FakeApiServer("1.31") as fake:
        rc, out, err = _control(monkeypatch, capsys, fake, prometheus, tmp_path / "a.json",
                                "--deploy")
        assert rc == 0, err
        assert fake.objects == {}
        rc, out, err = _control(monkeypatch, capsys, fake, prometheus, tmp_path / "b.json",
                                "--deploy", "--keep")
        assert rc == 0, err
        assert any(k[0] == "deployments" for k in fake.objects)
        assert fake.violations == []


def test_control_errors_are_one_line(monkeypatch, capsys, tmp_path, prometheus):
    with FakeApiServer("1.33") as fake:
        rc, out, err = _control(monkeypatch, capsys, fake, prometheus, tmp_path / "c.json")
        assert rc == 2 and "HTTP 404" in err and "deploy the app first" in err
        assert len(err.strip().splitlines()) == 1
        rc, out, err = _control(monkeypatch, capsys, fake, prometheus, tmp_path / "d.json",
                                "--keep")
        assert rc == 2 and "--keep only applies with --deploy" in err
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "run", "--app", "video-pipeline",
                           "--backend", "k8s", "--out", str(tmp_path / "e.json"))
    assert rc == 2 and "micro control" in err
