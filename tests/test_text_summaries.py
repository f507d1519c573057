"""The text `retrainer run` prints for a cycle (app/results.format_cycle) and `retrainer lineage` for a version."""

from __future__ import annotations

from retrainer.app.results import CycleResult, format_cycle
from retrainer.app.status import format_lineage
from retrainer.outcomes import CycleStatus


def test_a_promoted_batch_s_validation_warnings_are_named_in_the_summary():
    """A batch that passed with warnings (empty rows dropped, values trimmed) says so where the user looks: the
    summary of `retrainer run` (a new user saw them only in `retrainer lineage`)."""
    summary = {"batch_id": "ab12", "seconds": 1.5, "warnings": ["whitespace.carrier", "empty_rows", "empty_rows"]}
    result = CycleResult(CycleStatus.PROMOTED, ["gate passed"], batch_id="ab12", batch="may.csv", validation=summary)
    text = format_cycle(result)
    assert "validation passed with warnings from 2 checks: empty_rows, whitespace.carrier" in text, text

    clean = format_cycle(result.but(validation={**summary, "warnings": []}))
    assert "validation" not in clean, clean
    quarantined = format_cycle(result.but(status=CycleStatus.QUARANTINED, validation="blocked: not_null.carrier"))
    assert "validation passed" not in quarantined, quarantined

    for odd, named in ((["null_values", None], "warnings from 1 check: null_values"), ([None], None), ("x.y", "x.y")):
        text = format_cycle(result.but(validation={"warnings": odd}))
        line = [line for line in text.splitlines() if "validation passed" in line]
        assert (named in line[0]) if named else not line, (odd, line)  # a record written by hand or another version


def test_the_lineage_of_a_first_champion_says_it_had_no_parent():
    """A new user read `parent champion vnone` for the first champion."""
    lineage = {"model": "m", "version": "2", "run_id": "r", "datasets": [], "reports": [], "tags": {}}
    lines = {
        parent: next(line for line in format_lineage({**lineage, "tags": tags}).splitlines() if "parent" in line)
        for parent, tags in {"first": {"parent_champion": "none"}, "second": {"parent_champion": "2"}, "-": {}}.items()
    }
    assert lines["first"].split() == ["parent", "no", "champion", "(the", "first", "one)"]
    assert lines["second"].split() == ["parent", "champion", "v2"]
    assert "not recorded" in lines["-"]
