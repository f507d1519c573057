"""A batch copy (accepted, or quarantined) killed mid-way with a real SIGKILL leaves no cut-off file under the
batch's name: accept() keeps an existing copy (it would train on a cut one), and a quarantined batch must be the
original byte for byte. A breaker killed `retrainer validate` during a 300 MB quarantine copy: 3 of 3 left a cut
file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COPY = {
    "accept": "from retrainer.io.batches import accept; accept(Path(sys.argv[1]), Path(sys.argv[2]), 'b1')",
    "quarantine": "from retrainer.io.quarantine import quarantine_batch; "
    "quarantine_batch(Path(sys.argv[1]), Path(sys.argv[2]), {})",
}
CHUNK = b"month,carrier,distance\n" + b"3,UA,1400\n" * 100_000


@pytest.fixture(scope="module")
def big_batch(tmp_path_factory) -> Path:
    """About 200 MB of CSV: long enough to copy that the kill lands mid-copy."""
    path = tmp_path_factory.mktemp("big") / "flights-2013-03.csv"
    with path.open("wb") as handle:
        for _ in range(200):
            handle.write(CHUNK)
    return path


@pytest.mark.parametrize("kind", sorted(COPY))
def test_a_copy_killed_mid_way_leaves_no_cut_off_file_under_the_batch_s_name(kind, big_batch, tmp_path):
    target = tmp_path / "dest"
    script = f"import sys; from pathlib import Path; {COPY[kind]}"
    child = subprocess.Popen([sys.executable, "-c", script, str(big_batch), str(target)])
    deadline = time.monotonic() + 120
    while not (target.is_dir() and any(target.iterdir())):  # the first byte of the copy is on disk: kill now
        assert child.poll() is None and time.monotonic() < deadline, "the copy never started"
        time.sleep(0.0005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    named = [path for path in target.iterdir() if path.suffix == ".csv" and not path.name.startswith(".")]
    for path in named:
        assert path.stat().st_size == big_batch.stat().st_size, f"cut-off copy: {path.stat().st_size:,} bytes"
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(big_batch.read_bytes()).digest()
