"""ChipExpert start-up and answer latency as a user meets it: wall time of whole ``leanstack chip``
CLI calls (each a cold subprocess), the same calls served by a running ``chip serve``, the time to
the first generated token once the model is loaded, and optionally ``chip corpus build``.

Measured, alternating the commands in each round so that load changes hit them alike:

* ``search --method bm25``, ``search --method fused`` (the numpy question encoder, no torch),
  ``search`` (its default method: re-ranked where a re-ranker was trained) and ``ask`` (auto mode:
  extractive with the bundled model), each with ``--server off``; and, as the baseline, the
  previous cold path of a fused search (torch and transformers imported, the encoder loaded);
* ``search`` and ``ask --mode generative`` with ``--server URL`` of a ``chip serve`` this script
  starts on a free port (model and index warm);
* first token: in this process with the bundled model loaded, a generative answer streamed
  through ``Assistant.ask(..., on_text=...)``, the path ``chip ask`` prints from: seconds from
  the question to the model's first word (retrieval, the prompt's prefill, the first tokens), to
  the first text shown (held back until the post-check is sure to keep it), and to the whole
  answer (at most 64 new tokens);
* with ``--corpus-build``: ``chip corpus build`` into an empty directory (every source read;
  embeddings from the package's prebuilt cache where the text matches), the same with
  ``--no-prebuilt`` (every chunk embedded), and again into the same directory (all cached).

The 1-minute load average is recorded before and after each part: on a busy machine every wall
time is inflated, so compare numbers only at similar load. Medians over the rounds.

Run (quiet machine): ``nice -n 0 .venv/bin/python benchmarks/chip_latency.py --rounds 5
--corpus-build``; ``--quick`` for a smoke run (1 round, no corpus build); ``--parts`` to run only
some parts. Writes ``benchmarks/results/chip_latency.json`` and prints a Markdown table. Needs
the knowledge base (``leanstack chip corpus build``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from leanstack.ports import free_ports

RESULTS = Path(__file__).parent / "results" / "chip_latency.json"
QUESTIONS = ["How do I measure the rise time of a signal in ngspice?",
             "Which yosys command removes unused cells and wires?",
             "How do I make vvp exit instead of stopping at the interactive prompt?"]


def load() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def cli_command() -> list[str]:
    """``leanstack`` next to this Python (the venv's), else ``python -m leanstack.cli``."""
    exe = Path(sys.executable).with_name("leanstack")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "leanstack.cli"]


# The previous cold search path, as the baseline: the question embedded by the torch encoder
# (import torch and transformers, load the model), then the same fused search.
TORCH_SEARCH = ("import sys\nfrom leanstack.chipexpert import dense\n"
                "from leanstack.chipexpert.retrieval import Retriever, query_encoder\n"
                "from leanstack.chipexpert.store import default_dir\n"
                "kb = default_dir()\n"
                "model = dense.load_model(path=query_encoder(kb)[1])\n"
                "for h in Retriever.load(kb, model=model).search(sys.argv[1], k=3): print(h.id)")


def timed(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one CLI call (``args`` after ``leanstack``; a list starting with
    ``python`` runs this Python instead); a failure stops the benchmark with its output."""
    argv = [sys.executable, *args[1:]] if args[0] == "python" else [*cli_command(), *args]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"'{' '.join(args)}' failed:\n{out.stdout}\n{out.stderr}")
    return seconds


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """A ``chip serve`` on a free port, waited for until it answers; returns it, its URL and
    its start-up seconds."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cli_command(), "chip", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=1) as resp:
                json.loads(resp.read())
            return proc, url, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"chip serve exited: {proc.stderr.read() if proc.stderr else ''}")
            if time.perf_counter() - t0 > 300:
                proc.terminate()
                sys.exit("chip serve did not answer within 300 s")
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "n": len(values)}


