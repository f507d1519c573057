"""The model a training run logs to MLflow loads where only its declared requirements are installed (a breaker test).

io/tracking.py logs the fitted pipeline with serialization_format="cloudpickle" and pip requirements naming
scikit-learn, pandas, numpy, cloudpickle and pyarrow: an environment built from them (`mlflow models serve` with its
default virtualenv env-manager, or another project loading models:/<name>/<version>) has no `retrainer`. When the
numeric imputer's strategy became retrainer.steps.train.median_or_zero, the pickle named it, and loading there failed
with "No module named 'retrainer'"; tracking now has cloudpickle store it by value.

The environment without retrainer is a real child interpreter whose import system refuses `retrainer` (building a
virtualenv from the requirements would download packages); the rest is real: the pipeline from build_pipeline fitted
on real flights, logged and registered by tracking.log_training_run in a real MLflow store, loaded by its models:/ URI.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from retrainer.io.tracking import _requirements, log_training_run
from retrainer.steps.ingest import integrate
from retrainer.steps.train import build_pipeline

CHILD = """
import sys
class NoRetrainer:
    def find_spec(self, name, path=None, target=None):
        if name == "retrainer" or name.startswith("retrainer."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoRetrainer())
import mlflow.pyfunc
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
print("loaded", type(model._model_impl.sklearn_model).__name__)
"""


@pytest.fixture(scope="module")
def labelled(january_sample, references, params) -> pd.DataFrame:
    frame, _ = integrate(january_sample, references, params.data, b"key")
    return frame


def test_the_logged_model_loads_without_retrainer_installed(labelled, params, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RETRAINER_HOME", str(tmp_path / "home"))
    features = list(params.features.all)
    model = build_pipeline(list(params.features.numeric), list(params.features.categorical), params.train)
    model.fit(labelled[features], labelled["delayed"])
    assert not any(r.startswith("retrainer") for r in _requirements())
    registration = log_training_run(
        experiment="portable",
        model_name="portable-model",
        model=model,
        features=features,
        train_frame=labelled,
        tags={"batch_id": "test"},
    )

    child = subprocess.run(
        [sys.executable, "-c", CHILD, uri, f"models:/portable-model/{registration.version}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert child.returncode == 0 and "loaded Pipeline" in child.stdout, (
        "the logged model needs `retrainer`, which its requirements do not name:\n" + child.stderr[-1500:]
    )


def test_by_value_registration_survives_nesting_and_leaves_a_caller_s_registration_alone(params):
    """The registration is process-wide: an inner use closing must not unregister the module under an outer one
    (two threads logging at once nest the same way), and a module the caller registered stays registered."""
    import cloudpickle

    from retrainer.io.tracking import own_functions_by_value

    model = build_pipeline(list(params.features.numeric), list(params.features.categorical), params.train)
    module = "retrainer.steps.train"
    with own_functions_by_value(model):
        with own_functions_by_value(model):
            assert module in cloudpickle.list_registry_pickle_by_value()
        assert module in cloudpickle.list_registry_pickle_by_value(), "the inner close unregistered the outer's"
    assert module not in cloudpickle.list_registry_pickle_by_value()

    cloudpickle.register_pickle_by_value(sys.modules[module])
    try:
        with own_functions_by_value(model):
            pass
        assert module in cloudpickle.list_registry_pickle_by_value(), "a registration it did not make was undone"
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[module])


def test_an_error_inside_the_block_is_not_replaced_by_the_close(params):
    """A caller that unregistered the module itself and then failed sees its own error, not cloudpickle's 'not
    registered' ValueError from the close (a breaker's case)."""
    import cloudpickle

    from retrainer.io.tracking import own_functions_by_value

    model = build_pipeline(list(params.features.numeric), list(params.features.categorical), params.train)
    with pytest.raises(KeyError, match="the caller's own"), own_functions_by_value(model):
        cloudpickle.unregister_pickle_by_value(sys.modules["retrainer.steps.train"])
        raise KeyError("the caller's own")
    assert "retrainer.steps.train" not in cloudpickle.list_registry_pickle_by_value()
    with own_functions_by_value(model):  # and the count starts again from nothing
        assert "retrainer.steps.train" in cloudpickle.list_registry_pickle_by_value()

    with own_functions_by_value(model):  # an inner use after an unregister under an open one registers again
        cloudpickle.unregister_pickle_by_value(sys.modules["retrainer.steps.train"])
        with own_functions_by_value(model):
            assert "retrainer.steps.train" in cloudpickle.list_registry_pickle_by_value()
    assert "retrainer.steps.train" not in cloudpickle.list_registry_pickle_by_value()
