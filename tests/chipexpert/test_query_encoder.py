"""The numpy question encoder: same vectors as the torch encoder, no torch import on the search
path, and a damaged model directory is a one-line error naming it and the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leanstack.chipexpert.dense import model_path
from leanstack.chipexpert.query_encoder import NumpyEncoder, load_query_encoder
from leanstack.errors import LeanstackError

TEXTS = ["How do I measure the rise time of a signal in ngspice?",
         "opt_clean removes unused cells and wires",
         "x",
         "a much longer passage " * 40]  # past 256 word pieces: truncated like the torch one


def test_numpy_encoder_matches_torch_encoder(embedding_model) -> None:
    ours = load_query_encoder(None).encode(TEXTS, batch_size=3)  # two batches, with padding
    reference = embedding_model.encode(TEXTS)
    assert ours.shape == reference.shape == (len(TEXTS), 384)
    assert np.abs(ours - reference).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_empty_list_gives_no_rows() -> None:
    assert load_query_encoder(None).encode([]).shape == (0, 384)


def test_fused_search_does_not_import_torch(small_kb: Path) -> None:
    code = ("import sys\nfrom pathlib import Path\n"
            "from leanstack.chipexpert.retrieval import Retriever\n"
            f"hits = Retriever.load(Path({str(small_kb)!r})).search('remove unused wires', k=2)\n"
            "assert hits, 'no hits'\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A copy of the base model's directory, to damage: small files copied, the weights linked
    (``replace`` swaps a link for a file of its own before it is changed)."""
    copy = tmp_path / "embedder"
    copy.mkdir()
    for f in model_path().iterdir():
        if f.is_file():
            if f.name == "model.safetensors":
                (copy / f.name).symlink_to(f)
            else:
                shutil.copy(f, copy / f.name)
    return copy


def truncate(path: Path, size: int) -> None:
    with path.open("rb") as f:
        head = f.read(size)
    path.unlink()
    path.write_bytes(head)


@pytest.mark.parametrize("damage", ["truncate-weights", "no-weights", "bad-config",
                                    "not-bert", "bad-tokenizer", "missing-layer"])
def test_damaged_directory_is_a_one_line_error(model_copy: Path, damage: str) -> None:
    weights = model_copy / "model.safetensors"
    if damage == "truncate-weights":
        truncate(weights, 1000)
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "bad-config":
        (model_copy / "config.json").write_text("{not json")
    elif damage == "not-bert":
        config = json.loads((model_copy / "config.json").read_text())
        (model_copy / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    elif damage == "bad-tokenizer":
        (model_copy / "tokenizer.json").write_text("[]")
    else:
        config = json.loads((model_copy / "config.json").read_text())
        (model_copy / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 7}))
    with pytest.raises(LeanstackError) as err:
        load_query_encoder(model_copy)
    message = str(err.value)
    assert "\n" not in message
    assert str(model_copy) in message and "damaged" in message
    assert "leanstack chip tune-retriever" in message


def test_intact_copy_loads(model_copy: Path) -> None:
    encoder = NumpyEncoder(model_copy, "unused")
    assert encoder.encode(["yosys"]).shape == (1, 384)


def test_damaged_directory_under_torch_is_a_one_line_error(model_copy: Path) -> None:
    from leanstack.chipexpert.dense import load_model

    truncate(model_copy / "model.safetensors", 1000)
    with pytest.raises(LeanstackError, match="cannot be loaded") as err:
        load_model(threads=1, path=model_copy)
    assert "\n" not in str(err.value) and str(model_copy) in str(err.value)
