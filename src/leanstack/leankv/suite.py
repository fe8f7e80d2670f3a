"""Evaluate a cache on every document of a corpus split: decode-time fidelity and retrieval,
per document, with the mean and the worst document.

Fidelity per document: prefill ``prefix`` tokens, then teacher-force ``decode`` tokens one at a
time through the cache (every scored token reads the compressed store), against the dense model.
Retrieval per document: for each context length, ``trials`` passkey and multikey items built
from the document itself, depths spread over 10–90%, answered by the dense cache and the
evaluated one in the same run; with ``qa``, also a few-shot question about the document's own
wording per context length and trial (scored apart from the pass keys).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.leankv.corpus import documents
from leanstack.leankv.evaluate import as_spec, decode_fidelity, dense_log_probs
from leanstack.leankv.peers import CacheSpec, dense_spec
from leanstack.leankv.retrieval import answer_item, make_item, make_qa_item

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class SuiteSettings:
    """How much of each document the suite reads."""

    split: str = "test"
    prefix: int = 256
    decode: int = 64
    lengths: tuple[int, ...] = (1024,)
    multikeys: int = 3
    question_aware: bool = False
    qa: bool = False  # also a few-shot question about the document's wording per length, trial
    trials: int = 1
    seed: int = 0
    max_documents: int = 0  # 0: every document of the split; n: its first n (manifest order)

    def __post_init__(self) -> None:
        if self.prefix < 1 or self.decode < 2:
            raise LeanstackError(f"need prefix >= 1 and decode >= 2 tokens, got {self.prefix} "
                                 f"and {self.decode}")
        if any(n < 16 for n in self.lengths):
            raise LeanstackError(f"retrieval lengths must be >= 16 tokens, got {self.lengths}")
        if self.trials < 0:
            raise LeanstackError(f"retrieval trials must be >= 0, got {self.trials}")
        if not 2 <= self.multikeys <= 4:
            raise LeanstackError(f"multikeys must be 2 to 4, got {self.multikeys}")
        if self.max_documents < 0:
            raise LeanstackError(f"max_documents must be >= 0 (0: all), got {self.max_documents}")

    def steps_per_document(self) -> int:
        """Progress units one document costs (decode steps plus retrieval questions x 2)."""
        questions = 1 + self.multikeys + (1 if self.qa else 0)
        return self.decode - 1 + 2 * self.trials * len(self.lengths) * questions


QUICK = SuiteSettings(prefix=128, decode=32, lengths=(512,), max_documents=3)
"""``kv eval --quick``: the first three documents of the split (prose, technical manual,
source code), 128 tokens prefilled and 32 teacher-forced, one passkey and one multikey item of
512 tokens each; a few minutes on a laptop CPU. Numbers from it are indicative only."""


@dataclass
class DocumentResult:
    name: str
    kind: str
    tokens_seen: int
    ppl_dense: float
    ppl: float
    ppl_increase_pct: float
    kl: float
    top1_agreement: float
    compression: float
    bytes_held: int
    fp16_bytes: int
    compression_reserved: float  # fp16 bytes over what the page pool really has allocated
    retrieval_dense: float = float("nan")
    retrieval: float = float("nan")
    qa_dense: float = float("nan")
    qa: float = float("nan")
    items: list[dict[str, Any]] = field(default_factory=list)


def _depths(i: int, n: int) -> tuple[float, ...]:
    """``n`` depths from DEPTHS, rotated by ``i`` so items cover 10–90% across documents."""
    return tuple(sorted(DEPTHS[(i + j * len(DEPTHS) // n) % len(DEPTHS)] for j in range(n)))


DenseMemo = dict[tuple[Any, ...], Any]
"""The dense model's answers per retrieval item and its log-probabilities per document."""
GiveUp = Callable[[list["DocumentResult"], int], bool]
"""``give_up(results so far, documents in the split)``: stop evaluating (see evaluate_split)."""


