"""Read batches and reference tables; write frames and JSON reports atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

BATCH_SUFFIXES = (".csv", ".parquet")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; other suffixes are refused by name."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: unsupported file type '{suffix}' (expected one of {', '.join(BATCH_SUFFIXES)})")


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file as a DataFrame (only `columns`, if given), without keeping the read's scratch memory.

    pyarrow decodes into its default memory pool (mimalloc), which keeps what the decoding freed for reuse instead
    of handing it back to the OS; `release_unused()` hands it back. Measured on the train stage's read of 3.3M rows
    (a 582 MB frame): the process grew by 1,225 MB, and by 667 MB after the release. The stages read their frames
    once and then fit or score with numpy, which never reuses that pool.
    """
    import pyarrow

    frame = pd.read_parquet(path, columns=columns)
    pyarrow.default_memory_pool().release_unused()
    return frame


def list_batches(directory: Path) -> list[Path]:
    """Accepted batch files in a folder, oldest name first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in BATCH_SUFFIXES)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_file(source: Path, path: Path) -> None:
    """Copy a file byte for byte, atomically and durably: the copy is written under a temporary name beside `path`,
    fsynced, then renamed, so a crash (even SIGKILL) never leaves a cut-off file under `path`. A SIGKILL can leave the
    temporary file (`.<name>.<random>`)."""

    def copy(tmp: Path) -> None:
        shutil.copyfile(source, tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())

    _atomic_write(path, copy)


def write_joblib(value: object, path: Path) -> None:
    """Pickle a value with joblib atomically: a crash never leaves a truncated model that dvc.lock could vouch for."""
    import joblib

    _atomic_write(path, lambda tmp: joblib.dump(value, tmp))


def write_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically."""
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame as Parquet, never leaving a half-written file."""
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_json(payload: dict | list, path: Path) -> None:
    """Write JSON (sorted keys, stable across runs) atomically and durably (fsynced before the rename)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    _atomic_write(path, write)


def read_json(path: Path) -> dict:
    """Read a JSON file written by write_json."""
    return json.loads(path.read_text())
