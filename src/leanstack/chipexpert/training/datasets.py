"""Build every training data set in one call: ``build_training_data(out_dir)``.

Files written (each atomically) in ``out_dir``::

    cpt.jsonl              {"id", "text", "source", "licence"}  continued pre-training text
    sft.jsonl              {"id", "kind", "messages", "source", "licence"}  (schema.py)
    dpo.jsonl              {"id", "prompt", "chosen", "rejected", "failure", "source"}
    heldout_ic.txt         IC text kept out of every set (domain perplexity)
    heldout_general.txt    general text (general-ability perplexity)
    decontamination.json   per evaluation set: n-gram sizes, records checked, hits, removed ids;
                           near-duplicate counts per split
    manifest.json          counts per kind and failure, sources and licences, seed, versions
    cache/verilog_sim.json testbench outcomes, reused by the next build

Deterministic for a seed: the same inputs give byte-identical files.
"""

from __future__ import annotations

import platform
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from leanstack.atomic import read_json, write_bytes, write_json
from leanstack.chipexpert import store
from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.training import (
    cpt_data,
    decontaminate,
    dpo_data,
    ic_sources,
    qa_pairs,
    sft_data,
    snippets,
    verilog_specs,
)
from leanstack.chipexpert.training.schema import validate_dpo, validate_sft
from leanstack.chipexpert.training.verilog_runs import SimCache
from leanstack.errors import LeanstackError
from leanstack.provenance import package_versions

# Sized so SmolLM2-135M runs CPT (the trainer subsamples the corpus), SFT and DPO in about an
# hour on two CPU cores.
DEFAULT_MAX_SFT = 2000
DEFAULT_MAX_DPO = 600
DPO_GROUNDED = 480  # grounded prompts for loop / wrong_fact / invented_citation pairs
FILES = {"cpt": "cpt.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl",
         "heldout_ic": "heldout_ic.txt", "heldout_general": "heldout_general.txt",
         "decontamination": "decontamination.json", "manifest": "manifest.json"}


@dataclass(frozen=True)
class TrainingData:
    """Where the built sets are and how many records each holds."""

    out_dir: Path
    cpt: Path
    sft: Path
    dpo: Path
    heldout_ic: Path
    heldout_general: Path
    decontamination: Path
    manifest: Path
    counts: dict[str, int] = field(default_factory=dict)  # cpt, sft, dpo records
    sft_kinds: dict[str, int] = field(default_factory=dict)
    dpo_failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def at(cls, out_dir: Path, **kw: object) -> TrainingData:
        """The paths of a data directory (built or not)."""
        return cls(out_dir, *(out_dir / name for name in FILES.values()), **kw)  # type: ignore

    @classmethod
    def load(cls, out_dir: Path) -> TrainingData:
        """A directory ``build_training_data`` wrote, with its counts from the manifest; a
        missing or partial one is a one-line error."""
        data = cls.at(Path(out_dir))
        missing = [p.name for p in (data.cpt, data.sft, data.dpo, data.heldout_ic,
                                    data.heldout_general, data.manifest) if not p.is_file()]
        if missing:
            raise LeanstackError(f"{out_dir} lacks {', '.join(missing)}; build the training "
                                 "data there first")
        m = read_json(data.manifest, lambda j: j, "training-data manifest",
                      "build_training_data")
        return cls.at(Path(out_dir), counts=m["counts"], sft_kinds=m["sft_kinds"],
                      dpo_failures=m["dpo_failures"], seconds=m.get("build_seconds", 0.0))


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise LeanstackError(f"{name} must be a positive integer or None (got {value!r})")


def _prepare_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LeanstackError(f"{out_dir} is a file, not a directory; pass a directory for the "
                             "training data")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise LeanstackError(f"cannot write the training data to {out_dir} ({e.strerror}); pass "
                             "a writable directory") from None
    return out_dir


