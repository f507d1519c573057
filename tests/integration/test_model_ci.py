"""`retrainer ci report` end to end: a temporary git repository with a local DVC remote, main trains a champion, and
four branches change it (worse params, better params, a code comment, a corrupt batch); each gets its verdict."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from retrainer.io.revisions import open_output
from retrainer.io.workspace import create_workspace, dvc, reproduce
from retrainer.stages import MODEL

pytestmark = pytest.mark.integration

MAIN_SPACE = {"learning_rate": [0.1], "max_leaf_nodes": [7], "min_samples_leaf": [50], "l2_regularization": [0.0]}


def small_params(source: Path, dest: Path) -> Path:
    """The real params, made fast: a three-week bootstrap, a two-candidate search, a modest main model, small
    gate samples."""
    raw = yaml.safe_load((source / "params.yaml").read_text())
    raw["data"]["bootstrap"] = {"start": "2013-01-01", "end": "2013-01-22"}
    raw["train"]["search"].update(n_candidates=2)
    raw["train"]["search"]["space"]["hgb"] = {**MAIN_SPACE, "max_iter": [10]}
    raw["evaluate"]["importance_rows"] = 300
    raw["gate"]["improvement"]["bootstrap_samples"] = 100
    raw["gate"]["latency_rows"] = 20
    raw["gate"]["slices"]["min_rows"] = 1000  # a 3,600-row holdout: judge the airports, report the carriers
    path = dest / "ci-params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Repo:
    ws: Path
    env: dict[str, str]
    reports: Path


@pytest.fixture(scope="module")
def repo(project_root, tmp_path_factory) -> Repo:
    """main: the pipeline trained once, committed, pushed to the local DVC remote; the code is the repo's own copy."""
    tmp = tmp_path_factory.mktemp("model-ci")
    ws = create_workspace(project_root, tmp / "ws", small_params(project_root, tmp), git=True)
    (ws / "src").unlink()
    shutil.copytree(project_root / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "the project's code")
    git(ws, "branch", "-M", "main")
    home = ws / ".retrainer"
    env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    reproduce(ws, "evaluate", env=env)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "main: train the champion")
    dvc(ws, "push", "-q", env=env)
    return Repo(ws, env, tmp / "reports")


@dataclass(frozen=True)
class Outcome:
    code: int
    report: dict
    markdown: str
    stdout: str


def run_report(repo: Repo, name: str, base: str = "main") -> Outcome:
    out = repo.reports / name
    command = [str(Path(sys.executable).with_name("retrainer")), "ci", "report", "--base", base, "--out", str(out)]
    done = subprocess.run(command, cwd=repo.ws, env={**os.environ, **repo.env}, capture_output=True, text=True)
    assert (out / "report.json").is_file(), done.stdout + done.stderr
    return Outcome(
        done.returncode, json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), done.stdout
    )


def on_branch(repo: Repo, name: str, change: Callable[[Path], None]) -> Outcome:
    """Branch off main, make the change, commit it, run the report, then put main's files and outputs back."""
    git(repo.ws, "checkout", "-q", "-b", name, "main")
    try:
        change(repo.ws)
        git(repo.ws, "add", "-A")
        git(repo.ws, "commit", "-q", "-m", f"branch {name}")
        return run_report(repo, name)
    finally:
        git(repo.ws, "checkout", "-q", "-f", "main")
        git(repo.ws, "clean", "-fdq")
        dvc(repo.ws, "checkout", "-q", "--force", env=repo.env)


