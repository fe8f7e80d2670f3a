"""The ``leanstack`` command: parsing and wiring only; the work lives in the parts."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from leanstack.errors import LeanstackError

app = typer.Typer(help="leanstack: LeanKV, ChipExpert, Ursa, Sinan and Seer as usable software.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
micro = typer.Typer(help="The microservice substrate: apps, backends, load, experiments.",
                    no_args_is_help=True)
app.add_typer(micro, name="micro")
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
def micro_validate(app_file: str = typer.Argument(..., help="app name or path to an app .toml")) -> None:
    """Check an app file and print a one-line summary."""
    from leanstack.microservices.app import load_app

    a = load_app(app_file)
    print(f"ok: {a.name} — {len(a.services)} tiers, {len(a.classes)} request classes")


def main() -> None:
    """Entry point: run the CLI, turning user errors into one line on stderr."""
    try:
        app()
    except LeanstackError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
