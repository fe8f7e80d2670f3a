"""The shipped presets: files chosen on the calibration half, their provenance, `kv eval --quick`,
and the peers' compression on a tiny input."""

import json
import tomllib
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from leanstack.errors import LeanstackError
from leanstack.leankv.calibrate import LADDER, Rung, passes, preset_toml, rung_config
from leanstack.leankv.cli import kv_app
from leanstack.leankv.config import PRESET_DIR, SHIPPED, LeanKVConfig, preset_provenance
from leanstack.leankv.corpus import documents
from leanstack.leankv.evaluate import decode_fidelity
from leanstack.leankv.peers import (
    dense_spec,
    h2o_config,
    kivi_spec,
    kvpress_spec,
    leankv_spec,
    quanto_spec,
)
from leanstack.leankv.suite import QUICK

# the targets each shipped preset was chosen against (docs/leankv.md, "Settings and presets")
TARGETS = {"lossless": (0.5, 0.01, 1.0), "balanced": (2.0, None, 0.9),
           "aggressive": (5.0, None, 0.0)}


def bytes_per_token(cfg: LeanKVConfig) -> float:
    """Bytes of one quantized token per head at the high tier (data + fp16 scale/min)."""
    k, v = cfg.hi_bits
    return 64 * (k + v) / 8 + 2 * 2 * 64 / cfg.group * 2


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_presets_are_the_files_and_record_calibration_provenance(name):
    path = PRESET_DIR / f"{name}.toml"
    assert LeanKVConfig.preset(name) == LeanKVConfig.load(str(path))
    notes = preset_provenance(name)
    assert notes["split"] == "calibration"  # never the test half
    assert "calibration half" in path.read_text().splitlines()[0]
    assert "benchmarks/leankv_calibrate_presets.py" in notes["command"]
    assert notes["rung"] in {n for n, _ in LADDER}
    assert LeanKVConfig.preset(name) == rung_config(dict(LADDER)[notes["rung"]])
    ppl, kl, retrieval = TARGETS[name]
    assert notes["target_ppl_increase_pct"] == ppl
    assert notes["min_retrieval_vs_dense"] == retrieval
    if kl is not None:
        assert notes["target_kl"] == kl
    # the recorded verdict agrees with the recorded numbers
    mean = {k: notes.get(k, float("nan")) for k in
            ("ppl_increase_pct", "kl", "retrieval", "retrieval_dense")}
    assert notes["met_targets"] == passes(mean, ppl, notes["target_kl"], retrieval)


def test_presets_differ_as_documented():
    cfgs = {n: LeanKVConfig.preset(n) for n in SHIPPED}
    rungs = {n: preset_provenance(n)["rung"] for n in SHIPPED}
    for a in SHIPPED:  # presets differ exactly where calibration chose different rungs
        for b in SHIPPED:
            assert (cfgs[a] == cfgs[b]) == (rungs[a] == rungs[b])
    # a less lossy target never walks less far down the ladder (more compressed rungs first)
    order = [n for n, _ in LADDER]
    depth = {n: order.index(preset_provenance(n)["rung"]) for n in SHIPPED}
    assert depth["aggressive"] <= depth["balanced"] <= depth["lossless"]
    assert preset_provenance("lossless")["compression"] <= \
        preset_provenance("aggressive")["compression"]
    for name in SHIPPED:
        assert bytes_per_token(cfgs[name]) < 256  # below fp16's 256 B per token and head
    with pytest.raises(LeanstackError, match="not a shipped preset file"):
        preset_provenance("exact")


def test_preset_file_round_trips_config_and_notes(tmp_path):
    name, overrides = LADDER[3]
    rung = Rung(name, rung_config(overrides), {"ppl_increase_pct": 1.0, "kl": 0.02,
                                               "retrieval": float("nan")}, False)
    path = tmp_path / "p.toml"
    path.write_text(preset_toml(rung, 'm "quoted"', 0.5, 0.01, 0.9, 'cmd --x "y"'))
    assert LeanKVConfig.load(str(path)) == rung.config
    notes = tomllib.loads(path.read_text())["calibration"]
    assert notes["model"] == 'm "quoted"' and notes["command"] == 'cmd --x "y"'
    assert notes["met_targets"] is False and "retrieval" not in notes  # NaN left out