def set_space(**space) -> Callable[[Path], None]:
    def change(ws: Path) -> None:
        raw = yaml.safe_load((ws / "params.yaml").read_text())
        raw["train"]["search"]["space"]["hgb"] = {**MAIN_SPACE, **space}
        (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    return change


def test_branch_a_a_clearly_worse_model_fails_the_gate_with_the_ci_and_reasons(repo):
    outcome = on_branch(repo, "a-worse", set_space(max_iter=[1], max_leaf_nodes=[2]))
    assert outcome.code == 1, outcome.stdout
    report = outcome.report
    assert report["status"] == "fail"
    assert "params.yaml:train.search.space.hgb.max_iter" in report["changes"]["params"]
    assert report["metrics"]["head"]["roc_auc"] < report["metrics"]["base"]["roc_auc"] - 0.02
    failed = {check["name"] for check in report["gate"]["checks"] if not check["passed"]}
    assert "regression:roc_auc" in failed and "improvement:roc_auc" in failed
    improvement = next(c for c in report["gate"]["checks"] if c["name"] == "improvement:roc_auc")
    assert improvement["values"]["ci_high"] < 0
    assert set(report["repro"]["ran"]) == {"train", "evaluate"}
    assert "# Model CI: FAIL" in outcome.markdown and "paired bootstrap CI" in outcome.markdown
    assert {"roc.png", "pr.png", "calibration.png", "slices.png", "feature_importance.png"} <= set(report["plots"])
    assert (repo.reports / "a-worse" / "roc.png").stat().st_size > 10_000


def test_branch_b_a_better_model_passes_the_gate(repo):
    outcome = on_branch(repo, "b-better", set_space(max_iter=[60], max_leaf_nodes=[15]))
    assert outcome.code == 0, outcome.stdout + json.dumps(outcome.report["reasons"])
    report = outcome.report
    assert report["status"] == "pass"
    assert report["metrics"]["head"]["roc_auc"] > report["metrics"]["base"]["roc_auc"]
    assert report["holdout"]["side"] == "head" and "same holdout file" in report["holdout"]["note"]
    assert report["lineage"]["base"]["models/model.pkl"] != report["lineage"]["head"]["models/model.pkl"]


def test_branch_c_a_comment_in_code_is_no_model_change(repo):
    def comment(ws: Path) -> None:
        path = ws / "src" / "retrainer" / "steps" / "train.py"
        path.write_text(path.read_text() + "# a comment: nothing the model sees\n")

    outcome = on_branch(repo, "c-comment", comment)
    assert outcome.code == 0, outcome.stdout
    assert outcome.report["status"] == "no model change"
    assert outcome.report["changes"]["files"]["code"] == ["src/retrainer/steps/train.py"]
    assert outcome.report["changes"]["params"] == {}
    assert "train" in outcome.report["repro"]["ran"]
    assert "NO MODEL CHANGE" in outcome.markdown


def test_branch_d_a_corrupt_batch_fails_validation_by_name(repo, seed_flights):
    def corrupt_batch(ws: Path) -> None:
        february = seed_flights.loc[seed_flights["month"] == 2].iloc[::10].copy()
        february.loc[february.index[:40], "distance"] = -100
        february.to_csv(ws / "data" / "batches" / "2013-02.csv", index=False)

    outcome = on_branch(repo, "d-corrupt", corrupt_batch)
    assert outcome.code == 1, outcome.stdout
    [entry] = outcome.report["validation"]
    assert entry["batch"] == "data/batches/2013-02.csv" and not entry["passed"]
    assert any("distance" in failure for failure in entry["failures"])
    assert outcome.report["reasons"][0].startswith("batch data/batches/2013-02.csv fails validation")
    assert outcome.report["repro"] == {}  # a blocked batch never reaches training


def test_a_base_without_a_trained_model_cannot_be_decided(repo):
    outcome = run_report(repo, "no-base-model", base="main~1")
    assert outcome.code == 2
    assert outcome.report["status"] == "undecided"
    assert "has no models/model.pkl" in outcome.report["reasons"][0]


def test_an_unknown_base_revision_cannot_be_decided(repo):
    outcome = run_report(repo, "unknown-base", base="no-such-branch")
    assert outcome.code == 2
    assert outcome.report["reasons"][0].startswith("base revision unavailable")


def test_the_base_model_is_read_from_the_dvc_remote_when_the_cache_lost_it(repo):
    lock = yaml.safe_load(git(repo.ws, "show", "main:dvc.lock"))
    expected = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == MODEL.as_posix())
    cache, aside = repo.ws / ".dvc" / "cache", repo.ws.parent / "cache-aside"
    shutil.move(cache, aside)
    try:
        data = open_output(repo.ws, "main", MODEL)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(aside, cache)
    assert hashlib.md5(data).hexdigest() == expected
