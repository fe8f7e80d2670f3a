"""A FAKE Kubernetes API server for tests: no kube-apiserver can run on these machines.

It is a real HTTP server on 127.0.0.1 that implements only the endpoints the Kubernetes backend
uses, following the API's recorded contract: ``GET /version``; server-side apply (PATCH with
``application/apply-patch+yaml`` and a ``fieldManager``) of namespaces, configmaps, services and
deployments; ``GET`` of a deployment; merge-patch of ``deployments/{name}/scale``; strategic
merge of a deployment's pod template and of ``pods/{name}/resize`` (only from 1.33, as in real
clusters, where older servers answer 404); ``GET`` of pods by label selector; ``DELETE``.
Every object it stores and every Scale/Pod it produces is checked against the official schema of
its configured version; a request that does not fit is answered 422 and recorded in
``violations``. Every request is recorded. ``fail(method, path_regex, status, times)`` makes the
next matching requests fail, to test retries and errors.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leanstack.microservices.k8s.validate import validate_object

_OBJ = re.compile(r"^(?:/api/v1|/apis/(?P<group>[^/]+/[^/]+))"
                  r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?"
                  r"(?:/(?P<sub>scale|resize))?$")
_KINDS = {"namespaces": "Namespace", "configmaps": "ConfigMap", "services": "Service",
          "deployments": "Deployment", "pods": "Pod"}


class FakeApiServer:
    """See the module docstring. ``version`` is the Kubernetes minor version it pretends to be."""

    def __init__(self, version: str = "1.33") -> None:
        self.version = version
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.requests: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._failures: list[list[Any]] = []
        self._pod_seq = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, method: str, path_regex: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status``."""
        self._failures.append([method, re.compile(path_regex), status, times])

    def pods(self, deployment: str) -> list[dict[str, Any]]:
        return [o for (p, _, n), o in sorted(self.objects.items())
                if p == "pods" and n.startswith(f"{deployment}-")]

    # --- request handling ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], ctype: str,
               body: Any) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query,
                                  "content_type": ctype, "body": body})
            for f in self._failures:
                if f[0] == method and f[1].search(path) and f[3] > 0:
                    f[3] -= 1
                    return f[2], _status(f[2], "injected failure")
            if path == "/version":
                major, minor = self.version.split(".")
                return 200, {"major": major, "minor": minor,
                             "gitVersion": f"v{self.version}.0"}
            m = _OBJ.match(path)
            if m is None:
                return 404, _status(404, f"the fake serves no {path}")
            plural, ns, name, sub = m["plural"], m["ns"] or "", m["name"], m["sub"]
            key = (plural, ns, name)
            if method == "PATCH" and sub is None and ctype == "application/apply-patch+yaml":
                return self._apply(key, query, body)
            if method == "GET" and name is None and plural == "pods":
                return 200, self._list_pods(ns, query.get("labelSelector", ""))
            if key not in self.objects:
                return 404, _status(404, f'{plural} "{name}" not found')
            obj = self.objects[key]
            if method == "GET" and sub is None:
                return 200, obj
            if method == "DELETE":
                del self.objects[key]
                if plural == "deployments":
                    for pod in self.pods(name):
                        del self.objects[("pods", ns, pod["metadata"]["name"])]
                return 200, _status(200, "deleted")
            if method == "PATCH" and sub == "scale" and ctype == "application/merge-patch+json":
                return self._scale(obj, body)
            if method == "PATCH" and sub == "resize":
                if _minor(self.version) < 33:
                    return 404, _status(404, "the server could not find the requested resource")
                return self._resize(obj, body, ctype)
            if (method == "PATCH" and sub is None and plural == "deployments"
                    and ctype == "application/strategic-merge-patch+json"):
                return self._patch_template(obj, body)
            return 405, _status(405, f"{method} {path} ({ctype}) is not part of the contract")

    def _check(self, obj: dict[str, Any]) -> str | None:
        error = validate_object(obj, self.version)
        if error is not None:
            self.violations.append(f"{obj.get('kind')}/{obj['metadata'].get('name')}: {error}")
        return error

    def _apply(self, key: tuple[str, str, str], query: dict[str, str],
               body: Any) -> tuple[int, dict[str, Any]]:
        if not query.get("fieldManager"):
            self.violations.append(f"apply of {key} without fieldManager")
            return 422, _status(422, "fieldManager is required for apply patch")
        if not isinstance(body, dict) or body.get("kind") != _KINDS.get(key[0]) or \
                body.get("metadata", {}).get("name") != key[2]:
            self.violations.append(f"apply body does not match {key}")
            return 422, _status(422, "apply body does not match the URL")
        error = self._check(body)
        if error is not None:
            return 422, _status(422, error)
        obj = copy.deepcopy(body)
        self.objects[key] = obj
        if key[0] == "deployments":
            self._reconcile(obj)
        return 200, obj

    def _scale(self, dep: dict[str, Any], body: Any) -> tuple[int, dict[str, Any]]:
        replicas = (body or {}).get("spec", {}).get("replicas")
        scale = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                 "metadata": {"name": dep["metadata"]["name"],
                              "namespace": dep["metadata"]["namespace"]},
                 "spec": {"replicas": replicas}}
        error = self._check(scale)
        if error is not None or replicas is None:
            return 422, _status(422, error or "spec.replicas missing")
        dep["spec"]["replicas"] = replicas
        self._reconcile(dep)
        scale["status"] = {"replicas": replicas}
        return 200, scale

    def _patch_template(self, dep: dict[str, Any], body: Any) -> tuple[int, dict[str, Any]]:
        new = copy.deepcopy(dep)
        containers = new["spec"]["template"]["spec"]["containers"]
        for patch in body["spec"]["template"]["spec"]["containers"]:
            target = next((c for c in containers if c["name"] == patch["name"]), None)
            if target is None:
                return 422, _status(422, f"no container {patch['name']}")
            target.update(patch)
        error = self._check(new)
        if error is not None:
            return 422, _status(422, error)
        dep.clear()
        dep.update(new)
        for pod in self.pods(dep["metadata"]["name"]):  # a rolling update replaces the pods
            del self.objects[("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])]
        self._reconcile(dep)
        return 200, dep

    def _resize(self, pod: dict[str, Any], body: Any,
                ctype: str) -> tuple[int, dict[str, Any]]:
        if ctype != "application/strategic-merge-patch+json":
            return 415, _status(415, f"resize takes a strategic merge patch, not {ctype}")
        new = copy.deepcopy(pod)
        for patch in body["spec"]["containers"]:
            target = next((c for c in new["spec"]["containers"] if c["name"] == patch["name"]),
                          None)
            if target is None or set(patch) - {"name", "resources"}:
                return 422, _status(422, "resize may change containers' resources only")
            target["resources"] = patch["resources"]
        error = self._check(new)
        if error is not None:
            return 422, _status(422, error)
        pod.clear()
        pod.update(new)
        return 200, pod

    def _reconcile(self, dep: dict[str, Any]) -> None:
        """What the controllers would do: run ``replicas`` pods from the template, all ready."""
        name, ns = dep["metadata"]["name"], dep["metadata"]["namespace"]
        pods = self.pods(name)
        want = dep["spec"].get("replicas", 1)
        for pod in pods[want:]:
            del self.objects[("pods", ns, pod["metadata"]["name"])]
        for _ in range(want - len(pods)):
            self._pod_seq += 1
            pod_name = f"{name}-5d9c7b{self._pod_seq % 10}f8-x{self._pod_seq:04d}"
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod_name, "namespace": ns,
                                "labels": copy.deepcopy(dep["spec"]["template"]["metadata"]
                                                        ["labels"])},
                   "spec": copy.deepcopy(dep["spec"]["template"]["spec"])}
            self._check(pod)
            self.objects[("pods", ns, pod_name)] = pod
        dep["status"] = {"replicas": want, "readyReplicas": want, "updatedReplicas": want}

    def _list_pods(self, ns: str, selector: str) -> dict[str, Any]:
        wanted = dict(p.split("=", 1) for p in selector.split(",") if p)
        items = [o for (p, n, _), o in sorted(self.objects.items()) if p == "pods" and n == ns
                 and all(o["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeApiServer

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, answer = 400, _status(400, "body is not JSON")
        else:
            status, answer = self.fake.handle(self.command, url.path, query, ctype, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_DELETE = _serve

    def log_message(self, *args: object) -> None:
        pass


def _status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else
            "Success", "message": message, "code": code}


def _minor(version: str) -> int:
    return int(version.split(".")[1])
