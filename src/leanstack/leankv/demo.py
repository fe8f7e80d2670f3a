"""``leanstack demo`` section for LeanKV: one long-prompt question, dense cache vs LeanKV.

A pass key is hidden in the middle of about 1,000 tokens of filler text; SmolLM2-135M answers
the question once with transformers' dense cache and once with LeanKV ``balanced``, and we print
both answers with the bytes each cache held.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from leanstack.atomic import write_json

KEY = 68341
PROMPT_TOKENS = 1000
DEPTH = 0.5
NEW_TOKENS = 8


def _answer(loaded: Any, enc: Any, spec: Any) -> tuple[str, int, float]:
    """Greedy answer through the cache ``spec`` builds; returns (text, bytes held, seconds)."""
    import torch

    cache = spec.make(loaded.model.config)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = loaded.model.generate(**enc, cache=cache, max_new_tokens=NEW_TOKENS,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    seconds = time.perf_counter() - t0
    text = loaded.tokenizer.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return text.strip(), spec.bytes_held(cache), seconds


def run_demo(out_dir: pathlib.Path) -> None:
    """Answer a needle-in-a-haystack question with the dense cache and LeanKV ``balanced``."""
    import torch
    from rich.progress import Progress

    from leanstack.leankv.config import LeanKVConfig
    from leanstack.leankv.evaluate import fp16_bytes, passkey_prompt
    from leanstack.leankv.peers import dense_spec, leankv_spec
    from leanstack.llm import load_model

    torch.set_num_threads(1)
    loaded = load_model()
    prompt = passkey_prompt(loaded.tokenizer, PROMPT_TOKENS, DEPTH, KEY)
    enc = loaded.tokenizer(prompt, return_tensors="pt")
    tokens = enc.input_ids.shape[1]
    print(f"LeanKV: a pass key ({KEY}) hidden at {DEPTH:.0%} depth of a {tokens}-token prompt, "
          f"answered by SmolLM2-135M ({NEW_TOKENS} new tokens, greedy)")
    specs = [dense_spec(), leankv_spec("LeanKV balanced", LeanKVConfig.preset("balanced"))]
    rows = []
    with Progress(transient=True) as bar:
        task = bar.add_task("answering", total=len(specs))
        for spec in specs:
            text, held, seconds = _answer(loaded, enc, spec)
            rows.append({"cache": spec.name, "answer": text, "correct": str(KEY) in text,
                         "bytes_held": held, "seconds": seconds})
            bar.advance(task)
    full = fp16_bytes(loaded.model.config, tokens + NEW_TOKENS - 1)
    for r in rows:
        r["compression"] = full / r["bytes_held"]
        mark = "correct" if r["correct"] else "WRONG"
        print(f"  {r['cache']:<16} answer {r['answer']!r:<24} ({mark}); KV cache "
              f"{r['bytes_held'] / 1e6:.2f} MB held = {r['compression']:.2f}x smaller than "
              f"fp16; {r['seconds']:.1f} s")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "leankv_demo.json"
    write_json(path, {"key": KEY, "prompt_tokens": tokens, "depth": DEPTH, "rows": rows},
               indent=2)
    print(f"  details in {path}")
