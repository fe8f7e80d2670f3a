"""A self-contained HTML report of one ExperimentResult (plots embedded as base64 PNGs).

Sections: the summary table, per-class tail latency against its SLA, offered load and
throughput, total CPU allocated and used, per-tier allocation and usage (small multiples), and
the controller's and load's settings (HPA time scaling included) plus the environment.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from leanstack.atomic import write_bytes

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .bad { color: #b00020; font-weight: 600; }
"""


def write_report(result: dict[str, Any], path: str | Path) -> Path:
    """Render ``result`` to a standalone HTML file at ``path`` (temp file, then rename)."""
    return write_bytes(path, render_report(result).encode())


def render_report(result: dict[str, Any]) -> str:
    """The report as one HTML string."""
    tl = result["timeline"]
    title = f"{result['app']} · {result['backend']} backend · {result['controller']} controller"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"]
    if not result.get("completed", True):
        parts.append("<p class='bad'>This run was interrupted; the result is partial.</p>")
    parts.append("<h2>Summary</h2>" + _summary_tables(result))
    if tl:
        parts.append("<h2>Tail latency per class (at its SLA percentile)</h2>")
        parts.append(_img(_latency_figure(tl)))
        parts.append("<h2>Load</h2>" + _img(_load_figure(tl)))
        parts.append("<h2>CPU: total allocated and used</h2>" + _img(_cpu_total_figure(tl)))
        parts.append("<h2>CPU per tier: allocated (line) and used (fill)</h2>")
        parts.append(_img(_tier_figure(tl)))
    settings = result.get("settings", {})
    parts.append("<h2>Controller settings</h2>" + _kv_table(settings.get("controller", {})))
    parts.append("<h2>Load</h2>" + _kv_table(settings.get("load", {})))
    parts.append("<h2>Environment</h2>" + _kv_table(result.get("environment", {})))
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary_tables(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = [
        ("duration", f"{result['duration_s']:g} s in {s['intervals']} intervals "
                     f"of {result.get('interval_s', 1.0):g} s"),
        ("SLA violation rate", f"{s['violation_rate']:.1%} "
                               f"({s['intervals_violated']} of {s['intervals_measured']} "
                               "measured intervals)"),
        ("mean CPU allocated", f"{s['mean_cpu']:.2f} cores"),
        ("mean CPU used", f"{s['mean_cpu_used']:.2f} cores"),
        ("requests", f"{s['requests']} ({s['errors']} failed)"),
        ("offered / served load", f"{s['mean_offered_rps']:.1f} / "
                                  f"{s['mean_throughput_rps']:.1f} req/s"),
    ]
    out = ["<table>"] + [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</table><table><tr><th>class</th><th>SLA</th><th>violation rate</th>"
               "<th>median p99 (ms)</th><th>worst p99 (ms)</th><th>median tail at SLA pct "
               "(ms)</th><th>completed</th><th>failed</th></tr>")
    for name, c in s["classes"].items():
        bad = " class='num bad'" if c["violation_rate"] > 0 else " class='num'"
        out.append(
            f"<tr><td>{_e(name)}</td><td>{_e(c['sla_key'])} ≤ {c['sla_ms']:g} ms</td>"
            f"<td{bad}>{c['violation_rate']:.1%}</td><td class='num'>{_ms(c['p99_ms'])}</td>"
            f"<td class='num'>{_ms(c['p99_worst_ms'])}</td>"
            f"<td class='num'>{_ms(c['tail_ms'])}</td><td class='num'>{c['completed']}</td>"
            f"<td class='num'>{c['errors']}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _latency_figure(tl: list[dict[str, Any]]) -> Figure:
    names = list(tl[0]["classes"])
    fig = Figure(figsize=(10, 2.2 * len(names) + 0.6))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)
    t = [e["t"] for e in tl]
    for ax, name in zip(axes[:, 0], names, strict=True):
        first = tl[0]["classes"][name]
        key, sla = first["sla_key"], first["sla_ms"]
        ys = [_tail(e["classes"].get(name, {}), key) for e in tl]
        ax.plot(t, ys, lw=1.2, label=f"{key}")
        ax.axhline(sla, color="#b00020", ls="--", lw=1, label=f"SLA {sla:g} ms")
        ax.set_ylabel("ms")
        ax.set_title(name, fontsize=10, loc="left")
        if any(y and y > 0 for y in ys):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def _load_figure(tl: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 2.6))
    ax = fig.subplots()
    t = [e["t"] for e in tl]
    ax.plot(t, [e.get("offered_rps", 0.0) for e in tl], lw=1.2, label="offered")
    ax.plot(t, [sum(c.get("throughput_rps", 0.0) for c in e["classes"].values()) for e in tl],
            lw=1.0, label="served")
    ax.set_ylabel("requests/s")
    ax.set_xlabel("time (s)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def _cpu_total_figure(tl: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 2.6))
    ax = fig.subplots()
    t = [e["t"] for e in tl]
    ax.step(t, [sum(a["cpu"] for a in e["allocation"].values()) for e in tl], where="pre",
            lw=1.2, label="allocated")
    ax.plot(t, [sum(s.get("cpu_used", 0.0) for s in e["tiers"].values()) for e in tl],
            lw=1.0, label="used")
    ax.set_ylabel("cores")
    ax.set_xlabel("time (s)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def _tier_figure(tl: list[dict[str, Any]]) -> Figure:
    tiers = list(tl[0]["allocation"])
    cols = 4
    rows = math.ceil(len(tiers) / cols)
    fig = Figure(figsize=(11, 1.7 * rows + 0.4))
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False)
    t = [e["t"] for e in tl]
    for i, ax in enumerate(axes.flat):
        if i >= len(tiers):
            ax.set_visible(False)
            continue
        name = tiers[i]
        alloc = [e["allocation"][name]["cpu"] for e in tl]
        used = [e["tiers"].get(name, {}).get("cpu_used", 0.0) for e in tl]
        ax.fill_between(t, used, step="pre", alpha=0.4, color="#ff7f0e", label="used")
        ax.step(t, alloc, where="pre", lw=1.0, color="#1f77b4", label="allocated")
        ax.set_title(name, fontsize=8, loc="left")
        ax.set_ylim(0, max(max(alloc), max(used), 0.1) * 1.15)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=2, fontsize=8)
    fig.supxlabel("time (s)", fontsize=8)
    fig.supylabel("CPU cores", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def _img(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<p><img alt='plot' src='data:image/png;base64,{data}'></p>"


def _kv_table(d: dict[str, Any]) -> str:
    if not d:
        return "<p>none recorded</p>"
    rows = []
    for k, v in d.items():
        text = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
        rows.append(f"<tr><th>{_e(k)}</th><td>{_e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _tail(stats: dict[str, Any], key: str) -> float | None:
    if not stats.get("completed"):
        return None
    return stats.get("latency_ms", {}).get(key)


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _e(text: Any) -> str:
    return html.escape(str(text))
