"""The three training stages on TRL trainers (no hand-written loops).

- **cpt**: continued pre-training on the raw IC-design text, packed into ``max_seq_len``
  windows (``SFTTrainer`` as a language-model trainer on a ``text`` column).
- **sft**: instruction tuning on chat pairs rendered with the model's chat template, loss on
  the assistant's reply only (prompt/completion format).
- **dpo**: preference alignment (``DPOTrainer``) on grounded (chosen) vs failing (rejected)
  replies.

Each stage starts from the previous stage's merged model (cpt from the base model), keeps
checkpoints under ``<run>/<stage>/checkpoints`` (``--resume`` continues the last one), and ends
with merged weights + tokenizer + ``training.json`` + a model card in ``<run>/<stage>/model``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from leanstack.atomic import write_json
from leanstack.chipexpert.training.card import write_card
from leanstack.chipexpert.training.config import STAGES, StageSection, TrainConfig
from leanstack.errors import LeanstackError
from leanstack.provenance import package_versions

TRAINING_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")

PREVIOUS = {"cpt": None, "sft": "cpt", "dpo": "sft"}
DATA_FILES = {"cpt": "cpt.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl"}
REQUIRED = {"cpt": ("text",), "sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}


def run_dir(cfg: TrainConfig, out: Path | None = None) -> Path:
    """The run's root directory: ``--out`` or the config's ``out``."""
    return Path(out) if out is not None else Path(cfg.out)


def data_dir(run: Path) -> Path:
    """Where ``chip train data`` writes the data sets of a run."""
    return run / "data"


def model_dir(run: Path, stage: str) -> Path:
    """The merged model a stage leaves behind."""
    return run / stage / "model"


def checkpoint_dir(run: Path, stage: str) -> Path:
    """The trainer's checkpoints of a stage."""
    return run / stage / "checkpoints"


def input_model(cfg: TrainConfig, run: Path, stage: str) -> Path:
    """The model a stage starts from: the base model for cpt, else the previous stage's."""
    from leanstack.llm.loading import resolve_model_dir

    prev = PREVIOUS[stage]
    if prev is None:
        return resolve_model_dir(cfg.model)
    folder = model_dir(run, prev)
    if not (folder / "config.json").is_file():
        raise LeanstackError(f"stage {stage} starts from the {prev} model and {folder} has none; "
                             f"run 'leanstack chip train {prev}' with this config first")
    return folder


def read_records(path: Path, stage: str) -> list[dict[str, Any]]:
    """The JSONL records of a stage's data file, each checked for the keys the stage needs."""
    if not path.is_file():
        raise LeanstackError(f"{path}: no {stage} data; run 'leanstack chip train data' with "
                             "this config first")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LeanstackError(f"{path}:{n}: not JSON ({e.msg}); rebuild the data") from None
        missing = [k for k in REQUIRED[stage] if k not in rec] if isinstance(rec, dict) else ["*"]
        if missing:
            raise LeanstackError(f"{path}:{n}: record lacks {', '.join(missing)}; rebuild the "
                                 "data with 'leanstack chip train data'")
        records.append(rec)
    if not records:
        raise LeanstackError(f"{path}: no records; rebuild the data with 'leanstack chip train "
                             "data'")
    return records


def _system() -> dict[str, str]:
    from leanstack.chipexpert.assistant import SYSTEM_PROMPT

    # The assistant sends this system turn with every question; training with it keeps the
    # prompt the model sees at serving time identical to the one it was tuned on.
    return {"role": "system", "content": SYSTEM_PROMPT}


def _user_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    return turns if turns and turns[0]["role"] == "system" else [_system(), *turns]


def stage_rows(stage: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in the shape the stage's TRL trainer reads."""
    if stage == "cpt":
        return [{"text": r["text"]} for r in records if r["text"].strip()]
    if stage == "sft":
        rows = []
        for r in records:
            msgs = r["messages"]
            if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
                raise LeanstackError(f"sft record {r.get('id', '?')}: messages must end with the "
                                     "assistant's reply; rebuild the data")
            rows.append({"prompt": _user_turns(msgs[:-1]), "completion": [dict(msgs[-1])]})
        return rows
    return [{"prompt": _user_turns(r["prompt"]), "chosen": [dict(m) for m in r["chosen"]],
             "rejected": [dict(m) for m in r["rejected"]]} for r in records]


def file_digest(path: Path) -> str:
    """sha256 of a file (records in the model card which data a model saw)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lora(section: StageSection) -> Any:
    if section.method != "lora":
        return None
    from peft import LoraConfig

    lo = section.lora
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                      target_modules=lo.target_modules, task_type="CAUSAL_LM")


def _common_args(stage: str, section: StageSection, ckpt: Path, seed: int) -> dict[str, Any]:
    import torch

    return {
        "output_dir": str(ckpt), "learning_rate": section.learning_rate,
        "num_train_epochs": section.epochs, "max_steps": section.max_steps,
        "per_device_train_batch_size": section.batch_size,
        "gradient_accumulation_steps": section.grad_accum,
        "warmup_steps": section.warmup_ratio, "weight_decay": section.weight_decay,
        "lr_scheduler_type": section.lr_scheduler, "save_strategy": "steps",
        "save_steps": section.save_steps, "save_total_limit": section.save_total_limit,
        "logging_steps": section.logging_steps, "bf16": section.bf16,
        "activation_checkpointing": section.gradient_checkpointing, "report_to": "none",
        "dataloader_pin_memory": torch.cuda.is_available(),
        "disable_tqdm": True, "seed": seed, "data_seed": seed,
        "include_num_input_tokens_seen": "non_padding", "max_length": section.max_seq_len,
        "dataset_num_proc": None, "run_name": stage,
        "train_sampling_strategy": "group_by_length" if section.group_by_length else "random",
    }


def make_trainer(stage: str, cfg: TrainConfig, model: Any, tokenizer: Any,
                 rows: list[dict[str, Any]], ckpt: Path, callbacks: list[Any]) -> Any:
    """The configured TRL trainer of ``stage``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    section = cfg.stage(stage)
    common = _common_args(stage, section, ckpt, cfg.seed)
    dataset = Dataset.from_list(rows)
    if stage == "dpo":
        args = DPOConfig(**common, beta=cfg.dpo.beta)
        return DPOTrainer(model=model, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=_lora(section),
                          callbacks=callbacks)
    if stage == "cpt":
        args = SFTConfig(**common, packing=True, packing_strategy="wrapped",
                         dataset_text_field="text")
    else:
        args = SFTConfig(**common, completion_only_loss=True)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=_lora(section), callbacks=callbacks)


