"""The `retrainer` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from retrainer.config import PARAMS_ENV, ConfigError, load_params

app = typer.Typer(
    help="Keep a tabular model fresh: validate, version, train, gate, package and roll out each new batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Path | None,
    typer.Option("--params", help=f"Params file (default: ${PARAMS_ENV} or ./params.yaml).", show_default=False),
]


@app.callback()
def main(params: ParamsOption = None) -> None:
    """Keep a tabular model fresh. Every choice lives in params.yaml."""
    if params is not None:
        os.environ[PARAMS_ENV] = str(params.resolve())


def _params():
    try:
        return load_params()
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="ingest | split | train | evaluate | register")],
) -> None:
    """Run one pipeline stage in the current folder (this is what `dvc repro` calls)."""
    from retrainer.stages import STAGES

    if name not in STAGES:
        typer.secho(f"error: unknown stage '{name}'; choose from {', '.join(STAGES)}", fg="red", err=True)
        raise typer.Exit(2)
    result = STAGES[name](_params(), Path.cwd())
    typer.echo(f"{name}: done " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict | list)))


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo builds its own workspace; wiped at the start of every run.")
    ] = Path(".retrainer-demo"),
) -> None:
    """The main job on embedded defaults: build the training set from the seed data, train, evaluate, register."""
    from retrainer.demo import run_demo

    run_demo(Path.cwd(), workdir.resolve(), params_file=os.environ.get(PARAMS_ENV))


if __name__ == "__main__":
    app()
