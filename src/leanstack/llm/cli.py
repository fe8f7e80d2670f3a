"""``leanstack llm``: serve a model with the continuous-batching engine, and benchmark it."""

from __future__ import annotations

from pathlib import Path

import typer

llm_app = typer.Typer(help="The LLM substrate: the serving engine and its OpenAI-compatible API.",
                      no_args_is_help=True)

_KV_HELP = ("KV format: fp16 (paged baseline), fp32, a LeanKV preset (lossless, balanced, "
            "aggressive, exact) or a LeanKV preset .toml file")


def served_name(model: str | None) -> str:
    """The model id the server answers to: ``smollm2`` for the bundled model, else the
    directory or file name."""
    if model is None or model == "smollm2":
        return "smollm2"
    return Path(model).name.removesuffix(".gguf") or "model"


@llm_app.command("serve")
def serve(
    model: str | None = typer.Option(None, help="Hugging Face dir, .gguf file or smollm2"),
    kv: str = typer.Option("fp16", "--kv", help=_KV_HELP),
    kv_budget_mb: float = typer.Option(64.0, help="KV cache budget in MiB (all pages)"),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    port: int = typer.Option(8000, help="port to bind"),
    max_num_seqs: int = typer.Option(64, help="most sequences in one step"),
    max_batched_tokens: int = typer.Option(512, help="token budget of one step"),
    max_prefill_tokens: int | None = typer.Option(
        None, help="prompt tokens of one step while requests decode (protects time per output "
        "token; default: the engine's, 64); 0: no cap beyond --max-batched-tokens"),
    max_pending: int = typer.Option(256, help="requests queued or running before HTTP 429"),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /v1/models, /health, /metrics)."""
    from leanstack.errors import LeanstackError
    from leanstack.llm import load_model
    from leanstack.llm.engine import EngineConfig, ModelShape, make_kv_format
    from leanstack.llm.engine.server import serve as run_server

    make_kv_format(kv, ModelShape(num_layers=1, num_kv_heads=1, head_dim=64))  # name check
    if kv_budget_mb <= 0:
        raise LeanstackError(f"--kv-budget-mb must be > 0, got {kv_budget_mb}")
    if not 0 < port < 65536:
        raise LeanstackError(f"--port must be in 1..65535, got {port}")
    if max_prefill_tokens is not None and max_prefill_tokens < 0:
        raise LeanstackError(f"--max-prefill-tokens must be >= 0, got {max_prefill_tokens}")
    config = EngineConfig(kv_budget_bytes=int(kv_budget_mb * 2**20), kv_format=kv,
                          max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens)
    if max_prefill_tokens is not None:
        config.max_prefill_tokens = max_prefill_tokens or None
    loaded = load_model(model)
    name = served_name(model)
    typer.echo(f"serving {name} on http://{host}:{port}/v1 (KV {kv}, {kv_budget_mb:g} MiB)")
    run_server(loaded, name, config, host=host, port=port, max_pending=max_pending)


@llm_app.command("bench-serve")
def bench_serve(
    endpoint: str = typer.Option("http://127.0.0.1:8000", help="a running server's base URL"),
    requests: int = typer.Option(20, help="number of requests"),
    rate: float = typer.Option(4.0, help="offered load: Poisson arrivals, requests/s"),
    workload: str = typer.Option("long", help="long (384-640-token prompts, 96 out) or "
                                 "synthetic (~96-token prompts, 16-64 out)"),
    seed: int = typer.Option(0, help="seed of the prompts and arrival times"),
    out: Path | None = typer.Option(None, help="also write the summary as JSON here"),
) -> None:
    """Open-loop load (Poisson arrivals, streaming completions) against an OpenAI-compatible
    server; prints requests/s, output tokens/s, TTFT/TPOT p50/p99, peak running, preemptions."""
    import asyncio

    import httpx
    from rich.console import Console
    from rich.table import Table

    from leanstack.atomic import write_json
    from leanstack.errors import LeanstackError
    from leanstack.llm.engine.loadgen import drive, request_set

    if workload not in ("long", "synthetic"):
        raise LeanstackError(f"--workload must be long or synthetic, got {workload!r}")
    if requests < 1 or rate <= 0:
        raise LeanstackError("--requests must be >= 1 and --rate > 0")
    url = endpoint.rstrip("/").removesuffix("/v1")
    try:
        httpx.get(url + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        raise LeanstackError(f"no leanstack server answers at {url}/health ({e}); start one "
                             "with `leanstack llm serve`") from e
    console = Console()
    with console.status(f"{requests} requests at {rate:g}/s to {url} ..."):
        summary = asyncio.run(drive(url, request_set(workload, requests, seed), rate, seed))
    table = Table("metric", "value")
    for key, value in summary.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    if out is not None:
        write_json(out, {"endpoint": url, "workload": workload, "rate_rps": rate, **summary})