def _last_checkpoint(ckpt: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def _save_merged(trainer: Any, tokenizer: Any, target: Path) -> Any:
    """Merge a LoRA adapter (if any), save weights + tokenizer (replacing ``target`` whole) and
    return the merged model."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model


def run_stage(cfg: TrainConfig, stage: str, out: Path | None = None, resume: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train one stage and save its merged model with a model card; returns the run record
    (also written as ``training.json`` next to the weights)."""
    import datasets
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

    from leanstack.chipexpert.training.progress import TrainingProgress

    if stage not in STAGES:
        raise LeanstackError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    run = run_dir(cfg, out)
    section = cfg.stage(stage)
    source = input_model(cfg, run, stage)
    data_file = data_dir(run) / DATA_FILES[stage]
    rows = stage_rows(stage, read_records(data_file, stage))
    ckpt = checkpoint_dir(run, stage)
    resume_from = None
    if resume:
        resume_from = _last_checkpoint(ckpt)
        if resume_from is None:
            raise LeanstackError(f"no checkpoint in {ckpt} to resume; run the stage without "
                                 "--resume")
    elif ckpt.exists():
        shutil.rmtree(ckpt)  # a fresh run: old checkpoints would be mixed with the new ones
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if section.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    before = _weight_fingerprint(model)
    bar = TrainingProgress(stage, show=progress)
    trainer = make_trainer(stage, cfg, model, tokenizer, rows, ckpt, [bar])
    trainer.remove_callback(PrinterCallback)  # the bar and training.json carry the losses
    if len(trainer.train_dataset) == 0:
        raise LeanstackError(f"every {stage} record was dropped: none fits {section.max_seq_len} "
                             f"tokens with its reply; raise [{stage}] max_seq_len")
    result = trainer.train(resume_from_checkpoint=resume_from)
    target = model_dir(run, stage)
    main = trainer.accelerator.is_main_process
    merged = _save_merged(trainer, tokenizer, target) if main else trainer.model
    losses = bar.losses or [(bar.last_step, float(result.training_loss))]
    record = {
        "stage": stage, "config_name": cfg.name, "base_model": cfg.model,
        "input_model": str(source),
        "method": section.method, "hyperparameters": section.model_dump(mode="json"),
        "seed": cfg.seed,
        "data": {"file": data_file.name, "records": len(rows), "sha256": file_digest(data_file),
                 "decontamination": decontamination_summary(data_dir(run))},
        "steps": {"first": bar.first_step, "last": bar.last_step,
                  "resumed_from": Path(resume_from).name if resume_from else None},
        "wall_s": round(bar.wall_s, 2), "tokens": bar.tokens,
        "tokens_per_s": round(bar.tokens / bar.wall_s, 1) if bar.wall_s else 0.0,
        "train_loss": round(float(result.training_loss), 4),
        "loss_first": round(losses[0][1], 4), "loss_last": round(losses[-1][1], 4),
        "loss_history": [[s, round(v, 4)] for s, v in losses],
        "weights_changed": _weight_fingerprint(merged) != before,
        "versions": package_versions(TRAINING_PACKAGES), "threads": torch.get_num_threads(),
    }
    if main:
        write_json(target / "training.json", record)
        write_card(target)
    return record


def _weight_fingerprint(model: Any) -> list[float]:
    """Per-tensor sums of squares in float64 (did training move the weights?)."""
    import torch

    with torch.no_grad():
        return [float(p.detach().double().pow(2).sum()) for p in model.parameters()]


def decontamination_summary(folder: Path) -> dict[str, Any]:
    """Records removed per evaluation set and split, and the de-duplication counts, from the
    data builder's ``decontamination.json`` (empty when there is none)."""
    report = folder / "decontamination.json"
    if not report.is_file():
        return {}
    try:
        data = json.loads(report.read_text())
        removed = {name: {split: len(v["removed"]) for split, v in s["splits"].items()}
                   for name, s in data["sets"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}
    return {"rule": data.get("rule", ""), "removed": removed, "dedup": data.get("dedup", {})}
