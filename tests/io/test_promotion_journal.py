"""A promotion journal that is not one (emptied, truncated, edited by hand) is an error naming the file and the key,
never a KeyError or TypeError traceback from every later `retrainer status` and `retrainer run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrainer.io.project import HOME_DIR, PROMOTION_JOURNAL_FILE
from retrainer.io.promotion_journal import CorruptJournal, Phase, PromotionEntry, PromotionJournal

ENTRY = {"model": "m", "from_version": "1", "to_version": "2", "batch_id": "ab", "reasons": ["ok"], "phase": "alias"}


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{}", r"keys \['batch_id', 'from_version', 'model', 'reasons', 'to_version'\] are missing"),
        ("null", "expected a JSON object, found NoneType"),
        ("[1, 2]", "expected a JSON object, found list"),
        (json.dumps({**ENTRY, "phase": "bogus"}), "phase one of"),
        (json.dumps({**ENTRY, "reasons": None}), "reasons must be a list"),
        (json.dumps({**ENTRY, "extra": 1}), r"keys \['extra'\] are unknown"),
        ('{"model": "m", "from_ver', "Unterminated string"),
    ],
)
def test_a_journal_that_is_not_an_entry_is_an_error_naming_the_file(tmp_path: Path, content: str, named: str):
    path = tmp_path / "promotion.json"
    path.write_text(content)
    with pytest.raises(CorruptJournal, match=named) as caught:
        PromotionJournal(path).read()
    assert str(path) in str(caught.value)


def test_a_written_entry_reads_back_whole(tmp_path: Path):
    journal = PromotionJournal(tmp_path / "promotion.json")
    entry = journal.begin(PromotionEntry("m", None, "2", None, ("passed",)))
    assert journal.read() == entry
    assert journal.read().phase is Phase.INTENT


def test_status_with_a_corrupt_journal_says_so_in_one_line(project_root: Path, tmp_path: Path):
    """`retrainer status` runs recovery first: with `{}` in the journal it died with `KeyError: 'reasons'`."""
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    journal = tmp_path / HOME_DIR / PROMOTION_JOURNAL_FILE
    journal.parent.mkdir()
    journal.write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in ("RETRAINER_PARAMS", "RETRAINER_HOME")}
    command = [sys.executable, "-m", "retrainer.cli", "status"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"promotion journal {journal.resolve()} cannot be read: keys" in done.stderr
