"""The object store on a real SeaweedFS S3 server: MLflow's artifact root and the DVC remote, keys from the
environment only."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pandas as pd
import pytest

from retrainer.io import registry
from retrainer.io.backend import ARTIFACT_ROOT_ENV, DATABASE_ENV, DVC_REMOTE_ENV, S3_ENDPOINT_ENV
from retrainer.io.servers import s3_client

pytestmark = pytest.mark.team

MODEL = "stored-model"


@pytest.fixture
def bucket(s3_server) -> str:
    """A new, empty bucket on the session's S3 server."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key).create_bucket(Bucket=name)
    return name


@pytest.fixture
def team_environment(s3_server, bucket, fresh_database, tmp_path):
    """The settings of a team setup: registry on PostgreSQL, artifacts and DVC remote in the bucket, keys in AWS_*;
    MLflow's own S3 endpoint variable unset (it is derived from RETRAINER_S3_ENDPOINT_URL)."""
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_ENV, fresh_database)
        patch.setenv(ARTIFACT_ROOT_ENV, f"s3://{bucket}/mlflow")
        patch.setenv(DVC_REMOTE_ENV, f"s3://{bucket}/dvc")
        patch.setenv(S3_ENDPOINT_ENV, s3_server.endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("RETRAINER_HOME", str(tmp_path / "home"))
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        yield s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _keys(client, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def test_a_model_registered_with_artifacts_in_the_object_store_loads_back(team_environment, bucket, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from retrainer.io.tracking import log_training_run

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"])
    frame["y"] = (frame["a"] + 0.3 * frame["b"] > 0).astype(int)
    model = LogisticRegression().fit(frame[["a", "b"]], frame["y"])
    registration = log_training_run(
        experiment="team-store",
        model_name=MODEL,
        model=model,
        features=["a", "b"],
        train_frame=frame,
        tags={"data_version": "d1"},
        metrics={"auc": 0.9},
        reports={"gate": {"passed": True}},
        root=tmp_path,
    )
    assert registration.tracking_uri.startswith("postgresql://")
    stored = _keys(team_environment, bucket, "mlflow/")
    assert any(key.endswith("MLmodel") for key in stored), stored
    assert any(key.endswith("reports/gate.json") for key in stored), stored
    assert not (tmp_path / "home" / "mlartifacts").exists(), "nothing was written to the local artifact folder"

    loaded = registry.load_version(MODEL, registration.version)
    expected = model.predict_proba(frame[["a", "b"]])[:, 1]
    assert np.array_equal(loaded.predict_proba(frame[["a", "b"]])[:, 1], expected)


def test_dvc_push_and_pull_go_through_the_object_store(team_environment, bucket, tmp_path):
    from retrainer.io.workspace import dvc, use_remote

    root = tmp_path / "repo"
    root.mkdir()
    dvc(root, "init", "--no-scm", "-q")
    use_remote(root)
    config = (root / ".dvc" / "config").read_text()
    assert f"s3://{bucket}/dvc" in config and "endpointurl" in config
    assert "secret" not in config.lower() and "access_key" not in config, "keys stay in the environment"

    payload = np.random.default_rng(3).bytes(200_000)
    (root / "batch.bin").write_bytes(payload)
    dvc(root, "add", "-q", "batch.bin")
    dvc(root, "push", "-q")
    assert _keys(team_environment, bucket, "dvc/"), "the push stored objects in the bucket"

    (root / "batch.bin").unlink()
    shutil.rmtree(root / ".dvc" / "cache")  # pull must fetch it from the bucket
    dvc(root, "pull", "-q")
    assert (root / "batch.bin").read_bytes() == payload
