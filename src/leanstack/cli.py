"""The ``leanstack`` command: parsing and wiring only; the work lives in the parts."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from leanstack.chipexpert.cli import chip_app
from leanstack.errors import LeanstackError
from leanstack.leankv.cli import kv_app
from leanstack.llm.cli import llm_app
from leanstack.seer.cli import seer_app
from leanstack.sinan.cli import sinan_app
from leanstack.ursa.cli import ursa_app

app = typer.Typer(help="leanstack: LeanKV, ChipExpert, Ursa, Sinan and Seer as usable software.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
micro = typer.Typer(help="The microservice substrate: apps, backends, load, experiments.",
                    no_args_is_help=True)
app.add_typer(micro, name="micro")
app.add_typer(chip_app, name="chip")
app.add_typer(kv_app, name="kv")
app.add_typer(llm_app, name="llm")
app.add_typer(ursa_app, name="ursa")
app.add_typer(sinan_app, name="sinan")
app.add_typer(seer_app, name="seer")
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
    backend: str = typer.Option("sim", help="sim | local (k8s: see 'micro control')"),
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
    backend_opt: list[str] = typer.Option([], "--backend-opt", help="backend option KEY=VALUE "
                                          "(repeatable), e.g. local: cfs_period_ms=20, "
                                          "cfs_burst=0.5"),
    calibration: str | None = typer.Option(
        None, help="sim: service-time model to use, a file from 'micro calibrate' or 'shipped' "
        "(the app's shipped calibration, fitted on real processes)"),
    amplitude: float = typer.Option(0.5, help="diurnal/step load: swing around the mean"),
    detector: str | None = typer.Option(None, help="act on anomaly alerts too, e.g. 'seer'"),
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
    if backend == "k8s":
        raise LeanstackError("the k8s backend sends no load — drive a cluster with 'leanstack "
                             "micro control --backend k8s'")
    backend_opts = parse_options(backend_opt, "--backend-opt", "cfs_period_ms=20")
    be = make_backend(backend, interval, **{**opts, **backend_opts})
    det = None
    if detector is not None:
        from leanstack.microservices.detector import make_detector

        det = make_detector(detector)
    try:
        result = run_experiment(spec, be, ctrl, load_spec, out, report_html=report,
                                progress=not quiet, spans_out=spans, detector=det)
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
    from leanstack.microservices.calibrate import calibrate, observations_of
    from leanstack.microservices.calibration import save_calibration
    from leanstack.microservices.runner import read_spans

    spec = load_app(app_name)
    observations, host_cores = observations_of(result, spec) if result else (None, None)
    model = calibrate(spec, read_spans(spans), observations, host_cores=host_cores)
    save_calibration(model, out)
    source = f"{spans} and {result}" if result else f"{spans}"
    print(f"calibration for {spec.name} from {source}: {out}")


@micro.command("control")
def micro_control(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    backend: str = typer.Option("k8s", help="k8s (the app's real traffic is the load)"),
    controller: str = typer.Option("ursa", help="ursa | sinan | hpa | static | any registered"),
    out: Path = typer.Option(..., help="where to write the result JSON (after every interval)"),
    duration: float | None = typer.Option(None, help="seconds to run (default: until Ctrl-C)"),
    interval: float = typer.Option(5.0, help="control interval in seconds"),
    prometheus: str = typer.Option("http://127.0.0.1:9090", help="Prometheus scraping the app"),
    scrape: float = typer.Option(5.0, help="Prometheus' scrape interval in seconds"),
    namespace: str = typer.Option("leanstack", help="Kubernetes namespace of the app"),
    deploy: bool = typer.Option(False, "--deploy", help="apply the app's manifests first "
                                "(default: drive the deployment already running)"),
    keep: bool = typer.Option(False, "--keep", help="with --deploy: leave the app applied"),
    image: str = typer.Option("leanstack:0.1.0", help="with --deploy: the logic tiers' image"),
    kubeconfig: str | None = typer.Option(None, help="kubeconfig file (default: in-cluster, "
                                          "then KUBECONFIG or ~/.kube/config)"),
    context: str | None = typer.Option(None, help="kubeconfig context"),
    api_url: str | None = typer.Option(None, help="API server URL without credentials (e.g. "
                                       "'kubectl proxy' at http://127.0.0.1:8001)"),
    otlp_listen: str | None = typer.Option(None, help="HOST:PORT to receive the workers' spans "
                                           "over OTLP/HTTP (e.g. 0.0.0.0:4318)"),
    otlp_endpoint: str | None = typer.Option(None, help="with --deploy: the URL the workers send "
                                             "spans to (reaching --otlp-listen)"),
    opt: list[str] = typer.Option([], "--opt", help="controller option KEY=VALUE (repeatable)"),
) -> None:
    """Run a controller against a running app, without the load generator."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.control import control
    from leanstack.microservices.controllers import make_controller
    from leanstack.microservices.runner import make_backend

    if backend != "k8s":
        raise LeanstackError(f"--backend {backend}: control mode drives a cluster — use --backend "
                             "k8s (other backends need 'leanstack micro run' and its load)")
    if keep and not deploy:
        raise LeanstackError("--keep only applies with --deploy (an adopted app is never removed)")
    if otlp_endpoint and not deploy:
        raise LeanstackError("--otlp-endpoint only applies with --deploy (an adopted app keeps "
                             "the endpoint it was exported with)")
    spec = load_app(app_name)
    ctrl = make_controller(controller, **parse_options(opt))
    be = make_backend("k8s", interval, prometheus=prometheus, scrape_s=scrape,
                      namespace=namespace, adopt=not deploy, keep=keep, image=image,
                      kubeconfig=kubeconfig, context=context, api_url=api_url,
                      otlp_listen=otlp_listen, otlp_endpoint=otlp_endpoint)
    try:
        result = control(spec, be, ctrl, out, duration_s=duration, log=err)
    except KeyboardInterrupt:
        err.print(f"stopped — the timeline so far is in {out}")
        sys.exit(130)
    print(f"{spec.name} on k8s with {controller}: {len(result['timeline'])} intervals, "
          f"violation rate {result['summary']['violation_rate']:.1%}; result: {out}")


