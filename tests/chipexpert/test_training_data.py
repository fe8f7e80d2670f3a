"""The training data: decontamination against the benchmark, near-duplicate removal, record
validity, Verilog pairs checked by simulation, determinism, and bad output directories."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import pytest
from tests._require import require
from tests.chipexpert.conftest import small_sources

from leanstack.chipexpert import store
from leanstack.chipexpert.assistant import Assistant, Citation
from leanstack.chipexpert.bench.checkers import extract_verilog, tools_missing
from leanstack.chipexpert.bench.items import load_items
from leanstack.chipexpert.corpus import build_corpus
from leanstack.chipexpert.grounding import drop_unshown_citations, loop_start
from leanstack.chipexpert.training import verilog_specs
from leanstack.chipexpert.training.datasets import TrainingData, build_training_data
from leanstack.chipexpert.training.decontaminate import OverlapIndex, deduplicate, evaluation_texts
from leanstack.chipexpert.training.schema import cited, shown_passages, validate_dpo, validate_sft
from leanstack.chipexpert.training.sft_data import grounded_prompt
from leanstack.chipexpert.training.verilog_runs import simulate
from leanstack.errors import LeanstackError

PLANTED_ID = "planted-bench-copy"


def _bench_item():
    """An open EDA item: its question is prose, long enough for 8-grams."""
    return next(it for it in load_items() if it.type == "open" and len(it.question.split()) > 12)


def _tiny_families(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Verilog families at one width each, so a build simulates a handful of designs."""
    fams = {f.name: f for f in verilog_specs.FAMILIES}
    monkeypatch.setattr(verilog_specs, "FAMILIES", (
        dataclasses.replace(fams["absdiff"], widths=(4,)),
        dataclasses.replace(fams["accum"], widths=(4,))))


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real knowledge base plus a chunk that quotes a benchmark question and a
    near-copy of a real chunk."""
    kb = tmp_path_factory.mktemp("kb")
    build_corpus(kb, small_sources())
    chunks = store.read_jsonl(kb / "corpus.jsonl")
    item = _bench_item()
    planted = {"id": PLANTED_ID, "source": "man-vvp", "section": "Notes", "license": "x",
               "text": f"Some background first. {item.question} That is the whole note."}
    copy = dict(chunks[5], id="near-copy", text=chunks[5]["text"] + " Also.")
    store.write_jsonl(kb / "corpus.jsonl", [*chunks, planted, copy])
    return kb


@pytest.fixture(scope="module")
def built(kb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(tools_missing(), "run scripts/system-deps.sh")
    with pytest.MonkeyPatch.context() as mp:
        _tiny_families(mp)
        out = tmp_path_factory.mktemp("data")
        build_training_data(out, seed=3, progress=False, kb_dir=kb_dir)
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_overlap_index_removes_a_planted_item_and_keeps_clean_text():
    item = _bench_item()
    index = OverlapIndex(evaluation_texts())
    records = [("clean", "The stat command prints statistics of the selected design."),
               ("dirty", f"Intro words here. {item.question.upper()} More words.")]
    kept, report = index.filter(records, lambda r: r[1], lambda r: r[0])
    assert [r[0] for r in kept] == ["clean"]
    assert report.removed == ["dirty"] and report.checked == 2
    assert ("dirty", "chipicd-bench", item.id) in report.hits


def test_port_lists_alone_are_not_contamination():
    """A benchmark question's inline port list is code (13-grams): a generic port list in a
    training spec does not make it a hit."""
    index = OverlapIndex(evaluation_texts())
    spec = "Implement `foo`. Interface: `input [3:0] a, input [3:0] b, output [3:0] y`."
    assert index.matches(spec) == set()


def test_chunk_question_evidence_is_kept_out_of_instruction_data_only():
    rec = json.loads((resources.files("leanstack.chipexpert") / "data" /
                      "chunk_questions.jsonl").read_text().splitlines()[0])
    index = OverlapIndex(evaluation_texts())
    text = f"Answer: {rec['evidence']}"
    key = ("chunk-questions-evidence", rec["id"])
    assert key in index.matches(text, "sft", answer=True)
    assert key not in index.matches(text, "sft")  # in a prompt's passages: allowed
    assert key not in index.matches(text, "cpt", answer=True)
    records = [("r", f"[1] {rec['evidence']}", "An unrelated answer here. [1]")]
    kept, _ = index.filter(records, lambda r: r[1], lambda r: r[0], "sft", lambda r: r[2])
    assert kept == records
    _, report = index.filter(records, lambda r: r[1], lambda r: r[0], "sft", lambda r: r[1])
    assert report.removed == ["r"]
    assert ("chunk-questions", rec["id"]) in index.matches(rec["question"], "cpt")


def test_heldout_texts_are_checked_with_13_grams():
    held = " ".join(f"w{i}" for i in range(40))
    index = OverlapIndex(evaluation_texts({"heldout-ic": held}))
    assert ("heldout-ic", "heldout-ic") in index.matches("x " + " ".join(held.split()[3:16]))
    assert index.matches(" ".join(held.split()[3:15])) == set()  # 12 words: no hit


def test_dedup_drops_near_duplicates_and_keeps_distinct_texts():
    base = " ".join(f"word{i}" for i in range(80))
    recs = [("a", base), ("b", base.replace("word40", "changed")), ("c", base[::-1])]
    kept, dropped = deduplicate(recs, lambda r: r[1], lambda r: r[0])
    assert [r[0] for r in kept] == ["a", "c"]
    assert dropped == {"b": "a"}


def test_grounded_prompt_is_the_assistants_prompt():
    passages = ["First passage text.", "Second passage text."]
    assistant = Assistant(generator=object(), retriever=None)
    cites = [Citation(n, "s", "t", text, 0.5) for n, text in enumerate(passages, 1)]
    assert grounded_prompt("What is it?", passages) == assistant.messages_for("What is it?",
                                                                               cites)


def test_validators_reject_bad_records():
    good = {"id": "g", "kind": "grounded", "source": "s", "licence": "l",
            "messages": grounded_prompt("Q?", ["a", "b"]) + [
                {"role": "assistant", "content": "A. [2]"}]}
    validate_sft(good)
    bad = json.loads(json.dumps(good))
    bad["messages"][2]["content"] = "A. [7]"
    with pytest.raises(LeanstackError, match="cites"):
        validate_sft(bad)
    bad["messages"] = bad["messages"][1:]
    with pytest.raises(LeanstackError, match="roles"):
        validate_sft(bad)
    pair = {"id": "p", "failure": "invented_citation", "source": "s",
            "prompt": good["messages"][:2],
            "chosen": [{"role": "assistant", "content": "A. [2]"}],
            "rejected": [{"role": "assistant", "content": "A. [1]"}]}
    with pytest.raises(LeanstackError, match="not shown"):
        validate_dpo(pair)


def test_planted_benchmark_item_is_removed_and_reported(built: Path):
    item = _bench_item()
    report = json.loads((built / "decontamination.json").read_text())
    cpt_hits = report["sets"]["chipicd-bench"]["splits"]["cpt"]
    assert f"kb-{PLANTED_ID}" in cpt_hits["removed"] and item.id in cpt_hits["items_hit"]
    assert cpt_hits["records_checked"] > 0
    assert not any(PLANTED_ID in r["id"] for r in _jsonl(built / "cpt.jsonl"))
    for split in ("sft", "dpo"):
        for rec in _jsonl(built / f"{split}.jsonl"):
            assert item.question not in json.dumps(rec)
    assert report["dedup"]["cpt"]["dropped"] >= 1  # the near-copy
    assert "kb-near-copy" not in {r["id"] for r in _jsonl(built / "cpt.jsonl")}


def test_every_record_validates_and_citations_point_at_shown_passages(built: Path):
    sft, dpo = _jsonl(built / "sft.jsonl"), _jsonl(built / "dpo.jsonl")
    assert {r["kind"] for r in sft} >= {"command", "grounded", "snippet", "verilog"}
    assert {r["failure"] for r in dpo} == {"loop", "wrong_fact", "invented_citation",
                                           "failing_verilog"}
    for rec in sft:
        validate_sft(rec)
        if rec["kind"] == "grounded":
            shown = shown_passages(rec["messages"][1]["content"])
            assert shown == {1, 2, 3} and cited(rec["messages"][2]["content"]) <= shown
    for rec in dpo:
        validate_dpo(rec)
        rejected = rec["rejected"][0]["content"]
        if rec["failure"] == "invented_citation":
            _, invalid = drop_unshown_citations(rejected,
                                                shown_passages(rec["prompt"][1]["content"]))
            assert invalid
        if rec["failure"] == "loop":
            assert loop_start(rejected) is not None
    for rec in _jsonl(built / "cpt.jsonl"):
        assert set(rec) == {"id", "text", "source", "licence"} and rec["text"].strip()
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["counts"]["sft"] == len(sft) and manifest["seed"] == 3
    assert TrainingData.load(built).counts == manifest["counts"]
    for split in ("cpt", "sft", "dpo"):
        ids = [r["id"] for r in _jsonl(built / f"{split}.jsonl")]
        assert len(ids) == len(set(ids)), split
    assert (built / "heldout_ic.txt").read_text().strip()
    held = (built / "heldout_ic.txt").read_text()
    assert not any(held[:200] in r["text"] for r in _jsonl(built / "cpt.jsonl"))


def test_failing_verilog_pairs_really_fail_and_chosen_really_pass(built: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    require(tools_missing(), "run scripts/system-deps.sh")
    _tiny_families(monkeypatch)
    benches = {t.id: t.testbench for t in verilog_specs.verilog_tasks(3)}
    pairs = [r for r in _jsonl(built / "dpo.jsonl") if r["failure"] == "failing_verilog"]
    assert pairs
    for rec in pairs:
        tb = benches[rec["id"].removeprefix("dpo-failing_verilog-")]
        assert simulate(extract_verilog(rec["chosen"][0]["content"]), tb).passed
        assert not simulate(extract_verilog(rec["rejected"][0]["content"]), tb).passed


def test_same_seed_same_files_other_seed_other_order_and_limits(
        built: Path, kb_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _tiny_families(monkeypatch)
    again = build_training_data(tmp_path / "again", seed=3, progress=False, kb_dir=kb_dir)
    for name in ("cpt.jsonl", "sft.jsonl", "dpo.jsonl", "heldout_ic.txt",
                 "heldout_general.txt", "decontamination.json"):
        assert (built / name).read_bytes() == (again.out_dir / name).read_bytes(), name
    other = build_training_data(tmp_path / "other", seed=4, progress=False, kb_dir=kb_dir,
                                max_cpt_records=7, max_sft=11, max_dpo=5)
    assert other.counts == {"cpt": 7, "sft": 11, "dpo": 5}
    assert len(_jsonl(other.sft)) == 11
    first = [r["id"] for r in _jsonl(again.sft)][:11]
    assert [r["id"] for r in _jsonl(other.sft)] != first


def test_bad_out_dir_is_one_line_error(tmp_path: Path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        with pytest.raises(LeanstackError) as e:
            build_training_data(bad, progress=False)
        assert "\n" not in str(e.value) and str(afile) in str(e.value)
    with pytest.raises(LeanstackError, match="max_sft"):
        build_training_data(tmp_path / "d", max_sft=0, progress=False)
    with pytest.raises(LeanstackError, match="lacks"):
        TrainingData.load(tmp_path)
    with pytest.raises(LeanstackError, match="no knowledge base"):
        build_training_data(tmp_path / "d", kb_dir=tmp_path / "nokb", progress=False)


@pytest.mark.slow
def test_full_build_has_every_kind_and_every_reference_passes(tmp_path: Path):
    """The default build over the whole knowledge base (built first if there is none)."""
    require(tools_missing(), "run scripts/system-deps.sh")
    data = build_training_data(tmp_path, progress=False)
    manifest = json.loads(data.manifest.read_text())
    assert manifest["verilog"]["reference_passed"] == manifest["verilog"]["designs"]
    assert set(data.sft_kinds) == {"command", "section", "snippet", "verilog", "grounded"}
    assert set(data.dpo_failures) == {"loop", "wrong_fact", "invented_citation",
                                      "failing_verilog"}
    assert data.counts["cpt"] > 1000 and data.counts["dpo"] > 300