def evaluate_document(loaded: Any, doc_index: int, text: str, name: str, kind: str,
                      spec: CacheSpec, settings: SuiteSettings,
                      progress: Callable[[int], None] | None = None,
                      dense_memo: DenseMemo | None = None,
                      skip_retrieval: Callable[[DocumentResult], bool] | None = None,
                      ) -> DocumentResult:
    """Fidelity and retrieval of one document. ``dense_memo`` keeps the dense cache's answers
    per retrieval item and its log-probabilities, so evaluating several caches on the same
    document runs the dense model once. ``skip_retrieval(result)`` after fidelity may skip the
    retrieval items (retrieval then stays NaN)."""
    model, tok = loaded.model, loaded.tokenizer
    ids = tok(text, return_tensors="pt").input_ids[:, :settings.prefix + settings.decode]
    if ids.shape[1] < settings.prefix + settings.decode:
        raise LeanstackError(f"document {name} has {ids.shape[1]} tokens, need prefix + decode "
                             f"= {settings.prefix + settings.decode}: use smaller numbers")
    ids = ids.to(model.device)
    fid_key = ("fidelity", name, settings.prefix, settings.decode)
    if dense_memo is not None and fid_key not in dense_memo:
        dense_memo[fid_key] = dense_log_probs(model, ids, settings.prefix)
    fid = decode_fidelity(model, ids, settings.prefix, spec, progress,
                          dense_memo[fid_key] if dense_memo is not None else None)
    result = DocumentResult(name, kind, ids.shape[1] - 1, fid.ppl_dense, fid.ppl,
                            100 * (fid.ppl / fid.ppl_dense - 1), fid.kl, fid.top1_agreement,
                            fid.compression, fid.bytes_held, fid.fp16_bytes,
                            fid.fp16_bytes / fid.bytes_reserved)
    if skip_retrieval is not None and skip_retrieval(result):
        return result
    rng = random.Random(f"{settings.seed}:{name}")
    dense = dense_spec()
    hits_dense, hits = [], []
    rounds = [(j, length, t) for j, length in enumerate(settings.lengths)
              for t in range(settings.trials)]
    qa_dense, qa = [], []
    for j, length, t in rounds:
        items = [make_item(tok, text, length, _depths(doc_index + j + t, n_keys), rng)
                 for n_keys in (1, settings.multikeys)]
        if settings.qa:
            items.append(make_qa_item(tok, text, length, _depths(doc_index + j + t + 1, 3)))
        for item in items:
            key = (item.context, item.questions, settings.question_aware)
            if dense_memo is not None and key in dense_memo:
                got_dense = dense_memo[key]
            else:
                got_dense = answer_item(model, tok, item, lambda: dense.make(model.config),
                                        settings.question_aware)
                if dense_memo is not None:
                    dense_memo[key] = got_dense
            got = answer_item(model, tok, item, lambda: spec.make(model.config),
                              settings.question_aware)
            (qa_dense if item.kind == "qa" else hits_dense).extend(got_dense)
            (qa if item.kind == "qa" else hits).extend(got)
            result.items.append({"kind": item.kind, "length": length, "depths": item.depths,
                                 "dense": got_dense, "ours": got})
            if progress:
                progress(2 * len(item.questions))
    if hits:
        result.retrieval_dense = sum(hits_dense) / len(hits_dense)
        result.retrieval = sum(hits) / len(hits)
    if qa:
        result.qa_dense = sum(qa_dense) / len(qa_dense)
        result.qa = sum(qa) / len(qa)
    return result


METRICS = ("ppl_increase_pct", "kl", "top1_agreement", "compression", "compression_reserved",
           "retrieval_dense", "retrieval", "qa_dense", "qa")
WORSE_IS_HIGHER = {"ppl_increase_pct", "kl"}


def summarise(results: list[DocumentResult]) -> dict[str, Any]:
    """Mean over documents and the worst document of each metric (with its name)."""
    mean, worst = {}, {}
    for m in METRICS:
        vals = [(getattr(r, m), r.name) for r in results]
        mean[m] = sum(v for v, _ in vals) / len(vals)
        pick = max if m in WORSE_IS_HIGHER else min
        value, name = pick(vals)
        worst[m] = {"value": value, "document": name}
    return {"mean": mean, "worst": worst}


def evaluate_split(loaded: Any, config: Any, settings: SuiteSettings,
                   progress: Callable[[int], None] | None = None,
                   texts: list[tuple[str, str, str]] | None = None,
                   dense_memo: DenseMemo | None = None,
                   give_up: GiveUp | None = None,
                   first: list[str] | None = None) -> dict[str, Any]:
    """Every document of ``settings.split`` (or the given ``(name, kind, text)`` texts).

    ``give_up(results, n_documents)``, checked after each document's fidelity (with the partial
    result last; True skips its retrieval) and after each document, stops the evaluation once it
    returns True: the report then covers the documents evaluated so far and says
    ``"stopped_early": true`` (unless nothing was left out). ``first`` names
    documents to evaluate before the others (e.g. the hardest ones, so a hopeless configuration
    stops sooner); each document keeps its own retrieval items whatever the order."""
    spec = as_spec(config)
    if texts is None:
        texts = [(d.name, d.kind, d.text) for d in documents(settings.split)]
    if settings.max_documents:
        texts = texts[:settings.max_documents]
    rank = {name: r for r, name in enumerate(first or [])}
    order = sorted(range(len(texts)), key=lambda i: (rank.get(texts[i][0], len(rank)), i))
    results: list[DocumentResult] = []
    stopped = False
    for i in order:
        name, kind, text = texts[i]
        skip = None if give_up is None else (
            lambda partial: give_up([*results, partial], len(texts)))
        results.append(evaluate_document(loaded, i, text, name, kind, spec, settings, progress,
                                         dense_memo, skip))
        if give_up is not None and give_up(results, len(texts)):
            retrieval_skipped = bool(settings.trials and settings.lengths
                                     and not results[-1].items)
            stopped = len(results) < len(texts) or retrieval_skipped
            break
    return {"settings": asdict(settings), "cache": spec.name, "cache_settings": spec.settings,
            **summarise(results), "documents": [asdict(r) for r in results],
            "documents_total": len(texts), "stopped_early": stopped}
