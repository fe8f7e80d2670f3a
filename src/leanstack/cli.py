"""The ``leanstack`` command: parsing and wiring only; the work lives in the parts."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from leanstack.chipexpert.cli import chip_app
from leanstack.errors import LeanstackError
from leanstack.leankv.cli import kv_app
from leanstack.sinan.cli import sinan_app
from leanstack.ursa.cli import ursa_app

app = typer.Typer(help="leanstack: LeanKV, ChipExpert, Ursa, Sinan and Seer as usable software.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
micro = typer.Typer(help="The microservice substrate: apps, backends, load, experiments.",
                    no_args_is_help=True)
app.add_typer(micro, name="micro")
app.add_typer(chip_app, name="chip")
app.add_typer(kv_app, name="kv")
app.add_typer(ursa_app, name="ursa")
app.add_typer(sinan_app, name="sinan")
err = Console(stderr=True)


@micro.command("apps")
def micro_apps() -> None:
    """List the shipped apps with their tiers and request classes."""
    from leanstack.microservices.app import app_names, load_app

    for name in app_names():
        a = load_app(name)
        classes = ", ".join(f"{c.name} ({c.sla.key}<={c.sla.ms:g} ms)" for c in a.classes.values())
        print(f"{name}: {len(a.services)} tiers; classes: {classes}")


@micro.command("validate")
def micro_validate(
    app_file: str = typer.Argument(..., help="app name or path to an app .toml"),
) -> None:
    """Check an app file and print a one-line summary."""
    from leanstack.microservices.app import load_app

    a = load_app(app_file)
    print(f"ok: {a.name} — {len(a.services)} tiers, {len(a.classes)} request classes")


@micro.command("run")
def micro_run(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    backend: str = typer.Option("sim", help="sim | local"),
    controller: str = typer.Option("static", help="static | hpa | any registered controller"),
    load: str = typer.Option("poisson", help="constant | poisson | diurnal | step | trace"),
    rps: float = typer.Option(100.0, help="mean request rate (requests/s)"),
    duration: float = typer.Option(60.0, help="run length in seconds"),
    out: Path = typer.Option(..., help="where to write the result JSON"),
    trace: str | None = typer.Option(None, help="per-second rate file for --load trace"),
    interval: float = typer.Option(1.0, help="control interval in seconds"),
    seed: int = typer.Option(0, help="seed of the arrivals (and the simulator)"),
    report: Path | None = typer.Option(None, help="also write an HTML report here"),
    time_scale: float | None = typer.Option(None, help="HPA: multiply its time constants"),
    opt: list[str] = typer.Option([], "--opt", help="controller option KEY=VALUE (repeatable), "
                                  "e.g. --opt plan=runs/ursa-plan.json"),
    spans: Path | None = typer.Option(None, help="write the run's spans here (OTLP JSON lines)"),
    calibration: Path | None = typer.Option(None, help="sim: service-time model to use"),
    amplitude: float = typer.Option(0.5, help="diurnal/step load: swing around the mean"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run one experiment: an app on a backend under open-loop load, managed by a controller."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.controllers import make_controller
    from leanstack.microservices.load import LoadSpec
    from leanstack.microservices.runner import make_backend, run_experiment

    spec = load_app(app_name)
    ctrl = make_controller(controller, time_scale=time_scale, **parse_options(opt))
    load_spec = LoadSpec(load, rps, duration, seed=seed, amplitude=amplitude, trace=trace)
    opts: dict[str, object] = {}
    if backend == "sim":
        opts = {"seed": seed, "calibration": calibration, "record_spans": spans is not None}
    elif calibration is not None:
        raise LeanstackError("--calibration only applies to the sim backend — drop it")
    be = make_backend(backend, interval, **opts)
    try:
        result = run_experiment(spec, be, ctrl, load_spec, out, report_html=report,
                                progress=not quiet, spans_out=spans)
    except KeyboardInterrupt:
        err.print(f"interrupted — partial result in {out}")
        sys.exit(130)
    s = result["summary"]
    print(f"{spec.name} on {backend} with {controller}: violation rate {s['violation_rate']:.1%}, "
          f"mean CPU {s['mean_cpu']:.2f} cores, {s['requests']} requests "
          f"({s['errors']} failed)")
    print(f"result: {out}" + (f"  report: {report}" if report else "")
          + (f"  spans: {spans}" if spans else ""))


@micro.command("report")
def micro_report(
    result_file: Path = typer.Argument(..., help="a result JSON written by 'micro run'"),
    out: Path = typer.Option(..., help="where to write the HTML report"),
) -> None:
    """Render the HTML report of an existing result."""
    from leanstack.microservices.report import write_report
    from leanstack.microservices.result import load_result

    write_report(load_result(result_file), out)
    print(f"report: {out}")


@micro.command("calibrate")
def micro_calibrate(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    spans: Path = typer.Option(..., help="spans from a local run (micro run --spans FILE)"),
    out: Path = typer.Option(..., help="where to write the calibration JSON"),
    result: Path | None = typer.Option(
        None, help="the same run's result JSON: tier CPU and latencies fit per-tier CPU, storage "
        "op cost and the per-call delay"),
) -> None:
    """Fit the simulator's service-time model from spans (and the result) of a local run."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.calibrate import calibrate, observations_of, save_calibration
    from leanstack.microservices.runner import read_spans

    spec = load_app(app_name)
    observations, host_cores = observations_of(result, spec) if result else (None, None)
    model = calibrate(spec, read_spans(spans), observations, host_cores=host_cores)
    save_calibration(model, out)
    source = f"{spans} and {result}" if result else f"{spans}"
    print(f"calibration for {spec.name} from {source}: {out}")


@app.command("demo")
def demo(
    only: str | None = typer.Option(None, help="comma-separated sections: micro, ursa, sinan, "
                                    "kv, chip (default: all)"),
    duration: float = typer.Option(90.0, help="micro/ursa: seconds of load"),
    rps: float = typer.Option(100.0, help="micro/ursa: mean request rate of the diurnal load"),
    out_dir: Path = typer.Option(Path("runs/demo"), help="where results and reports go"),
) -> None:
    """Every part on embedded defaults: microservices (HPA, Ursa, Sinan), LeanKV, ChipExpert."""
    from leanstack.demo import SECTIONS, run

    sections = only.split(",") if only else list(SECTIONS)
    failed = run(sections, out_dir, duration=duration, rps=rps)
    print(f"demo outputs: {out_dir.resolve()}")
    if failed:
        raise LeanstackError(f"demo section(s) {', '.join(failed)} failed (see above)")


def parse_options(pairs: list[str]) -> dict[str, object]:
    """``["plan=p.json", "headroom=0.1"]`` -> ``{"plan": "p.json", "headroom": 0.1}``."""
    opts: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LeanstackError(f"--opt '{pair}' is not KEY=VALUE — write e.g. --opt headroom=0.1")
        opts[key.replace("-", "_")] = _number_or_text(value)
    return opts


def _number_or_text(value: str) -> object:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main() -> None:
    """Entry point: run the CLI, turning user errors into one line on stderr."""
    try:
        rc = app(standalone_mode=False)
    except LeanstackError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as e:  # command-line parsing: bad option, missing value, ...
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if "\n" in message or not message:  # help for a bare command group (maybe printed)
            print(message, end="")
        else:
            ctx = getattr(e, "ctx", None)
            hint = f" — see '{ctx.command_path} --help'" if ctx else ""
            err.print(f"[red]error:[/red] {message}{hint}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    if isinstance(rc, int):
        sys.exit(rc)


if __name__ == "__main__":
    main()
