"""The Bento's build config comes from params: it includes the data files the params name, wherever they live."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retrainer.config import load_params
from retrainer.serving.package import bento_data_files, build_options, stage_data_files


def params_with_references(project_root: Path, tmp_path: Path, paths: list[str]):
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    for ref, path in zip(raw["data"]["references"], paths, strict=True):
        ref["path"] = path
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(file)


def test_the_include_list_names_each_reference_table_where_the_params_put_it(project_root, tmp_path):
    params = params_with_references(project_root, tmp_path, ["tables/weather.parquet", "own/planes.parquet"])
    options = build_options(params, "m", ["1", "2"], ["m:v1", "m:v2"])
    assert options["include"] == [
        "retrainer/**/*.py",
        "params.yaml",
        "retrainer_bento.json",
        "own/planes.parquet",
        "tables/weather.parquet",
    ]
    assert options["models"] == ["m:v1", "m:v2"]
    assert options["labels"] == {"mlflow_model": "m", "versions": "1-2"}
    assert options["python"]["lock_packages"] is False


def test_a_dataset_without_reference_tables_packs_no_data_files(project_root):
    params = load_params(project_root / "examples" / "car_loan" / "params.yaml")
    assert bento_data_files(params) == []
    assert "seeds/**" not in build_options(params, "m", ["1"], ["m:v1"])["include"]


def test_staging_copies_each_named_file_to_its_relative_path(tmp_path):
    root, context = tmp_path / "root", tmp_path / "ctx"
    (root / "own").mkdir(parents=True)
    (root / "own" / "planes.parquet").write_bytes(b"PAR1")
    stage_data_files(root, context, ["own/planes.parquet"])
    assert (context / "own" / "planes.parquet").read_bytes() == b"PAR1"
    with pytest.raises(FileNotFoundError, match=r"missing/weather\.parquet"):
        stage_data_files(root, context, ["missing/weather.parquet"])
