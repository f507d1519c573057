"""The params file is validated once, and every problem names its key."""

from pathlib import Path

import pytest
import yaml

from retrainer.config import ConfigError, load_params, params_hash, resolve_params_path

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_real_params_load_and_hash_is_stable(params):
    assert params.data.target.threshold == 15
    assert params_hash(params) == params_hash(load_params(ROOT / "params.yaml"))


@pytest.mark.parametrize("column", ["dep_delay", "arr_time", "air_time", "dep_time", "arr_delay"])
def test_leaking_feature_is_refused(tmp_path, column):
    path = _write(tmp_path, lambda raw: raw["features"]["numeric"].append(column))
    with pytest.raises(ConfigError, match=rf"features.*{column}.*leak"):
        load_params(path)


def test_identifier_as_feature_is_refused(tmp_path):
    path = _write(tmp_path, lambda raw: raw["features"]["categorical"].append("tailnum"))
    with pytest.raises(ConfigError, match="identifier"):
        load_params(path)


def test_bad_value_names_the_key(tmp_path):
    path = _write(tmp_path, lambda raw: raw["split"].update(holdout_fraction=1.5))
    with pytest.raises(ConfigError, match=r"split\.holdout_fraction"):
        load_params(path)


def test_unknown_key_is_refused(tmp_path):
    path = _write(tmp_path, lambda raw: raw["train"].update(learning_rat=0.1))
    with pytest.raises(ConfigError, match=r"train\.learning_rat"):
        load_params(path)


def test_missing_file_and_env_override(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    monkeypatch.setenv("RETRAINER_PARAMS", str(tmp_path / "other.yaml"))
    assert resolve_params_path() == tmp_path / "other.yaml"


def test_changing_a_value_changes_the_hash(tmp_path, params):
    path = _write(tmp_path, lambda raw: raw["train"].update(seed=7))
    assert params_hash(load_params(path)) != params_hash(params)


def test_monitor_exclude_must_name_features(tmp_path):
    path = _write(tmp_path, lambda raw: raw["monitor"]["drift"].update(exclude=["month", "arr_delay"]))
    with pytest.raises(ConfigError, match=r"monitor\.drift\.exclude.*arr_delay"):
        load_params(path)


def test_monitor_thresholds_are_checked_by_key(tmp_path):
    path = _write(tmp_path, lambda raw: raw["monitor"]["trigger"].update(rearm_level=1.5))
    with pytest.raises(ConfigError, match=r"monitor\.trigger\.rearm_level"):
        load_params(path)


def test_a_feature_no_request_can_carry_is_refused(tmp_path):
    path = _write(tmp_path, lambda raw: raw["features"]["numeric"].append("cabin_pressure"))
    with pytest.raises(ConfigError, match=r"features: \['cabin_pressure'\] are neither in validate.columns"):
        load_params(path)


def test_dvc_params_must_be_the_chosen_params_file(tmp_path, monkeypatch):
    from retrainer.config import require_dvc_params

    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "copy.yaml").write_text("a: 1\n")
    (tmp_path / "other.yaml").write_text("a: 2\n")
    monkeypatch.delenv("RETRAINER_PARAMS", raising=False)
    assert require_dvc_params(tmp_path) == (tmp_path / "params.yaml").resolve()
    monkeypatch.setenv("RETRAINER_PARAMS", str(tmp_path / "copy.yaml"))
    assert require_dvc_params(tmp_path) == (tmp_path / "copy.yaml").resolve()
    monkeypatch.setenv("RETRAINER_PARAMS", str(tmp_path / "other.yaml"))
    with pytest.raises(ConfigError, match=r"DVC reads .*params\.yaml .* not other\.yaml"):
        require_dvc_params(tmp_path)


@pytest.mark.parametrize("kind", ["integer", "boolean", "number"])
def test_categorical_feature_of_a_non_text_kind_is_refused_naming_it(tmp_path, kind):
    """Training's category imputer cannot take numbers or booleans (a sklearn error after the whole pipeline ran):
    the params are refused at once, naming the column and its kind."""

    def mutate(raw):
        raw["validate"]["columns"]["code"] = {"kind": kind}
        raw["features"]["categorical"].append("code")

    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=rf"features\.categorical.*code \({kind}\)"):
        load_params(path)


@pytest.mark.parametrize("kind", ["string", "datetime"])
def test_numeric_feature_of_a_text_or_time_kind_is_refused_naming_it(tmp_path, kind):
    """Training failed with `float() argument must be ... not 'Timestamp'` (and the service with a 500)."""

    def mutate(raw):
        raw["validate"]["columns"]["opened"] = {"kind": kind}
        raw["features"]["numeric"].append("opened")

    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=rf"features\.numeric.*opened \({kind}\)"):
        load_params(path)
