"""Decode-time fidelity and retrieval evaluation of a LeanKV configuration.

Fidelity: prefill a prefix, then teacher-force the rest one token at a time through the
compressed cache, so every prediction reads the compressed store; compare with the dense model
(perplexity, KL(dense || compressed), top-1 agreement). Retrieval: a passkey hidden at several
depths of filler text, answered greedily through the cache.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from leanstack.errors import LeanstackError
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.peers import CacheSpec, leankv_spec
from leanstack.llm.shapes import attention_shape

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")


def default_text() -> str:
    """English reference prose that ships with CPython (the pydoc topic help)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@dataclass
class FidelityResult:
    ppl_dense: float
    ppl: float
    kl: float
    top1_agreement: float
    compression: float
    bytes_held: int
    fp16_bytes: int
    tier_counts: dict[str, int]
    bytes_reserved: int = 0  # what the cache's page pool really has allocated (LeanKV only)


def as_spec(config: LeanKVConfig | CacheSpec) -> CacheSpec:
    """A LeanKV configuration as a :class:`CacheSpec` (a spec passes through)."""
    return leankv_spec("leankv", config) if isinstance(config, LeanKVConfig) else config


def fp16_bytes(model_config: Any, tokens: int, batch: int = 1) -> int:
    """What a dense fp16 cache holds for ``tokens`` tokens of ``batch`` requests."""
    return batch * tokens * attention_shape(model_config).fp16_bytes_per_token()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1)


def dense_log_probs(model: Any, input_ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """The dense model's log-probabilities of every token after ``prefix`` (one forward)."""
    with torch.no_grad():
        return _log_probs(model(input_ids[:, :-1]).logits[0, prefix - 1:])


def decode_fidelity(model: Any, input_ids: torch.Tensor, prefix: int,
                    config: LeanKVConfig | CacheSpec,
                    progress: Callable[[int], None] | None = None,
                    dense: torch.Tensor | None = None) -> FidelityResult:
    """Teacher-forced decode of ``input_ids[0, prefix:]`` through the cache ``config`` builds
    (a LeanKV configuration or any :class:`CacheSpec`) vs the dense model (``dense``: its
    :func:`dense_log_probs`, when already computed)."""
    n = input_ids.shape[1]
    if not 0 < prefix < n:
        raise LeanstackError(f"prefix {prefix} must be between 1 and the text length {n} - 1")
    targets = input_ids[0, prefix:]
    if dense is None:
        dense = dense_log_probs(model, input_ids, prefix)
    with torch.no_grad():
        spec = as_spec(config)
        cache = spec.make(model.config)
        steps = [model(input_ids[:, :prefix], cache=cache).logits[0, -1:]]
        for i in range(prefix, n - 1):
            steps.append(model(input_ids[:, i:i + 1], cache=cache).logits[0, -1:])
            if progress:
                progress(1)
        comp = _log_probs(torch.cat(steps))
    rows = torch.arange(targets.numel())
    nll_dense = -dense[rows, targets].mean().item()
    nll = -comp[rows, targets].mean().item()
    kl = (dense.exp() * (dense - comp)).sum(-1).mean().item()
    agree = (dense.argmax(-1) == comp.argmax(-1)).float().mean().item()
    held, full = spec.bytes_held(cache), fp16_bytes(model.config, n - 1)
    counts = cache.tier_counts() if hasattr(cache, "tier_counts") else {}
    reserved = cache.bytes_reserved() if hasattr(cache, "bytes_reserved") else held
    return FidelityResult(math.exp(nll_dense), math.exp(nll), kl, agree, full / held, held, full,
                          counts, reserved)


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: int) -> str:
    """Filler of about ``length`` tokens with the passkey at fractional ``depth``."""
    per = len(tokenizer(FILLER).input_ids)
    reps = max(1, length // per)
    cut = int(reps * depth)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    body = FILLER * cut + needle + FILLER * (reps - cut)
    return ("There is important info hidden inside a lot of irrelevant text. Find it and "
            "memorize it.\n" + body + "\nWhat is the pass key? The pass key is")


def passkey_accuracy(model: Any, tokenizer: Any, config: LeanKVConfig | CacheSpec | None,
                     trials: int, length: int, seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> float:
    """Fraction of passkeys recalled; ``config`` None uses the dense cache."""
    rng = random.Random(seed)
    hits = 0
    for t in range(trials):
        key = rng.randint(10000, 99999)
        depth = (t + 0.5) / trials
        enc = tokenizer(passkey_prompt(tokenizer, length, depth, key), return_tensors="pt")
        kwargs: dict[str, Any] = {}
        if config is not None:
            kwargs["cache"] = as_spec(config).make(model.config)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, **kwargs)
        answer = tokenizer.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
        hits += str(key) in answer
        if progress:
            progress(1)
    return hits / trials if trials else float("nan")
