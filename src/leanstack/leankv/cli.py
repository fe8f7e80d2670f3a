"""``leanstack kv``: evaluate a LeanKV configuration and chat through a compressed cache."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import typer

from leanstack.atomic import write_json
from leanstack.errors import LeanstackError

kv_app = typer.Typer(help="LeanKV: KV-cache compression (evaluate, chat).", no_args_is_help=True)


def _bits(text: str | None, name: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, v = (int(x) for x in text.split(","))
    except ValueError:
        raise LeanstackError(f"--{name} takes KEY,VALUE bits like 8,4; got {text!r}") from None
    return k, v


_PRESET_HELP = "lossless, balanced, balanced-window, aggressive or exact"


def build_config(preset: str, hi_bits: str | None = None, lo_bits: str | None = None,
                 hi_mass: float | None = None, keep_mass: float | None = None,
                 window: int | None = None, sinks: int | None = None,
                 full_bits: int | None = None, budget: int | None = None,
                 significance: str | None = None, key_norm: bool | None = None,
                 score_decay: float | None = None, reprune: bool | None = None,
                 retier_every: int | None = None) -> Any:
    """A preset with the free settings given on the command line applied on top."""
    from leanstack.leankv.config import LeanKVConfig

    overrides = {k: v for k, v in {
        "hi_bits": _bits(hi_bits, "hi-bits"), "lo_bits": _bits(lo_bits, "lo-bits"),
        "hi_mass": hi_mass, "keep_mass": keep_mass, "recent_window": window,
        "sink_tokens": sinks, "full_bits": full_bits, "budget": budget,
        "significance": significance, "key_channel_norm": key_norm, "score_decay": score_decay,
        "reprune": reprune, "retier_every": retier_every}.items() if v is not None}
    return LeanKVConfig.preset(preset, **overrides)


def _environment() -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
            "command": " ".join(sys.argv), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime())}


@kv_app.command("eval")
def kv_eval(
    preset: str = typer.Option("balanced", help=_PRESET_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the results JSON"),
    model: str = typer.Option("smollm2", help="HF model directory, .gguf file or smollm2"),
    text_file: Path | None = typer.Option(None, "--text", help="UTF-8 text to score "
                                          "(default: CPython's pydoc topics)"),
    prefix: int = typer.Option(512, help="tokens prefilled before teacher forcing"),
    decode: int = typer.Option(256, help="tokens teacher-forced one at a time"),
    passkey_trials: int = typer.Option(5, help="passkey prompts (0 to skip)"),
    passkey_length: int = typer.Option(1000, help="approximate passkey prompt length"),
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
) -> None:
    """Measure compression, decode-time perplexity/KL/top-1 and passkey retrieval."""
    import torch
    from rich.progress import Progress

    from leanstack.leankv.evaluate import decode_fidelity, default_text, passkey_accuracy
    from leanstack.llm import load_model

    config = build_config(preset, hi_bits, lo_bits, hi_mass, keep_mass, window, sinks, full_bits,
                          budget, significance, key_norm, score_decay, reprune, retier_every)
    if text_file is not None and not text_file.is_file():
        raise LeanstackError(f"text file {text_file} not found: pass an existing UTF-8 file")
    text = text_file.read_text(encoding="utf-8") if text_file else default_text()
    torch.set_num_threads(max(1, threads))
    loaded = load_model(model)
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[:, :prefix + decode]
    if ids.shape[1] < prefix + decode:
        raise LeanstackError(f"text has {ids.shape[1]} tokens, need prefix + decode = "
                             f"{prefix + decode}: use a longer --text or smaller numbers")
    with Progress(transient=True) as bar:
        task = bar.add_task("decode", total=decode - 1 + 2 * passkey_trials)

        def step(n: int) -> None:
            bar.advance(task, n)

        fid = decode_fidelity(loaded.model, ids, prefix, config, step)
        acc_dense = passkey_accuracy(loaded.model, loaded.tokenizer, None, passkey_trials,
                                     passkey_length, progress=step)
        acc = passkey_accuracy(loaded.model, loaded.tokenizer, config, passkey_trials,
                               passkey_length, progress=step)
    result = {
        "preset": preset, "config": config.to_dict(), "model": loaded.source
        if model != "smollm2" else "smollm2", "prefix": prefix, "decode": decode,
        "compression": fid.compression, "ppl_fp16": fid.ppl_dense, "ppl": fid.ppl,
        "ppl_increase_pct": 100 * (fid.ppl / fid.ppl_dense - 1), "kl": fid.kl,
        "top1_agreement": fid.top1_agreement, "retrieval_acc_fp16": acc_dense,
        "retrieval_acc": acc, "passkey_trials": passkey_trials,
        "tier_counts": fid.tier_counts, "environment": _environment(),
    }
    write_json(out, result, indent=2)
    print(markdown_row(result, header=True))
    print(f"wrote {out}")


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def markdown_row(r: dict[str, Any], header: bool = False) -> str:
    """One results row (optionally with the table header) for an eval result dict."""
    head = ("| preset | compression | ppl dense | ppl | ppl +% | KL | top-1 | passkey dense "
            "| passkey |\n|---|---|---|---|---|---|---|---|---|\n")
    row = (f"| {r['preset']} | {r['compression']:.2f}x | {r['ppl_fp16']:.2f} | {r['ppl']:.2f} | "
           f"{r['ppl_increase_pct']:.2f} | {r['kl']:.4f} | {r['top1_agreement']:.3f} | "
           f"{_fmt(r['retrieval_acc_fp16'])} | {_fmt(r['retrieval_acc'])} |")
    return (head if header else "") + row


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

    config = LeanKVConfig.preset(preset)
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
