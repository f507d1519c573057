"""The model CI/CD workflow: linted by real GitHub Actions linters (actionlint with shellcheck on every `run:` script,
zizmor's audits, and the SchemaStore workflow schema that check-jsonschema ships), and wired to the commands the README
promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "model-ci.yml"
BIN = Path(sys.executable).parent


def lint(path: Path) -> list[subprocess.CompletedProcess]:
    """The three linters on one workflow file, offline: actionlint, zizmor, check-jsonschema."""
    return [
        subprocess.run(
            [str(BIN / "actionlint"), "-shellcheck", str(BIN / "shellcheck"), "-no-color", str(path)],
            capture_output=True,
            text=True,
        ),
        subprocess.run([str(BIN / "zizmor"), "--offline", "--no-progress", str(path)], capture_output=True, text=True),
        subprocess.run(
            [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
            capture_output=True,
            text=True,
        ),
    ]


def test_the_workflow_passes_all_three_linters():
    for done in lint(WORKFLOW):
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("broken", "linter"),
    [
        (("steps.report.outputs.exit_code", "steps.reprot.outputs.exit_code"), 0),
        (('exit "$EXIT_CODE"', "exit $EXIT_CODE"), 0),
        (('--base "$BASE_REF"', '--base "${{ github.event.pull_request.head.ref }}"'), 1),
        (("runs-on: ubuntu-latest\n    timeout-minutes: 60", "runs_on: ubuntu-latest\n    timeout-minutes: 60"), 2),
    ],
    ids=[
        "unknown step id: actionlint",
        "unquoted variable: actionlint's shellcheck",
        "injected branch name: zizmor",
        "misspelled key: schema",
    ],
)
def test_the_linters_catch_a_broken_workflow(tmp_path, broken, linter):
    old, new = broken
    text = WORKFLOW.read_text()
    assert old in text
    bad = tmp_path / "model-ci.yml"
    bad.write_text(text.replace(old, new, 1))
    assert lint(bad)[linter].returncode != 0


def steps_of(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in job["steps"])


def test_pull_requests_report_and_comment_and_pushes_to_main_deliver():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    on = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "pull_request" in on and on["push"]["branches"] == ["main"]
    report, deliver = workflow["jobs"]["report"], workflow["jobs"]["deliver"]
    run = steps_of(report)
    for command in ("make install", "dvc pull", "retrainer ci report --base", "gh pr comment", "--edit-last"):
        assert command in run
    assert "actions/upload-artifact@" in run and report["permissions"]["pull-requests"] == "write"
    assert "origin/${{ github.base_ref }}" in str(report["steps"])
    delivered = steps_of(deliver)
    for command in (
        "make install",
        "dvc pull",
        "dvc repro evaluate",
        "dvc push",
        'prefect deployment run "$SHIP_DEPLOYMENT"',
    ):
        assert command in delivered
    assert delivered.index("dvc push") < delivered.index("prefect deployment run")
    secrets = {value for value in deliver["env"].values() if "secrets." in value}
    assert "${{ secrets.PREFECT_API_URL }}" in secrets and not any("MLFLOW" in value for value in secrets)


def test_the_deliver_job_starts_the_ship_deployment_that_retrainer_deploy_registers():
    """The default deployment CD starts is the ship flow's, under the name `retrainer deploy` gives it."""
    from retrainer.config import load_params
    from retrainer.flow_runs import SHIP, load_flow

    deliver = yaml.safe_load(WORKFLOW.read_text())["jobs"]["deliver"]
    expected = f"{load_flow(SHIP).name}/{load_params(ROOT / 'params.yaml').retrain.ship_deployment}"
    assert expected == "ship/ship-on-merge"
    assert deliver["env"]["SHIP_DEPLOYMENT"] == f"${{{{ vars.SHIP_DEPLOYMENT || '{expected}' }}}}"
