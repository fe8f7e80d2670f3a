"""``leanstack sinan``: collect training data, train the models, explain them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from leanstack.errors import LeanstackError

sinan_app = typer.Typer(help="Sinan: ML-driven, QoS-aware microservice manager",
                        no_args_is_help=True)

EXPLAIN_SAMPLES = 128
MAX_REPEATS = 100  # 600 collection runs: days of simulated load, far beyond any useful dataset


@sinan_app.command("collect")
def collect_cmd(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    backend: str = typer.Option("sim", help="sim | local"),
    duration: float = typer.Option(120.0, help="seconds per collection run"),
    rps: float = typer.Option(600.0, help="reference load; runs at 25..125% of it + diurnal"),
    repeats: int = typer.Option(1, help="how many times to repeat the set of load levels"),
    seed: int = typer.Option(0, help="seed of the explorer, arrivals and simulator"),
    out: Path = typer.Option(Path("sinan-data.npz"), help="where to write the dataset"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    backend_opt: list[str] = typer.Option([], "--backend-opt", help="backend option KEY=VALUE "
                                          "(repeatable), e.g. local: cfs_period_ms=20"),
) -> None:
    """Run the bandit explorer at several load levels and write a training dataset."""
    from leanstack.cli import parse_options
    from leanstack.microservices.app import load_app
    from leanstack.sinan.dataset import collect, collection_loads
    from leanstack.sinan.features import HORIZON, WINDOW

    if not 1 <= repeats <= MAX_REPEATS:
        raise LeanstackError(f"--repeats must be in [1, {MAX_REPEATS}], got {repeats}")
    if duration < WINDOW + HORIZON:
        raise LeanstackError(f"--duration {duration:g} s gives no training sample: a run of D "
                             f"seconds gives D - {WINDOW + HORIZON - 1} — use at least "
                             f"{WINDOW + HORIZON} s (120 s is a useful run)")
    spec = load_app(app_name)
    loads = [ld for r in range(repeats)
             for ld in collection_loads(rps, duration, seed=seed + 100 * r)]
    data = collect(spec, loads, backend=backend, seed=seed, progress=not quiet,
                   backend_options=parse_options(backend_opt, "--backend-opt",
                                                 "cfs_period_ms=20"))
    data.save(out)
    m = data.meta
    print(f"{spec.name}: {len(data)} samples from {len(m['runs'])} runs "
          f"({m['collection_sim_s']:g} s of load, {m['collection_wall_s']:.1f} s wall), "
          f"violation share {data.arrays['violation'].mean():.1%}")
    print(f"dataset: {out}")


@sinan_app.command("train")
def train_cmd(
    data: Path = typer.Option(..., help="dataset written by 'sinan collect'"),
    out: Path = typer.Option(..., help="model directory to write"),
    epochs: int = typer.Option(200, help="CNN epochs (the paper's 200)"),
    seed: int = typer.Option(0, help="training seed"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train the CNN latency predictor and the violation predictor; validate on held-out runs."""
    import torch

    from leanstack.sinan.dataset import Dataset
    from leanstack.sinan.train import TrainConfig, split_runs, train

    if epochs < 1:
        raise LeanstackError(f"--epochs must be at least 1, got {epochs}")
    torch.set_num_threads(1)
    ds = Dataset.load(data)
    model, metrics = train(ds, TrainConfig(epochs=epochs, seed=seed), progress=not quiet)
    test = ds.subset(split_runs(ds.arrays["run"])["test"])
    keep = slice(0, min(EXPLAIN_SAMPLES, len(test)))
    model.save(out, explain={k: test.arrays[k][keep].astype("float16")
                             for k in ("sys", "lat", "proposal")})
    auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
    print(f"held-out runs ({metrics['samples']} samples): CNN p99 RMSE "
          f"{metrics['p99_rmse_ms']:.1f} ms ({metrics['p99_rmse_qos']:.1%} of "
          f"{metrics['qos_ms']:g} ms QoS); violation AUC {auc}, precision "
          f"{metrics['precision']:.2f}, recall {metrics['recall']:.2f}")
    print(f"model: {out}")


@sinan_app.command("explain")
def explain_cmd(
    model_dir: Path = typer.Option(..., "--model", help="model directory from 'sinan train'"),
    out: Path | None = typer.Option(None, help="write the plot here (PNG)"),
    data: Path | None = typer.Option(None, help="explain on this dataset's samples instead"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the numbers as JSON"),
) -> None:
    """Print which tiers and feature channels drive predicted violations (and plot them)."""
    from leanstack.atomic import write_bytes
    from leanstack.sinan.dataset import Dataset
    from leanstack.sinan.explain import explain_samples, explanation, plot, table
    from leanstack.sinan.model import SinanModel

    model = SinanModel.load(model_dir)
    if data is not None:
        ds = Dataset.load(data)
        if ds.meta["tiers"] != model.tiers:
            raise LeanstackError(f"dataset '{data}' is for app '{ds.meta['app']}', the model "
                                 f"for '{model.meta['app']}' — pass a dataset of that app")
        samples = {k: ds.arrays[k][:EXPLAIN_SAMPLES] for k in ("sys", "lat", "proposal")}
    else:
        samples = explain_samples(model_dir)
    expl = explanation(model, samples)
    print(f"{model.meta['app']}: {expl['samples']} held-out samples, mean predicted violation "
          f"probability {expl['mean_violation_prob']:.2f}")
    print(table(expl))
    if out is not None:
        plot(expl, out)
        print(f"plot: {out}")
    if json_out is not None:
        write_bytes(json_out, (json.dumps(expl, indent=1) + "\n").encode())
        print(f"json: {json_out}")
