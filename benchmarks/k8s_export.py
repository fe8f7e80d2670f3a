"""Do the exported Kubernetes manifests of every shipped app validate in every supported version?

For each app: ``leanstack micro export`` (default allocation, then the HPA baseline's pods), every
object checked against the strict official schemas of Kubernetes 1.30 to the newest version
``kubernetes-validate`` ships. Also times the check.

Run: ``.venv/bin/python benchmarks/k8s_export.py``; writes ``benchmarks/results/k8s_export.json``
and prints a Markdown table.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.microservices.app import app_names, load_app
from leanstack.microservices.k8s.manifests import (
    ExportOptions,
    hpa_allocation,
    read_manifests,
    write_manifests,
)
from leanstack.microservices.k8s.validate import supported_versions, validation_matrix
from leanstack.microservices.result import environment

RESULTS = Path(__file__).parent / "results" / "k8s_export.json"


def main() -> None:
    t0 = time.monotonic()
    versions = supported_versions()
    apps = {}
    for name in app_names():
        app = load_app(name)
        row: dict = {}
        for variant, alloc in (("static", None), ("hpa", hpa_allocation(app, ExportOptions()))):
            with tempfile.TemporaryDirectory() as d:
                write_manifests(app, d, alloc)
                objs = read_manifests(d)
            t = time.perf_counter()
            matrix = validation_matrix(objs, versions)
            row[variant] = {
                "objects": dict(Counter(o["kind"] for o in objs)),
                "valid": {v: sum(e is None for e in r.values()) for v, r in matrix.items()},
                "errors": {v: {ref: e for ref, e in r.items() if e} for v, r in matrix.items()
                           if any(r.values())},
                "check_s": round(time.perf_counter() - t, 3),
            }
            row[variant]["total"] = len(objs)
        apps[name] = row
    data = {"versions": versions, "kubernetes_validate": version("kubernetes-validate"),
            "apps": apps, "environment": environment(time.monotonic() - t0)}
    write_json(RESULTS, data)
    print("| app | objects | " + " | ".join(versions) + " |")
    print("|---|---|" + "---|" * len(versions))
    for name, row in apps.items():
        r = row["static"]
        cells = [f"{r['valid'][v]}/{r['total']}" for v in versions]
        print(f"| {name} | {r['total']} | " + " | ".join(cells) + " |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