@micro.command("export")
def micro_export(
    out_dir: Path = typer.Argument(..., help="directory to write the manifests into"),
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    to: str = typer.Option("k8s", "--to", help="target format: k8s"),
    image: str = typer.Option("leanstack:0.1.0", help="container image of the logic tiers"),
    namespace: str = typer.Option("leanstack", help="Kubernetes namespace of every object"),
    allocation: Path | None = typer.Option(
        None, help="JSON {tier: {cpu, replicas}} for the pods' CPU (default: every tier at max)"),
    hpa_pods: bool = typer.Option(False, "--hpa-pods", help="size the logic tiers' pods as the "
                                  "HPA model does (max_cpu / 4 each, its starting replicas)"),
    otlp_endpoint: str | None = typer.Option(None, help="OTLP/HTTP traces URL the workers send "
                                             "their spans to (e.g. where 'micro control "
                                             "--otlp-listen' listens)"),
) -> None:
    """Write Kubernetes manifests (Deployments, Services, ConfigMap, HPA, Prometheus config)."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.k8s.backend import read_allocation
    from leanstack.microservices.k8s.manifests import (
        ExportOptions,
        hpa_allocation,
        read_manifests,
        write_manifests,
    )
    from leanstack.microservices.k8s.validate import check_manifests, supported_versions

    if to != "k8s":
        raise LeanstackError(f"--to {to}: unknown target — use --to k8s")
    if hpa_pods and allocation:
        raise LeanstackError("--hpa-pods and --allocation both size the pods — give one")
    spec = load_app(app_name)
    opts = ExportOptions(image=image, namespace=namespace, otlp_endpoint=otlp_endpoint)
    alloc = read_allocation(allocation, spec) if allocation else None
    if hpa_pods:
        alloc = hpa_allocation(spec, opts)
    files = write_manifests(spec, out_dir, alloc, opts)
    versions = supported_versions()
    check_manifests(read_manifests(out_dir), versions)
    print(f"{spec.name}: {len(files)} files in {out_dir}, valid in Kubernetes "
          f"{versions[0]}–{versions[-1]}; apply with 'kubectl apply -f {out_dir}'")


@app.command("demo")
def demo(
    only: str | None = typer.Option(None, help="comma-separated sections: micro, ursa, sinan, "
                                    "seer, kv, chip (default: all)"),
    duration: float = typer.Option(90.0, help="micro/ursa: seconds of load"),
    rps: float = typer.Option(50.0, help="micro/ursa: mean request rate of the diurnal load "
                             "(50 is what a 2-core machine serves on real processes)"),
    out_dir: Path = typer.Option(Path("runs/demo"), help="where results and reports go"),
) -> None:
    """Every part on embedded defaults: microservices (HPA, Ursa, Sinan), LeanKV, ChipExpert."""
    from leanstack.demo import SECTIONS, run

    sections = only.split(",") if only else list(SECTIONS)
    failed = run(sections, out_dir, duration=duration, rps=rps)
    print(f"demo outputs: {out_dir.resolve()}")
    if failed:
        raise LeanstackError(f"demo section(s) {', '.join(failed)} failed (see above)")


def parse_options(pairs: list[str], flag: str = "--opt",
                  example: str = "headroom=0.1") -> dict[str, str]:
    """``["plan=p.json", "headroom=0.1"]`` -> ``{"plan": "p.json", "headroom": "0.1"}``; the
    controller's declared types convert them (see ``make_controller``). ``flag`` and
    ``example`` name the option in the error."""
    opts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LeanstackError(f"{flag} '{pair}' is not KEY=VALUE — write e.g. {flag} {example}")
        opts[key.replace("-", "_")] = value
    return opts


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