class _Steps:
    """A rich progress bar over the build steps (silent when ``enabled`` is False)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True))

    @contextmanager
    def running(self) -> Iterator[_Steps]:
        if self.bar is None:
            yield self
            return
        with self.bar:
            yield self

    def step(self, description: str, total: int = 1) -> Callable[[], None]:
        """Start a step; returns a callable that advances it by one."""
        if self.bar is None:
            return lambda: None
        task = self.bar.add_task(description, total=total)
        return lambda: self.bar.advance(task)

    def done(self, description: str) -> None:
        """Record a finished one-shot step."""
        self.step(description)()


def _knowledge_base(kb_dir: Path | None, out_dir: Path, steps: _Steps) -> tuple[list[Chunk],
                                                                                 str]:
    """The knowledge base's chunks: of ``kb_dir`` (which must hold one), else of the default
    directory, else built into ``out_dir/kb``."""
    from leanstack.chipexpert.corpus import CORPUS_FILE, build_corpus, load_corpus
    from leanstack.chipexpert.sources import default_sources

    if kb_dir is not None and not (kb_dir / CORPUS_FILE).is_file():
        raise LeanstackError(f"no knowledge base in {kb_dir}; run 'leanstack chip corpus build "
                             f"--out {kb_dir}' first, or leave kb_dir unset")
    kb = kb_dir or store.default_dir()
    if not (kb / CORPUS_FILE).is_file():
        kb = out_dir / "kb"
        sources = default_sources()
        advance = steps.step("building the knowledge base", len(sources))
        build_corpus(kb, sources, on_source=lambda _rep: advance())
    return load_corpus(kb), str(kb)


def _shuffled_cap(records: list[dict], limit: int | None, rng: random.Random) -> list[dict]:
    """The records in a seeded random order, at most ``limit`` of them."""
    out = list(records)
    rng.shuffle(out)
    return out[:limit] if limit is not None else out


def _versions() -> dict[str, str | None]:
    out = {"python": platform.python_version(), **package_versions(("leanstack", "datasketch"))}
    if shutil.which("iverilog"):
        v = subprocess.run(["iverilog", "-V"], capture_output=True, text=True, timeout=30)
        out["iverilog"] = (v.stdout.splitlines() or ["?"])[0].strip()
    return out


def _sft_text(rec: dict) -> str:
    return "\n".join(m["content"] for m in rec["messages"][1:])


def _dpo_text(rec: dict) -> str:
    return "\n".join([rec["prompt"][-1]["content"], rec["chosen"][0]["content"],
                      rec["rejected"][0]["content"]])


def build_training_data(out_dir: Path, *, seed: int = 0, max_cpt_records: int | None = None,
                        max_sft: int | None = None, max_dpo: int | None = None,
                        progress: bool = True, kb_dir: Path | None = None,
                        verilog_workers: int = 2) -> TrainingData:
    """Build the CPT, SFT and DPO sets and the held-out texts in ``out_dir`` (see the module
    docstring). ``max_cpt_records`` None keeps the whole corpus; ``max_sft``/``max_dpo`` None
    use ``DEFAULT_MAX_SFT``/``DEFAULT_MAX_DPO``. ``kb_dir`` is the knowledge base to read
    (default: the one ``leanstack chip corpus build`` made; built into ``out_dir/kb`` if
    absent)."""
    t0 = time.perf_counter()
    for name, value in (("max_cpt_records", max_cpt_records), ("max_sft", max_sft),
                        ("max_dpo", max_dpo), ("verilog_workers", verilog_workers)):
        _check_limit(name, value)
    if not isinstance(seed, int):
        raise LeanstackError(f"seed must be an integer (got {seed!r})")
    out_dir = _prepare_dir(out_dir)
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise LeanstackError("building the Verilog training data needs iverilog and vvp; run "
                             "scripts/system-deps.sh")
    max_sft = max_sft or DEFAULT_MAX_SFT
    max_dpo = max_dpo or DEFAULT_MAX_DPO
    steps = _Steps(progress)
    with steps.running():
        chunks, kb_path = _knowledge_base(kb_dir, out_dir, steps)
        steps.done(f"knowledge base: {len(chunks)} chunks")
        files = ic_sources.package_files()
        advance = steps.step("package text", len(files))
        package: list = []
        for f in files:
            package += ic_sources.file_records(f)
            advance()
        held_ic, held_gen = cpt_data.heldout_ic(), cpt_data.heldout_general()
        index = decontaminate.OverlapIndex(decontaminate.evaluation_texts(
            {held_ic.name: held_ic.text, held_gen.name: held_gen.text}))

        # continued pre-training text
        cpt_all = cpt_data.kb_records(chunks) + package
        cpt_kept, cpt_dups = decontaminate.deduplicate(cpt_all, lambda r: r.text,
                                                       lambda r: r.id)
        cpt, cpt_hits = index.filter(cpt_kept, lambda r: r.text, lambda r: r.id, "cpt")
        rng = random.Random(seed)
        if max_cpt_records is not None and len(cpt) > max_cpt_records:
            picked = sorted(rng.sample(range(len(cpt)), max_cpt_records))
            cpt = [cpt[i] for i in picked]
        steps.done(f"CPT: {len(cpt)} records")

        # Verilog tasks, checked by simulation
        tasks = verilog_specs.verilog_tasks(seed)
        unique = {t.top: t for t in tasks}
        runs = [(t.reference, t.testbench) for t in unique.values()]
        runs += [(m, t.testbench) for t in unique.values() for m in t.mutants]
        cache = SimCache(out_dir / "cache" / "verilog_sim.json")
        outcomes = dict(zip(runs, cache.run_many(runs, verilog_workers,
                                                 steps.step("Verilog testbench runs",
                                                            len(runs))), strict=True))
        passing = [t for t in tasks if outcomes[(t.reference, t.testbench)].passed]
        failing = {t.id: [m for m in t.mutants if not outcomes[(m, t.testbench)].passed]
                   for t in passing}

        # supervised fine-tuning
        pool = [c for c in chunks if c.source in qa_pairs.DOC_NAMES or
                c.source == "yosys-help" or c.source in qa_pairs.TOOLS]
        closed = qa_pairs.all_pairs(chunks, pick=0)
        grounded = [sft_data.ground(p, pool, rng) for p in qa_pairs.all_pairs(chunks, pick=1)]
        snips = snippets.spice_snippets(chunks) + snippets.cell_snippets(
            ic_sources.documented_cells())
        sft_all = (sft_data.qa_records(closed, grounded) + sft_data.snippet_records(snips)
                   + sft_data.verilog_records(passing))
        sft_kept, sft_dups = decontaminate.deduplicate(sft_all, _sft_text, lambda r: r["id"])
        sft, sft_hits = index.filter(sft_kept, _sft_text, lambda r: r["id"], "sft",
                                     lambda r: r["messages"][-1]["content"])
        sft = _shuffled_cap(sft, max_sft, rng)
        steps.done(f"SFT: {len(sft)} records")

        # preference pairs
        dpo_pairs = qa_pairs.all_pairs(chunks, pick=2)
        dpo_items = [sft_data.ground(p, pool, rng)
                     for p in rng.sample(dpo_pairs, min(DPO_GROUNDED, len(dpo_pairs)))]
        dpo_all = (dpo_data.grounded_pairs(dpo_items, rng)
                   + dpo_data.verilog_pairs([t for t in passing if t.id.endswith("-p0")],
                                            failing, rng))
        dpo, dpo_hits = index.filter(dpo_all, _dpo_text, lambda r: r["id"], "dpo",
                                     lambda r: r["chosen"][0]["content"] + "\n"
                                     + r["rejected"][0]["content"])
        dpo = _shuffled_cap(dpo, max_dpo, rng)
        steps.done(f"DPO: {len(dpo)} pairs")

        for rec in sft:
            validate_sft(rec)
        for rec in dpo:
            validate_dpo(rec)
        result = TrainingData.at(out_dir)
        store.write_jsonl(result.cpt, (r.to_json() for r in cpt))
        store.write_jsonl(result.sft, sft)
        store.write_jsonl(result.dpo, dpo)
        write_bytes(result.heldout_ic, held_ic.text.encode())
        write_bytes(result.heldout_general, held_gen.text.encode())
        reports = {"cpt": cpt_hits, "sft": sft_hits, "dpo": dpo_hits}
        write_json(result.decontamination, {
            "rule": "a training record sharing one word n-gram with an evaluation text is "
                    "removed (8-grams for questions and prose answers, 13-grams for code "
                    "answers and held-out texts); each set lists the splits it is checked "
                    "against",
            "sets": index.summary(reports),
            "dedup": {"method": f"MinHash LSH, {decontaminate.SHINGLE}-word shingles, "
                                f"threshold {decontaminate.DEDUP_THRESHOLD}",
                      "cpt": {"before": len(cpt_all), "dropped": len(cpt_dups)},
                      "sft": {"before": len(sft_all), "dropped": len(sft_dups)}}})
        counts = {"cpt": len(cpt), "sft": len(sft), "dpo": len(dpo)}
        kinds = dict(sorted(Counter(r["kind"] for r in sft).items()))
        failures = dict(sorted(Counter(r["failure"] for r in dpo).items()))
        seconds = time.perf_counter() - t0
        licences: dict[str, str] = {}
        for r in cpt:
            licences.setdefault(r.source.split(":")[0], r.licence)
        for rec in [*sft, *dpo]:
            licences.setdefault(rec["source"].split(":")[0], rec.get("licence", "Apache-2.0"))
        write_json(result.manifest, {
            "seed": seed, "counts": counts, "sft_kinds": kinds, "dpo_failures": failures,
            "cpt_words": sum(len(r.text.split()) for r in cpt),
            "cpt_sources": dict(sorted(Counter(r.source.split(":")[0] for r in cpt).items())),
            "licences": dict(sorted(licences.items())),
            "knowledge_base": kb_path,
            "heldout_ic": {"source": held_ic.source, "licence": held_ic.licence,
                           "words": len(held_ic.text.split())},
            "heldout_general": {"source": held_gen.source, "licence": held_gen.licence,
                                "words": len(held_gen.text.split())},
            "verilog": {"designs": len(unique), "spec_wordings": len(tasks),
                        "reference_passed": len({t.top for t in passing}),
                        "failing_mutants": len({(t.top, m) for t in passing
                                                for m in failing[t.id]}),
                        "simulations_run": cache.runs,
                        "simulations_cached": len(runs) - cache.runs},
            "limits": {"max_cpt_records": max_cpt_records, "max_sft": max_sft,
                       "max_dpo": max_dpo},
            "versions": _versions(), "build_seconds": round(seconds, 1)})
    return TrainingData.at(out_dir, counts=counts, sft_kinds=kinds, dpo_failures=failures,
                           seconds=seconds)
