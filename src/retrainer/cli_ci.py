"""`retrainer ci`: commands for a project's continuous integration (a model change judged in a pull request)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ci_app = typer.Typer(help="Continuous integration for model changes.", no_args_is_help=True)


@ci_app.command("report")
def report(
    base: Annotated[str, typer.Option("--base", help="The git revision to compare with, e.g. origin/main.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, report.json and the plots.")] = Path(
        "ci-report"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json instead of the summary.")] = False,
) -> None:
    """Reproduce this checkout's pipeline and judge its model against the base revision's with the real gate.

    The base's model and holdout come from its dvc.lock through the DVC cache or remote, never by retraining.

    Exit codes: 0 gate passed (or no model change), 1 gate failed or a new batch fails validation, 2 could not
    decide (no base model available, the pipeline failed).
    """
    import json

    from retrainer.app.model_ci import format_report, report_model_change, write_report
    from retrainer.config import ConfigError

    try:
        result = report_model_change(Path.cwd(), base, out.resolve())
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    written = write_report(result, out.resolve())
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str, allow_nan=False))
    else:
        typer.echo(format_report(result, written))
    raise typer.Exit(result.exit_code)
