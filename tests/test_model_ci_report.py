"""The model CI report's result type and its renderings, on hand-made results (no pipeline)."""

from __future__ import annotations

import json

import pytest

from retrainer.app.model_ci import CiStatus, ModelCiReport, format_report, render_markdown, write_report


@pytest.mark.parametrize(
    ("status", "code", "title"),
    [
        (CiStatus.PASS, 0, "PASS"),
        (CiStatus.NO_CHANGE, 0, "NO MODEL CHANGE"),
        (CiStatus.FAIL, 1, "FAIL"),
        (CiStatus.UNDECIDED, 2, "COULD NOT DECIDE"),
    ],
)
def test_each_verdict_has_its_exit_code_and_title(status, code, title):
    report = ModelCiReport(status, ["why"], "origin/main")
    assert report.exit_code == code
    assert render_markdown(report).startswith(f"# Model CI: {title}\n")
    assert report.to_dict()["status"] == str(status) and report.to_dict()["exit_code"] == code


def test_a_blocked_batch_is_named_with_its_failures_and_the_report_files_are_written(tmp_path):
    entry = {
        "batch": "data/batches/2013-02.csv",
        "passed": False,
        "failures": ["ranges: distance below 0 in 40 rows"],
        "warnings": ["row_share"],
        "quarantine_dir": None,
    }
    report = ModelCiReport(
        CiStatus.FAIL,
        ["batch data/batches/2013-02.csv fails validation: ranges: distance below 0 in 40 rows"],
        "main",
        base_commit="a" * 40,
        head_commit="b" * 40,
        changes={"params": {"params.yaml:train.seed": {"old": 42, "new": 43}}, "files": {"batches": [entry["batch"]]}},
        validation=[entry],
    )
    markdown = render_markdown(report)
    assert "| `params.yaml:train.seed` | 42 | 43 |" in markdown
    assert "- batch `data/batches/2013-02.csv`: validation FAILED (blocking)" in markdown
    assert "  - ranges: distance below 0 in 40 rows" in markdown and "warning: row_share" in markdown
    md, js = write_report(report, tmp_path / "out")
    assert md.read_text() == markdown and json.loads(js.read_text())["validation"] == [entry]
    assert "FAIL  (exit 1)  base main" in format_report(report, (md, js)) and str(md) in format_report(report, (md, js))
