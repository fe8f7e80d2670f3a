"""Domain adaptation of the embedding model, as ChipNeMo did for its retriever: fine-tune
all-MiniLM-L6-v2 with sentence-transformers on (query, chunk) pairs from this corpus.

Training pairs (``training_pairs``):

* the tuning half of the chunk-level question set (``chunk_eval``), never the test half;
* synthetic queries (``synthetic_queries.py``): section titles, inverse-cloze sentences,
  questions templated from the options of command help and man pages, and questions written by
  the local model for a sample of chunks (cached in the knowledge base); how many of each kind
  is set in ``TuneSettings``. The defaults are the mix that scored best on the tuning half:
  titles and sentences only (the option and model-written queries lowered it; see
  docs/chipexpert.md).

Only the query side is trained (asymmetric dual encoder): the chunks keep the base model's
embeddings, which are already in the index, so every other chunk of the corpus serves as a
negative in each step (a softmax over the whole corpus at temperature 1/20, as in
MultipleNegativesRankingLoss), a step costs a forward and backward pass of a few short queries,
and no re-indexing is needed. That is what makes the training run in minutes on two CPU cores;
training both sides (every chunk text re-encoded in each step) was far slower. The model is
saved under ``<knowledge base>/models/embedder`` with a manifest naming it; the ``Retriever``
embeds questions with it when it is there.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leanstack.chipexpert import dense
from leanstack.chipexpert.chunk_eval import ChunkQuestion
from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.store import write_json
from leanstack.chipexpert.synthetic_queries import (
    CACHE_FILE,
    QUESTION_MODEL,
    WriteQuestions,
    synthetic_queries,
)
from leanstack.errors import LeanstackError

EMBEDDER_DIR = Path("models") / "embedder"
MANIFEST = "leanstack-embedder.json"
BASE_NAME = dense.BASE_MODEL_NAME


@dataclass(frozen=True)
class TuneSettings:
    """Training settings; the defaults finish in a few minutes on two busy CPU cores."""

    title_pairs: int = 500  # synthetic queries of each kind (see synthetic_queries.py)
    cloze_pairs: int = 500
    option_pairs: int = 0
    model_pairs: int = 0  # chunks the local model writes a question for (~10 s each on 2 cores)
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 2e-5
    scale: float = 20.0  # inverse temperature of the softmax over the corpus
    max_query_tokens: int = 64
    threads: int = 1  # torch threads: one is fastest on a machine shared with other work
    seed: int = 0


@dataclass(frozen=True)
class Pair:
    """A training query, the row of the chunk that answers it and where the query came from."""

    query: str
    positive: int
    kind: str


def synthetic_counts(settings: TuneSettings) -> dict[str, int]:
    """How many synthetic queries of each kind ``settings`` asks for."""
    return {"title": settings.title_pairs, "cloze": settings.cloze_pairs,
            "option": settings.option_pairs, "model": settings.model_pairs}


def training_pairs(chunks: list[Chunk], tuning: list[ChunkQuestion], settings: TuneSettings,
                   corpus_dir: Path, write: WriteQuestions | None = None,
                   on_generating: Callable[[int, int], None] | None = None) -> list[Pair]:
    """The tuning questions (their first labelled chunk) plus the synthetic queries."""
    index_of = {c.id: i for i, c in enumerate(chunks)}
    pairs = [Pair(q.question, index_of[q.chunk_ids[0]], "tuning") for q in tuning
             if q.chunk_ids[0] in index_of]
    return pairs + [Pair(*t) for t in synthetic_queries(
        chunks, synthetic_counts(settings), settings.seed, corpus_dir / CACHE_FILE, write,
        on_generating)]


def finetuned_dir(corpus_dir: Path) -> Path:
    """Where the fine-tuned embedder of a knowledge base lives."""
    return corpus_dir / EMBEDDER_DIR


def finetuned_name(corpus_dir: Path) -> str | None:
    """The fine-tuned embedder's name (from its manifest), or None when there is none."""
    try:
        return json.loads((finetuned_dir(corpus_dir) / MANIFEST).read_text())["name"]
    except (OSError, ValueError, KeyError):
        return None


def train_embedder(corpus_dir: Path, chunks: list[Chunk], doc_vectors: np.ndarray,
                   tuning: list[ChunkQuestion],
                   settings: TuneSettings | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   on_generating: Callable[[int, int], None] | None = None,
                   write: WriteQuestions | None = None) -> dict:
    """Fine-tune the query side of the base embedder against the fixed chunk embeddings
    ``doc_vectors`` (the index's) and save it atomically under ``finetuned_dir``; returns the
    manifest: name, base, pair counts by kind, settings, steps and the last epoch's loss.
    ``on_progress`` reports training steps, ``on_generating`` the model-written queries;
    ``write`` replaces the local model as their writer."""
    import torch
    from sentence_transformers import SentenceTransformer

    if any(q.split != "tuning" for q in tuning):
        raise LeanstackError("the embedder may only be trained on the tuning half")
    if len(doc_vectors) != len(chunks):
        raise LeanstackError("one chunk embedding per chunk is needed; rebuild the index")
    settings = settings or TuneSettings()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    pairs = training_pairs(chunks, tuning, settings, corpus_dir, write, on_generating)
    model = SentenceTransformer(str(dense.model_path()), device="cpu")
    model.max_seq_length = settings.max_query_tokens
    model.train()
    docs = torch.from_numpy(np.asarray(doc_vectors, dtype=np.float32))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    rng = random.Random(settings.seed)
    batches_per_epoch = -(-len(pairs) // settings.batch_size)
    steps, done, epoch_loss = batches_per_epoch * settings.epochs, 0, 0.0
    for _ in range(settings.epochs):
        order = pairs[:]
        rng.shuffle(order)
        epoch_loss = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            features = model.preprocess([p.query for p in batch])
            queries = model(features)["sentence_embedding"]
            logits = settings.scale * torch.nn.functional.normalize(queries, dim=1) @ docs.T
            loss = torch.nn.functional.cross_entropy(
                logits, torch.tensor([p.positive for p in batch]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            epoch_loss += loss.item() * len(batch) / len(order)
            done += 1
            if on_progress:
                on_progress(done, steps)
    model.eval()
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    digest = hashlib.sha256(json.dumps([settings.__dict__, [(p.query, chunks[p.positive].id)
                                        for p in pairs]]).encode()).hexdigest()[:12]
    manifest = {"name": f"{BASE_NAME}-q-ft-{digest}", "base": BASE_NAME, "trained": "query side",
                "pairs": kinds, "synthetic_asked": synthetic_counts(settings),
                "question_model": QUESTION_MODEL if settings.model_pairs else None,
                "settings": settings.__dict__, "steps": steps,
                "last_epoch_loss": round(epoch_loss, 4)}
    out = Path(tempfile.mkdtemp(dir=corpus_dir, prefix=".embedder."))
    try:
        model.save(str(out / "model"))
        write_json(out / "model" / MANIFEST, manifest)
        target = finetuned_dir(corpus_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        (out / "model").rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return manifest
