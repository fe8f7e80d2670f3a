"""``leanstack chip train``: build the data, run CPT -> SFT -> DPO, evaluate (wiring only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

train_app = typer.Typer(help="Train ChipExpert: data, continued pre-training, SFT, DPO, "
                        "evaluation, all from one config (configs/chip/<name>.toml).",
                        no_args_is_help=True)

_CONFIG_HELP = "training config: a TOML file or the name of one in configs/chip/"
_OUT_HELP = "run directory (default: the config's 'out', runs/chip/<name>)"
_RESUME_HELP = "continue from the stage's last checkpoint (default: start the stage afresh)"
_DIR_HELP = "knowledge-base directory for retrieval (default: the user cache dir)"


def _config(path: str) -> Any:
    from leanstack.chipexpert.training.config import load_config

    return load_config(path)


@train_app.command("data")
def data(config: str = typer.Option(..., "--config", help=_CONFIG_HELP),
         out: Path | None = typer.Option(None, "--out", help=_OUT_HELP)) -> None:
    """Build the CPT, SFT and DPO data sets (decontaminated) into <run>/data."""
    from leanstack.chipexpert.training.datasets import build_training_data
    from leanstack.chipexpert.training.stages import data_dir, run_dir

    cfg = _config(config)
    folder = data_dir(run_dir(cfg, out))
    build_training_data(folder, seed=cfg.data.seed, max_cpt_records=cfg.data.max_cpt_records,
                        max_sft=cfg.data.max_sft, max_dpo=cfg.data.max_dpo)
    print(f"data: {folder}")


def _stage(stage: str, config: str, out: Path | None, resume: bool) -> None:
    from leanstack.chipexpert.training.stages import model_dir, run_dir, run_stage

    cfg = _config(config)
    rec = run_stage(cfg, stage, out, resume=resume)
    print(f"{stage}: steps {rec['steps']['first']}->{rec['steps']['last']}, loss "
          f"{rec['loss_first']} -> {rec['loss_last']}, {rec['wall_s']:.0f} s, "
          f"{rec['tokens_per_s']:.0f} tokens/s")
    print(f"model: {model_dir(run_dir(cfg, out), stage)}")


@train_app.command("cpt")
def cpt(config: str = typer.Option(..., "--config", help=_CONFIG_HELP),
        out: Path | None = typer.Option(None, "--out", help=_OUT_HELP),
        resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP)) -> None:
    """Continued pre-training on the IC-design text, from the config's base model."""
    _stage("cpt", config, out, resume)


@train_app.command("sft")
def sft(config: str = typer.Option(..., "--config", help=_CONFIG_HELP),
        out: Path | None = typer.Option(None, "--out", help=_OUT_HELP),
        resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP)) -> None:
    """Instruction tuning on the chat pairs, from the CPT model."""
    _stage("sft", config, out, resume)


@train_app.command("dpo")
def dpo(config: str = typer.Option(..., "--config", help=_CONFIG_HELP),
        out: Path | None = typer.Option(None, "--out", help=_OUT_HELP),
        resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP)) -> None:
    """Preference alignment (DPO) on grounded vs failing replies, from the SFT model."""
    _stage("dpo", config, out, resume)


@train_app.command("eval")
def evaluate(config: str = typer.Option(..., "--config", help=_CONFIG_HELP),
             out: Path | None = typer.Option(None, "--out", help=_OUT_HELP),
             stages: list[str] = typer.Option([], "--stage", help="evaluate only these (base, "
                                              "cpt, sft, dpo); repeatable; default: all present"),
             directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP)) -> None:
    """Evaluate the base model and every trained stage (results: <run>/eval, model cards)."""
    from leanstack.chipexpert.training.evaluate import evaluate_stages

    for label, rec in evaluate_stages(_config(config), out, stages or None, directory).items():
        ppl = ", ".join(f"{k} {v['perplexity']:.2f}" for k, v in rec["perplexity"].items())
        bench = ", ".join(f"{k} {v['summary']['overall']['mean']:.3f}"
                          for k, v in rec["bench"].items())
        held = ", ".join(f"{k} {v['mean_grade']:.3f}"
                         for k, v in rec.get("heldout_questions", {}).items() if v.get("n"))
        print(f"{label}: perplexity {ppl or '-'}; bench {bench or '-'}; held-out questions "
              f"{held or '-'}; verilog pass@1 {rec['verilog'].get('pass_at_1', '-')}")


@train_app.command("all")
def run_all(config: str = typer.Option(..., "--config", help=_CONFIG_HELP),
            out: Path | None = typer.Option(None, "--out", help=_OUT_HELP),
            directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP)) -> None:
    """data, cpt, sft, dpo, then eval, in one go."""
    data(config, out)
    for stage in ("cpt", "sft", "dpo"):
        _stage(stage, config, out, resume=False)
    evaluate(config, out, [], directory)