def test_calibration_walk_stops_at_the_first_rung_meeting_retrieval_share():
    mean = {"ppl_increase_pct": 1.0, "kl": 0.001, "retrieval": 0.9, "retrieval_dense": 1.0}
    assert passes(mean, 2.0, 1.0, min_retrieval=0.9)
    assert not passes(mean, 2.0, 1.0, min_retrieval=1.0)
    assert not passes(mean, 0.5, 1.0, min_retrieval=0.0)


def test_kv_eval_quick_selects_the_documented_subset(tiny_model_dir, tmp_path):
    out = tmp_path / "quick.json"
    result = CliRunner().invoke(kv_app, [
        "eval", "--quick", "--preset", "balanced", "--out", str(out), "--model",
        str(tiny_model_dir), "--prefix", "999", "--lengths", "4096"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    want = [d.name for d in documents("test")][:QUICK.max_documents]
    assert QUICK.max_documents == 3 and [d["name"] for d in data["documents"]] == want
    assert data["quick"] is True and data["split"] == "test"
    assert (data["prefix"], data["decode"]) == (QUICK.prefix, QUICK.decode) == (128, 32)
    assert data["settings"]["lengths"] == list(QUICK.lengths) == [512]
    assert all(i["length"] == 512 for d in data["documents"] for i in d["items"])
    assert "--quick subset" in result.output


def tokens(n=60):
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(7))


def test_peers_compress_a_tiny_input_sanely(tiny_llama):
    """Each peer holds less than fp16 but not impossibly little: 4-bit KIVI/quanto with a
    16-token residual, H2O keeping 20 of 60 tokens per head."""
    ratios = {}
    specs = [kivi_spec(4, residual=16, group=16), kivi_spec(2, residual=16, group=16),
             # 256-byte pages: at head_dim 16 a default 2 KiB page would hold 32 tokens, and
             # page slack would swamp 20 kept tokens
             leankv_spec("h2o", replace(h2o_config(20, retier_every=1), page_bytes=256), "h2o")]
    try:
        import optimum.quanto  # noqa: F401

        specs.append(quanto_spec(4, residual=16, group=16))
    except ImportError:
        pass
    for spec in specs:
        ratios[spec.name] = decode_fidelity(tiny_llama, tokens(), 40, spec).compression
    assert 1.5 < ratios["KIVI 4-bit (residual 16)"] < 4.0
    assert ratios["KIVI 4-bit (residual 16)"] < ratios["KIVI 2-bit (residual 16)"] < 8.0
    assert 1.4 < ratios["h2o"] < 59 / 20  # 59 tokens over 20 kept, less page slack and tables
    for name, ratio in ratios.items():
        if name.startswith("QuantizedCache"):
            assert 1.5 < ratio < 4.0


def test_kvpress_prunes_the_prompt_and_keeps_positions(tiny_llama):
    pytest.importorskip("kvpress")
    none = decode_fidelity(tiny_llama, tokens(), 40, kvpress_spec(tiny_llama, "KnormPress", 0.0))
    assert none.compression == pytest.approx(1.0) and none.kl < 1e-6  # nothing removed
    half = decode_fidelity(tiny_llama, tokens(), 40, kvpress_spec(tiny_llama, "KnormPress", 0.5))
    # 20 of the 40 prompt tokens removed, the 19 decoded ones kept: 59 / 39
    assert half.compression == pytest.approx(59 / 39) and half.kl > 0
    assert decode_fidelity(tiny_llama, tokens(), 40, dense_spec()).kl < 1e-6


def test_kvpress_missing_or_unknown_is_one_line_error(tiny_llama):
    try:
        import kvpress  # noqa: F401
    except ImportError:
        with pytest.raises(LeanstackError, match="kvpress is not importable"):
            kvpress_spec(tiny_llama, "KnormPress", 0.5)
        return
    with pytest.raises(LeanstackError, match="unknown press"):
        kvpress_spec(tiny_llama, "NoSuchPress", 0.5)
