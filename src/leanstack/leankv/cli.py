"""``leanstack kv``: evaluate a LeanKV configuration and chat through a compressed cache."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import typer

from leanstack.atomic import write_bytes, write_json
from leanstack.errors import LeanstackError
from leanstack.provenance import benchmark_record

kv_app = typer.Typer(help="LeanKV: KV-cache compression (evaluate, chat).", no_args_is_help=True)


def _bits(text: str | None, name: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, v = (int(x) for x in text.split(","))
    except ValueError:
        raise LeanstackError(f"--{name} takes KEY,VALUE bits like 8,4; got {text!r}") from None
    return k, v


_PRESET_HELP = ("lossless, balanced, balanced-window, aggressive, exact, or a .toml file "
                "(e.g. from `kv calibrate`)")


def build_config(preset: str, hi_bits: str | None = None, lo_bits: str | None = None,
                 hi_mass: float | None = None, keep_mass: float | None = None,
                 window: int | None = None, sinks: int | None = None,
                 full_bits: int | None = None, budget: int | None = None,
                 significance: str | None = None, key_norm: bool | None = None,
                 score_decay: float | None = None, reprune: bool | None = None,
                 retier_every: int | None = None) -> Any:
    """A preset with the free settings given on the command line applied on top."""
    from dataclasses import replace

    from leanstack.leankv.config import LeanKVConfig

    overrides = {k: v for k, v in {
        "hi_bits": _bits(hi_bits, "hi-bits"), "lo_bits": _bits(lo_bits, "lo-bits"),
        "hi_mass": hi_mass, "keep_mass": keep_mass, "recent_window": window,
        "sink_tokens": sinks, "full_bits": full_bits, "budget": budget,
        "significance": significance, "key_channel_norm": key_norm, "score_decay": score_decay,
        "reprune": reprune, "retier_every": retier_every}.items() if v is not None}
    return replace(LeanKVConfig.load(preset), **overrides)


def _lengths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise LeanstackError(f"--lengths takes token counts like 1024,2048; got {text!r}") from None


def check_out_path(out: Path) -> None:
    """Fail before any work when ``out`` cannot be written as a file."""
    if out.is_dir():
        raise LeanstackError(f"--out {out} is a directory: give a file path like {out}/eval.json")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LeanstackError(f"{parent} is not a writable directory: choose another --out path")


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's contents, or a one-line error saying what is wrong with it."""
    if path.is_dir():
        raise LeanstackError(f"--text {path} is a directory: pass one UTF-8 text file")
    if not path.is_file():
        raise LeanstackError(f"text file {path} not found: pass an existing UTF-8 file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LeanstackError(f"--text {path} is not UTF-8 ({e.reason} at byte {e.start}): "
                             "convert it, e.g. with iconv -t UTF-8") from None