def cli_part(rounds: int, env: dict[str, str]) -> dict:
    """Cold CLI calls without a server, then with one."""
    commands = {"search bm25": ["chip", "search", "{q}", "--method", "bm25"],
                "search fused": ["chip", "search", "{q}", "--method", "fused"],
                "search (default method)": ["chip", "search", "{q}"],
                "ask (auto: extractive)": ["chip", "ask", "{q}"],
                "baseline: fused search with the torch encoder": ["python", "-c", TORCH_SEARCH,
                                                                  "{q}"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    before = load()
    for r in range(rounds):
        q = QUESTIONS[r % len(QUESTIONS)]
        names = list(commands) if r % 2 == 0 else list(commands)[::-1]
        for name in names:
            args = [a.replace("{q}", q) for a in commands[name]]
            args += [] if args[0] == "python" else ["--server", "off"]
            times[name].append(timed(args, env))
        print(f"cli round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    no_server = {"load_before": before, "load_after": load(),
                 **{name: summary(v) for name, v in times.items()}}
    proc, url, startup = start_server(env)
    try:
        served: dict[str, list[float]] = {"search (default method)": [], "ask generative": []}
        before = load()
        for r in range(rounds):
            q = QUESTIONS[r % len(QUESTIONS)]
            served["search (default method)"].append(timed(["chip", "search", q, "--server",
                                                             url], env))
            served["ask generative"].append(timed(["chip", "ask", q, "--mode", "generative",
                                                   "--max-new-tokens", "64", "--server", url],
                                                  env))
        with_server = {"load_before": before, "load_after": load(),
                       "serve_startup_s": round(startup, 2),
                       **{name: summary(v) for name, v in served.items()}}
    finally:
        stop(proc)
    return {"no_server": no_server, "with_server": with_server}


class _FirstWord:
    """Wraps the local generator to note when the model hands on its first piece of text."""

    def __init__(self, gen: object) -> None:
        self.gen, self.name, self.small, self.streams = gen, "timed", True, True
        self.first_at: float | None = None

    def generate(self, messages, max_new_tokens=256, *, prose=False, on_text=None):  # noqa: ANN001, ANN201
        def raw(piece: str) -> None:
            if self.first_at is None:
                self.first_at = time.perf_counter()
            if on_text:
                on_text(piece)
        return self.gen.generate(messages, max_new_tokens, prose=prose, on_text=raw)


def first_token_part(rounds: int) -> dict:
    """In-process, with the bundled model loaded: a streamed generative answer (at most 64 new
    tokens) through ``Assistant.ask(on_text=...)``, timed to the model's first word, to the
    first text shown and to its end."""
    from leanstack.chipexpert.assistant import Assistant, load_retriever
    from leanstack.chipexpert.generators import LocalGenerator

    before = load()
    t0 = time.perf_counter()
    gen = _FirstWord(LocalGenerator())
    retriever = load_retriever()
    retriever.search("warm-up", k=3)
    load_s = time.perf_counter() - t0
    assistant = Assistant(gen, retriever, 3, mode="generative")  # type: ignore[arg-type]
    assistant.ask("What does yosys stat print?", 4)  # first forward passes are slower
    word, shown, whole, prompt_tokens = [], [], [], []
    first_shown: list[float] = []
    for r in range(rounds):
        q = QUESTIONS[r % len(QUESTIONS)]
        first_shown.clear()
        gen.first_at = None
        t1 = time.perf_counter()
        answer = assistant.ask(q, 64, on_text=lambda _: first_shown.append(time.perf_counter()))
        whole.append(time.perf_counter() - t1)
        word.append((gen.first_at or time.perf_counter()) - t1)
        shown.append(first_shown[0] - t1)
        messages = assistant.messages_for(q, answer.citations)
        prompt_tokens.append(len(gen.gen.prompt_ids(messages)))
    return {"load_before": before, "load_after": load(), "model_and_index_load_s":
            round(load_s, 2), "prompt_tokens": prompt_tokens,
            "first_generated_word": summary(word), "first_shown_text": summary(shown),
            "answer_64_tokens": summary(whole)}


def corpus_part(env: dict[str, str]) -> dict:
    """``chip corpus build`` into an empty directory with the package's prebuilt embeddings and
    without them (every chunk embedded), then again into the second directory (all cached)."""
    with_prebuilt = Path(tempfile.mkdtemp(prefix="chip-latency-kb-"))
    without = Path(tempfile.mkdtemp(prefix="chip-latency-kb-"))
    try:
        before = load()
        cold = timed(["chip", "corpus", "build", "--out", str(with_prebuilt)], env)
        embed_all = timed(["chip", "corpus", "build", "--out", str(without), "--no-prebuilt"],
                          env)
        mid = load()
        cached = timed(["chip", "corpus", "build", "--out", str(without)], env)
        return {"load_before": before, "load_between": mid, "load_after": load(),
                "cold_prebuilt_s": round(cold, 1), "cold_no_prebuilt_s": round(embed_all, 1),
                "cached_s": round(cached, 1)}
    finally:
        shutil.rmtree(with_prebuilt, ignore_errors=True)
        shutil.rmtree(without, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="calls per command")
    p.add_argument("--quick", action="store_true", help="1 round, no corpus build")
    p.add_argument("--corpus-build", action="store_true", help="also time 'chip corpus build'")
    p.add_argument("--parts", default="cli,first-token",
                   help="comma-separated parts to run: cli, first-token")
    p.add_argument("--out", type=Path, default=RESULTS, help="result JSON")
    args = p.parse_args()
    rounds = 1 if args.quick else args.rounds
    from leanstack.chipexpert.store import write_json
    from leanstack.provenance import benchmark_record

    env = {**os.environ, "LEANSTACK_CHIP_SERVER": "off"}
    result: dict = {"benchmark": "chip_latency", "quick": args.quick, "rounds": rounds,
                    "questions": QUESTIONS}
    parts = set(args.parts.split(","))
    if unknown := parts - {"cli", "first-token"}:
        sys.exit(f"unknown part(s) {', '.join(sorted(unknown))}; use cli, first-token")
    if "cli" in parts:
        result["cli"] = cli_part(rounds, env)
    if "first-token" in parts:
        result["first_token"] = first_token_part(rounds)
    if args.corpus_build and not args.quick:
        result["corpus_build"] = corpus_part(env)
    result |= {
        **benchmark_record(("leanstack", "torch", "transformers", "numpy", "tokenizers",
                            "bm25s")),
    }
    write_json(args.out, result)
    loads = [part["load_before"] for part in (result.get("cli", {}).get("no_server"),
                                              result.get("first_token")) if part]
    print(f"{rounds} round(s), {os.cpu_count()} CPUs; load average at the start of each part "
          f"{loads}\n")
    print("| what | median (s) | min (s) | max (s) |\n|---|---|---|---|")
    tables = [("", result.get("cli", {}).get("no_server", {})),
              ("with chip serve: ", result.get("cli", {}).get("with_server", {})),
              ("in process: ", result.get("first_token", {}))]
    for part, rows in tables:
        for name, row in rows.items():
            if isinstance(row, dict):
                print(f"| {part}{name} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
                      f"{row['max_s']:.2f} |")
    if "corpus_build" in result:
        cb = result["corpus_build"]
        print(f"| corpus build, empty directory (prebuilt embeddings) | {cb['cold_prebuilt_s']:.0f}"
              f" | | |\n| corpus build, empty directory, --no-prebuilt | "
              f"{cb['cold_no_prebuilt_s']:.0f} | | |\n"
              f"| corpus build again (cached) | {cb['cached_s']:.0f} | | |")


if __name__ == "__main__":
    main()
