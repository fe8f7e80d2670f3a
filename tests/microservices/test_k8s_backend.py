"""The Kubernetes backend against a FAKE API server (tests/microservices/k8s_fake.py: a real
loopback HTTP server implementing the few endpoints used, checking bodies against the schemas)."""

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app
from leanstack.microservices.k8s.backend import KubernetesBackend, cpu_cores
from leanstack.microservices.observation import Allocation
from leanstack.microservices.runner import make_backend

from .k8s_fake import FakeApiServer

APP = "video-pipeline"


def _backend(fake: FakeApiServer, **kw) -> KubernetesBackend:
    return make_backend("k8s", 1.0, api_url=fake.url, retries=kw.pop("retries", 2),
                        ready_timeout_s=5.0, **kw)


def _cpu(pod: dict) -> float:
    return cpu_cores(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("version", ["1.30", "1.33", "1.37"])
def test_deploy_applies_every_object_server_side_and_close_removes_them(version):
    app = load_app(APP)
    with FakeApiServer(version) as fake:
        b = _backend(fake)
        b.deploy(app, Allocation.static_max(app))
        applies = [r for r in fake.requests if r["method"] == "PATCH"]
        assert applies and all(r["content_type"] == "application/apply-patch+yaml"
                               and r["query"]["fieldManager"] == "leanstack" for r in applies)
        kinds = {k[0] for k in fake.objects}
        assert {"namespaces", "configmaps", "services", "deployments", "pods"} <= kinds
        assert b.resize_supported == (version >= "1.33")
        assert fake.violations == []
        b.close()
        assert fake.objects == {}  # nothing left applied (pods go with their Deployments)
        b.close()  # idempotent


def test_set_allocation_resizes_pods_in_place_on_1_33():
    app = load_app(APP)
    with FakeApiServer("1.33") as fake:
        b = _backend(fake)
        alloc = Allocation.static_max(app)
        b.deploy(app, alloc)
        pods_before = [p["metadata"]["name"] for p in fake.pods("scene-split")]
        fake.requests.clear()
        new = alloc.with_tier("scene-split", cpu=0.3, replicas=alloc.tiers["scene-split"]
                              .replicas)
        b.set_allocation(new)
        assert [p["metadata"]["name"] for p in fake.pods("scene-split")] == pods_before
        per_pod = 0.3 / new.tiers["scene-split"].replicas
        assert all(abs(_cpu(p) - per_pod) < 1e-3 for p in fake.pods("scene-split"))
        patches = [r["path"] for r in fake.requests if r["method"] == "PATCH"]
        assert patches and all(p.endswith("/resize") for p in patches)  # no template change
        # scaling out: the new pod starts from the template and is resized when first seen
        more = new.with_tier("scene-split", cpu=0.6, replicas=new.tiers["scene-split"]
                             .replicas + 1)
        b.set_allocation(more)
        assert len(fake.pods("scene-split")) == more.tiers["scene-split"].replicas
        assert any(r["path"].endswith("/deployments/scene-split/scale") for r in fake.requests)
        b._resize_new_pods()
        want = 0.6 / more.tiers["scene-split"].replicas
        assert all(abs(_cpu(p) - want) < 1e-3 for p in fake.pods("scene-split"))
        assert fake.violations == []
        b.close()


def test_set_allocation_patches_the_template_before_1_33():
    app = load_app(APP)
    with FakeApiServer("1.32") as fake:
        b = _backend(fake)
        alloc = Allocation.static_max(app)
        b.deploy(app, alloc)
        fake.requests.clear()
        b.set_allocation(alloc.with_tier("upload", cpu=0.25))
        paths = [r["path"] for r in fake.requests]
        assert not any(p.endswith("/resize") for p in paths)
        assert any(p.endswith("/deployments/upload") for p in paths)
        assert all(abs(_cpu(p) - 0.25 / alloc.tiers["upload"].replicas) < 1e-3
                   for p in fake.pods("upload"))
        assert fake.violations == []
        b.close()


def test_conflicts_are_retried_and_forbidden_is_one_line():
    app = load_app(APP)
    with FakeApiServer("1.33") as fake:
        fake.fail("PATCH", r"/configmaps/", 409, times=2)
        b = _backend(fake, retries=3)
        b.deploy(app, Allocation.static_max(app))  # two conflicts, then success
        assert sum(r["path"].endswith("-app") for r in fake.requests) == 3
        fake.fail("PATCH", r"/scale$", 403, times=5)
        with pytest.raises(LeanstackError, match="HTTP 403.*lacks this permission") as e:
            b.set_allocation(Allocation.static_max(app).with_tier("upload", replicas=3))
        assert "\n" not in str(e.value)
        b.close()
        assert fake.objects == {}


def test_errors_after_retries_clean_up_what_was_applied():
    app = load_app(APP)
    with FakeApiServer("1.33") as fake:
        fake.fail("PATCH", r"/deployments/store-writer$", 503, times=10)
        b = _backend(fake, retries=1)
        with pytest.raises(LeanstackError, match="HTTP 503 after 2 tries"):
            b.deploy(app, Allocation.static_max(app))
        assert fake.objects == {}


def test_adopt_touches_only_scale_and_resize_and_leaves_the_app():
    app = load_app(APP)
    with FakeApiServer("1.33") as fake:
        owner = _backend(fake, keep=True)
        owner.deploy(app, Allocation.static_max(app))
        owner.close()
        n_objects = len(fake.objects)
        fake.requests.clear()
        b = _backend(fake, adopt=True)
        b.deploy(app, Allocation.static_max(app).with_tier("upload", cpu=0.5))
        assert not any(r["content_type"] == "application/apply-patch+yaml"
                       for r in fake.requests)
        b.close()
        assert len(fake.objects) == n_objects
    with FakeApiServer("1.33") as empty, pytest.raises(LeanstackError,
                                                       match="HTTP 404.*deploy the app first"):
        _backend(empty, adopt=True).deploy(app, Allocation.static_max(app))


def test_unreachable_api_server_is_one_line():
    b = make_backend("k8s", 1.0, api_url="http://127.0.0.1:9", retries=0, timeout_s=1.0)
    with pytest.raises(LeanstackError, match="no answer.*reachable"):
        b.deploy(load_app(APP), Allocation.static_max(load_app(APP)))


def test_the_fake_rejects_what_the_schemas_reject():
    """The fake is only useful if it would catch a malformed request: a Deployment with an
    unknown field is answered 422 and recorded, and the backend reports it in one line."""
    app = load_app(APP)
    with FakeApiServer("1.30") as fake:
        b = _backend(fake)
        b.deploy(app, Allocation.static_max(app))
        bad = fake.objects[("deployments", "leanstack", "upload")].copy()
        bad = {k: v for k, v in bad.items() if k != "status"}
        bad["spec"] = {**bad["spec"], "replicaCount": 2}
        with pytest.raises(LeanstackError, match="HTTP 422.*replicaCount"):
            b._apply(bad)
        assert any("replicaCount" in v for v in fake.violations)
        b.close()
