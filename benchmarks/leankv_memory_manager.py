"""Cost per decode step of LeanKV's batched page manager vs a per-page Python free list.

Every (request, layer, KV head, tier) table gains one token per step; a table whose last page is
full needs a new page. Every few steps one request finishes and frees all its tables, and a new
one starts. LeanKV's PagePool does each step's allocations and frees as a few tensor operations
over its per-table page index (cost ~ tables and pages touched, not pool size); the baseline
(vLLM's block-manager style) pops and pushes page ids one at a time in Python.
Writes benchmarks/results/leankv_memory_manager.json and .png (cost per step vs pages).
Usage: .venv/bin/python benchmarks/leankv_memory_manager.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from leanstack.leankv.pages import PagePool
from leanstack.provenance import command_line, runtime_environment

TOKENS_PER_PAGE = 16
TIERS = 3


class PythonFreeList:
    """The baseline: a free list of page ids and one Python list of pages per table."""

    def __init__(self, num_pages: int):
        self.free = list(range(num_pages - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}

    def allocate(self, tables: list[int]) -> None:
        for t in tables:
            self.tables.setdefault(t, []).append(self.free.pop())

    def release(self, tables: list[int]) -> None:
        for t in tables:
            self.free.extend(self.tables.pop(t, []))


def simulate(kind: str, requests: int, layers: int, heads: int, steps: int) -> list[float]:
    """Per-step seconds for ``steps`` decode steps of ``requests`` concurrent requests."""
    per_request = layers * heads * TIERS
    tables_per_step = requests * per_request
    pages = tables_per_step * (steps // TOKENS_PER_PAGE + 2)
    # tables start at staggered lengths so page boundaries do not all coincide
    length = torch.randint(0, TOKENS_PER_PAGE, (requests * per_request * 4,),
                           generator=torch.Generator().manual_seed(0))
    active = torch.arange(requests)
    next_request = requests
    pool = PagePool(pages, 64) if kind == "batched" else None
    plain = PythonFreeList(pages) if kind == "python" else None
    times = []
    for step in range(steps):
        tables = (active.unsqueeze(1) * per_request + torch.arange(per_request)).reshape(-1)
        tables = tables % length.numel()
        need = tables[length[tables] % TOKENS_PER_PAGE == 0]
        finished = None
        if step % 8 == 7:  # one request ends and a fresh one takes its place
            finished = tables[:per_request]
            active = torch.cat([active[1:], torch.tensor([next_request])])
            next_request += 1
        t0 = time.perf_counter()
        if pool is not None:
            pool.allocate(need, torch.ones_like(need))
            if finished is not None:
                pool.free(finished)
        else:
            plain.allocate(need.tolist())
            if finished is not None:
                plain.release(finished.tolist())
        times.append(time.perf_counter() - t0)
        length[tables] += 1
        if finished is not None:
            length[finished] = 0
    return times


def plot(rows: list[dict], path: Path) -> None:
    """Mean cost per decode step against the number of pages in the pool, both managers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pages = [r["pool_pages"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(pages, [r["python_us_per_step"] for r in rows], "o-", label="per-page Python free list")
    ax.plot(pages, [r["batched_us_per_step"] for r in rows], "s-", label="batched PagePool")
    for r in rows:
        ax.annotate(f"{r['requests']} req", (r["pool_pages"], r["batched_us_per_step"]),
                    fontsize=7, xytext=(3, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pages in the pool")
    ax.set_ylabel("mean cost per decode step (us)")
    ax.set_title("page allocation + free per decode step (SmolLM2 shapes, CPU)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers, heads = 30, 3  # SmolLM2-135M
    sizes = [1, 4, 16] if args.quick else [1, 4, 16, 64, 256]
    steps = 64 if args.quick else 160
    rows = []
    for requests in sizes:
        med = {}
        for kind in ("python", "batched", "python", "batched"):  # alternate, keep the last
            med[kind] = statistics.fmean(simulate(kind, requests, layers, heads, steps))
        tables = requests * layers * heads * TIERS
        rows.append({"requests": requests, "tables": tables,
                     "pages_touched_per_step": tables / TOKENS_PER_PAGE,
                     "pool_pages": tables * (steps // TOKENS_PER_PAGE + 2),
                     "python_us_per_step": med["python"] * 1e6,
                     "batched_us_per_step": med["batched"] * 1e6,
                     "speedup": med["python"] / med["batched"]})
    result = {
        "benchmark": "leankv_memory_manager", "rows": rows,
        "settings": {"layers": layers, "kv_heads": heads, "tiers": TIERS,
                     "tokens_per_page": TOKENS_PER_PAGE, "steps": steps},
        "environment": {**runtime_environment(("torch",)), "command": command_line(),
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    out = Path(__file__).parent / "results" / "leankv_memory_manager.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    plot(rows, out.with_suffix(".png"))
    print("| requests | tables | python free list (mean us/step) | batched PagePool "
          "(mean us/step) | python / batched |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['requests']} | {r['tables']} | {r['python_us_per_step']:.0f} | "
              f"{r['batched_us_per_step']:.0f} | {r['speedup']:.2f}x |")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