@kv_app.command("eval")
def kv_eval(
    preset: str = typer.Option("balanced", help=_PRESET_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the results JSON"),
    model: str = typer.Option("smollm2", help="HF model directory, .gguf file or smollm2"),
    split: str = typer.Option("test", help="corpus half to evaluate: test (the default; every "
                              "reported number), calibration (for tuning) or all"),
    text_file: Path | None = typer.Option(None, "--text", help="evaluate this UTF-8 text "
                                          "instead of the corpus"),
    prefix: int = typer.Option(256, help="tokens prefilled before teacher forcing"),
    decode: int = typer.Option(64, help="tokens teacher-forced one at a time, per document"),
    passkey_trials: int = typer.Option(1, help="passkey and multikey items per document and "
                                       "context length (0 to skip retrieval)"),
    lengths: str = typer.Option("1024", help="retrieval context lengths in tokens, e.g. "
                                "1024,2048,4096"),
    multikeys: int = typer.Option(3, help="keys hidden in a multikey item (2-4)"),
    question_aware: bool = typer.Option(False, "--question-aware/--question-agnostic",
                                        help="prefill the question with the context (default: "
                                        "ask after the context is compressed)"),
    qa: bool = typer.Option(False, "--qa", help="also a few-shot question about each "
                            "document's own wording per context length (scored as 'qa')"),
    hi_bits: str | None = typer.Option(None, help="high tier KEY,VALUE bits, e.g. 8,4"),
    lo_bits: str | None = typer.Option(None, help="low tier KEY,VALUE bits, e.g. 4,2"),
    hi_mass: float | None = typer.Option(None, help="attention mass kept at high precision"),
    keep_mass: float | None = typer.Option(None, help="attention mass kept at all"),
    window: int | None = typer.Option(None, help="recent tokens kept at full precision"),
    sinks: int | None = typer.Option(None, help="first tokens kept at full precision"),
    full_bits: int | None = typer.Option(None, help="bits of the sink/window tier: 8, 16, 32"),
    budget: int | None = typer.Option(None, help="fixed kept tokens per head (0: use masses)"),
    significance: str | None = typer.Option(None, help="mean or sum of attention mass"),
    key_norm: bool | None = typer.Option(None, "--key-norm/--no-key-norm",
                                         help="per-channel key normalization before quantizing"),
    score_decay: float | None = typer.Option(None, help="weight of each older query's attention "
                                             "(below 1: an observation window)"),
    reprune: bool | None = typer.Option(None, "--reprune/--no-reprune", help="prune the "
                                        "survivors' tail again at every re-tier"),
    retier_every: int | None = typer.Option(None, help="re-rank and demote every N tokens"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    quick: bool = typer.Option(False, "--quick", help="a few-minute subset: the split's first 3 "
                               "documents, prefix 128, decode 32, retrieval at 512 tokens "
                               "(replaces --prefix, --decode and --lengths; indicative only)"),
) -> None:
    """Per document of a corpus half: compression, decode-time perplexity/KL/top-1 and passkey /
    multikey retrieval against the dense cache; prints the mean and the worst document."""
    import torch
    from rich.progress import Progress

    from leanstack.leankv.corpus import documents
    from leanstack.leankv.suite import QUICK, SuiteSettings, evaluate_split
    from leanstack.llm import load_model

    if quick:
        prefix, decode, lengths = QUICK.prefix, QUICK.decode, ",".join(map(str, QUICK.lengths))

    config = build_config(preset, hi_bits, lo_bits, hi_mass, keep_mass, window, sinks, full_bits,
                          budget, significance, key_norm, score_decay, reprune, retier_every)
    if passkey_trials < 0:
        raise LeanstackError(f"--passkey-trials must be >= 0 (0 skips retrieval), got "
                             f"{passkey_trials}")
    settings = SuiteSettings(split=split, prefix=prefix, decode=decode,
                             lengths=_lengths(lengths) if passkey_trials else (),
                             multikeys=multikeys, question_aware=question_aware, qa=qa,
                             trials=passkey_trials,
                             max_documents=QUICK.max_documents if quick else 0)
    check_out_path(out)
    if text_file is not None:
        texts = [(text_file.name, "custom", read_text_file(text_file))]
        where = f"text {text_file}"
    else:
        texts = [(d.name, d.kind, d.text) for d in documents(split)]
        if settings.max_documents:
            texts = texts[:settings.max_documents]
        where = (f"the {split} half of the corpus ({len(texts)} documents"
                 f"{', --quick subset' if quick else ''})")
    torch.set_num_threads(max(1, threads))
    loaded = load_model(model)
    print(f"evaluating {preset} on {where}")
    with Progress() as bar:
        task = bar.add_task(f"{preset} on {split if text_file is None else 'custom text'}",
                            total=settings.steps_per_document() * len(texts))
        report = evaluate_split(loaded, config, settings, lambda n: bar.advance(task, n), texts)
    mean = report["mean"]
    result = {
        "preset": preset, "config": config.to_dict(), "model": loaded.source
        if model != "smollm2" else "smollm2", "split": split if text_file is None else "custom",
        "prefix": prefix, "decode": decode, "quick": quick, "compression": mean["compression"],
        "ppl_increase_pct": mean["ppl_increase_pct"], "kl": mean["kl"],
        "top1_agreement": mean["top1_agreement"], "retrieval_acc_fp16": mean["retrieval_dense"],
        "retrieval_acc": mean["retrieval"], "passkey_trials": passkey_trials, **report,
        **benchmark_record(("leanstack", "torch", "transformers")),
    }
    write_json(out, result, indent=2)
    print(markdown_rows(result))
    print(f"wrote {out}")


@kv_app.command("calibrate")
def kv_calibrate(
    out: Path = typer.Option(..., "--out", help="where to write the preset (.toml)"),
    model: str = typer.Option("smollm2", help="HF model directory, .gguf file or smollm2"),
    target_ppl: float = typer.Option(0.5, help="largest mean perplexity increase, in %"),
    target_kl: float = typer.Option(0.01, help="largest mean KL(dense || compressed)"),
    prefix: int = typer.Option(256, help="tokens prefilled before teacher forcing"),
    decode: int = typer.Option(64, help="tokens teacher-forced one at a time, per document"),
    passkey_trials: int = typer.Option(1, help="passkey and multikey items per document and "
                                       "context length (0: judge on perplexity and KL only)"),
    lengths: str = typer.Option("1024", help="retrieval context lengths in tokens"),
    min_retrieval: float = typer.Option(1.0, help="least retrieval accuracy, as a fraction of "
                                        "the dense cache's (1: equal to dense)"),
    threads: int = typer.Option(1, help="torch CPU threads"),
) -> None:
    """Pick the most compressed configuration that meets the targets on the calibration half
    of the corpus (never the test half) and write it as a preset file for `--preset`."""
    import torch
    from rich.progress import Progress

    from leanstack.leankv.calibrate import LADDER, calibrate, preset_toml
    from leanstack.leankv.corpus import documents
    from leanstack.leankv.suite import SuiteSettings
    from leanstack.llm import load_model

    if passkey_trials < 0:
        raise LeanstackError(f"--passkey-trials must be >= 0, got {passkey_trials}")
    if out.suffix != ".toml":
        raise LeanstackError(f"--out {out} must end in .toml (it is read back by --preset)")
    check_out_path(out)
    settings = SuiteSettings(split="calibration", prefix=prefix, decode=decode,
                             lengths=_lengths(lengths) if passkey_trials else (),
                             trials=passkey_trials)
    torch.set_num_threads(max(1, threads))
    loaded = load_model(model)
    n_docs = len(documents("calibration"))
    print(f"calibrating on the calibration half of the corpus ({n_docs} documents), targets: "
          f"ppl +{target_ppl}%, KL {target_kl}")
    with Progress() as bar:
        total = settings.steps_per_document() * n_docs * len(LADDER)
        task = bar.add_task("calibrate", total=total)

        def report(rung: Any) -> None:
            m = rung.mean
            print(f"{rung.name}: {m['compression']:.2f}x, "
                  f"ppl {m['ppl_increase_pct']:+.2f}%, KL {m['kl']:.4f}, retrieval "
                  f"{_fmt(m['retrieval'])} (dense {_fmt(m['retrieval_dense'])}) -> "
                  f"{'meets the targets' if rung.passed else 'misses'}"
                  + (f" (stopped after {rung.documents} documents)" if rung.stopped_early
                     else ""))

        rungs = calibrate(loaded, target_ppl, target_kl, settings,
                          lambda n: bar.advance(task, n), report, min_retrieval)
        bar.update(task, completed=total)  # what was left: rungs stopped early or not needed
    chosen = rungs[-1]
    write_bytes(out, preset_toml(chosen, model, target_ppl, target_kl, min_retrieval,
                                 "leanstack " + " ".join(sys.argv[1:])).encode())
    if not chosen.passed:
        print("no configuration met the targets; wrote the safest one tried")
    print(f"wrote {out}")


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def markdown_rows(r: dict[str, Any]) -> str:
    """The mean and worst-document rows (with the table header) of an eval result dict."""
    mean = r["mean"]
    with_qa = not math.isnan(mean.get("qa", float("nan")))
    head = ("| preset | split | | compression (pages in use / pool held) | ppl +% | KL | top-1 | "
            "retrieval dense | retrieval |" + (" qa dense | qa |" if with_qa else "") + "\n|"
            + "---|" * (11 if with_qa else 9) + "\n")
    worst = {k: v["value"] for k, v in r["worst"].items()}
    rows = []
    for label, m in (("mean", mean), ("worst document", worst)):
        held = m.get("compression_reserved", float("nan"))
        qa_cells = f" {_fmt(m['qa_dense'])} | {_fmt(m['qa'])} |" if with_qa else ""
        rows.append(f"| {r['preset']} | {r['split']} | {label} | {m['compression']:.2f}x / "
                    f"{held:.2f}x | "
                    f"{m['ppl_increase_pct']:.2f} | {m['kl']:.4f} | {m['top1_agreement']:.3f} | "
                    f"{_fmt(m['retrieval_dense'])} | {_fmt(m['retrieval'])} |{qa_cells}")
    return head + "\n".join(rows)


@kv_app.command("chat")
def kv_chat(
    model: str = typer.Option("smollm2", help="HF model directory, .gguf file or smollm2"),
    preset: str = typer.Option("balanced", help=_PRESET_HELP),
    prompt: str | None = typer.Option(None, help="answer this one prompt and exit"),
    max_new_tokens: int = typer.Option(128, help="tokens per answer"),
) -> None:
    """Chat with a model whose KV cache is LeanKV-compressed (one prompt or a REPL on stdin)."""
    from leanstack.leankv.cache import LeanKVCache
    from leanstack.leankv.config import LeanKVConfig
    from leanstack.llm import generate_text, load_model

    config = LeanKVConfig.load(preset)
    loaded = load_model(model)
    prompts = [prompt] if prompt is not None else None
    while True:
        if prompts is None:
            try:
                line = input("you> ").strip()
            except EOFError:
                return
            if not line:
                continue
            todo = [line]
        else:
            todo = prompts
        cache = LeanKVCache(loaded.model.config, config)
        answer = generate_text(loaded, todo, max_new_tokens=max_new_tokens, cache=cache)[0]
        print(answer)
        print(f"[kv cache: {cache.bytes_held()} B held, {cache.compression():.2f}x vs fp16]",
              file=sys.stderr)
        if prompts is not None:
            return
