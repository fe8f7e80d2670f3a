"""The training config: one TOML file (``configs/chip/<name>.toml``) names the base model, the
data, the three stages (CPT, SFT, DPO; full fine-tuning or LoRA each) and the evaluation.

A bad file is one ``LeanstackError`` naming the file, the key and what is expected.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leanstack.errors import LeanstackError

STAGES = ("cpt", "sft", "dpo")
# Where the shipped configs live in a checkout (a bare ``--config NAME`` is looked up here).
CONFIG_DIR = Path(__file__).resolve().parents[4] / "configs" / "chip"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSection(_Strict):
    """LoRA adapter settings; the adapter is merged into the weights when the stage ends."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class StageSection(_Strict):
    """One training stage. ``max_steps`` > 0 wins over ``epochs``."""

    method: Literal["full", "lora"] = "full"
    learning_rate: float = Field(5e-5, gt=0.0, lt=1.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(512, ge=16)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_scheduler: str = "cosine"
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    gradient_checkpointing: bool = False
    # batches of examples of similar length (less padding, so fewer tokens computed per step);
    # CPT packs its windows and needs none
    group_by_length: bool = False
    lora: LoraSection = LoraSection()


class DpoSection(StageSection):
    """DPO adds ``beta``, how far the policy may move from the reference model."""

    beta: float = Field(0.1, gt=0.0)

    @field_validator("group_by_length")
    @classmethod
    def _no_lengths(cls, on: bool) -> bool:
        if on:
            raise ValueError("a DPO pair has no single length to group by; set it for sft only")
        return on


class DataSection(_Strict):
    """How ``chip train data`` builds the data sets (limits are record counts; none = all)."""

    seed: int = 0
    max_cpt_records: int | None = Field(None, ge=1)
    max_sft: int | None = Field(None, ge=1)
    max_dpo: int | None = Field(None, ge=1)


class EvalSection(_Strict):
    """Per-stage evaluation: ChipICD-Bench items per domain and type (``mcq_per_domain``, when
    set, for the MCQs, which are cheap to score), Verilog items, held-out chunk-level questions
    (their test half), perplexity budget."""

    bench_per_domain: int = Field(2, ge=0)
    bench_types: list[Literal["open", "mcq", "numeric", "spice"]] = ["open", "mcq", "numeric"]
    mcq_per_domain: int | None = Field(None, ge=0)
    verilog_items: int = Field(8, ge=0)
    heldout_questions: int = Field(12, ge=0)
    perplexity_tokens: int = Field(8192, ge=64)
    perplexity_window: int = Field(256, ge=16)
    rag: list[bool] = [False, True]
    k: int = Field(3, ge=1)

    @field_validator("bench_types")
    @classmethod
    def _distinct_types(cls, types: list[str]) -> list[str]:
        if len(set(types)) != len(types):
            raise ValueError("lists a type twice; name each type once")
        return types


class TrainConfig(_Strict):
    """A whole training run."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    model: str = "smollm2"
    out: str = ""
    seed: int = 0
    threads: int = Field(0, ge=0)
    data: DataSection = DataSection()
    cpt: StageSection = StageSection()
    sft: StageSection = StageSection()
    dpo: DpoSection = DpoSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _default_out(self) -> TrainConfig:
        if not self.out:
            self.out = f"runs/chip/{self.name}"
        return self

    def stage(self, name: str) -> StageSection:
        """The section of stage ``name`` (cpt, sft or dpo)."""
        if name not in STAGES:
            raise LeanstackError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}")
        return getattr(self, name)


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given, else a bare name looked up among the shipped configs."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if shipped.is_file() and p.parent == Path("."):
        return shipped
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.is_dir() else []
    raise LeanstackError(f"config {str(path)!r} not found; pass a TOML file"
                         + (f" or one of {', '.join(names)}" if names else ""))


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}; remove it (see configs/chip/smollm2-cpu.toml)"
    if first["type"] == "missing":
        return f"key {where!r} is missing; add it"
    return f"key {where!r}: {first['msg']} (got {first.get('input')!r}); fix the value"


def parse_config(data: dict, where: str = "config") -> TrainConfig:
    """Validate a config dict; a problem is one line naming ``where``, the key and the fix."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise LeanstackError(f"{where}: {_describe(e)}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config file (or a shipped config by name)."""
    p = resolve_config_path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise LeanstackError(f"{p}: not valid TOML ({e}); fix the syntax") from None
    except OSError as e:
        raise LeanstackError(f"{p}: cannot read ({e.strerror}); check the path") from None
    return parse_config(data, str(p))
