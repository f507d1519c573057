"""Package registered model versions as a Bento: import them into the BentoML store and build offline."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.metadata import version as installed
from pathlib import Path

from retrainer.config import Params, load_params, resolve_params_path
from retrainer.io import registry
from retrainer.io.project import home_dir
from retrainer.serving.models import MANIFEST, bento_model_tag, write_manifest

SERVICE = "retrainer.serving.service:RetrainerService"
BENTO_NAME = "retrainer"
RUNTIME_PACKAGES = (
    "bentoml",
    "mlflow",
    "scikit-learn",
    "pandas",
    "numpy",
    "pyarrow",
    "pydantic",
    "pyyaml",
    "filelock",
    "cloudpickle",
    "threadpoolctl",
)


def bentoml_home(root: Path | None = None) -> Path:
    """BENTOML_HOME if set, else a folder under the project home, so nothing is written to ~."""
    return Path(os.environ.get("BENTOML_HOME") or home_dir(root) / "bentoml")


def use_project_bentoml_home(root: Path | None = None) -> Path:
    """Point BentoML at the project's store; must run before bentoml is first imported to take effect."""
    path = bentoml_home(root)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(path)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return path


def import_versions(model_name: str, versions: list[str]) -> list[str]:
    """Copy each MLflow model version into the BentoML store once (a store tag is immutable); return the tags."""
    import bentoml
    from bentoml.exceptions import NotFound

    tags = []
    for version in versions:
        tag = bento_model_tag(model_name, version)
        try:
            bentoml.models.get(tag)
        except NotFound:
            vtags = registry.version_tags(model_name, version)
            bentoml.mlflow.import_model(
                tag,
                f"models:/{model_name}/{version}",
                labels={
                    "mlflow_model": model_name,
                    "mlflow_version": version,
                    "threshold": vtags.get("threshold", "0.5"),
                },
                metadata={k: v for k, v in vtags.items() if k in ("git_commit", "dataset_digest", "params_hash")},
            )
        tags.append(tag)
    return tags


CODE_AND_CONFIG = ("retrainer/**/*.py", "params.yaml", MANIFEST)


def bento_data_files(params: Params) -> list[str]:
    """The data files the service reads, as the params name them (relative to the project root): each reference
    table joined at request time (data.references[*].path). The batch source is not read by the service."""
    return sorted({ref.path for ref in params.data.references})


def build_options(params: Params, model_name: str, versions: list[str], model_tags: list[str]) -> dict:
    """The keyword arguments of `bentoml.bentos.build` (not the service and context): the files to include (code,
    params, manifest and the data files the params name), the models, the labels and the offline Python config."""
    return {
        "name": BENTO_NAME,
        "include": [*CODE_AND_CONFIG, *bento_data_files(params)],
        "models": model_tags,
        "labels": {"mlflow_model": model_name, "versions": "-".join(versions)},
        "python": {"packages": [f"{name}=={installed(name)}" for name in RUNTIME_PACKAGES], "lock_packages": False},
    }


def stage_data_files(root: Path, directory: Path, paths: list[str]) -> None:
    """Copy each data file (relative to `root`) to the same relative path under the build context `directory`.
    Raises FileNotFoundError naming a file the params name that is not there."""
    for relative in paths:
        if not (root / relative).is_file():
            raise FileNotFoundError(f"the params name a data file the Bento needs that is not there: {root / relative}")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)


def _stage_context(root: Path, params_file: Path, directory: Path, model_name: str, versions: list[str]) -> None:
    """The build context: the library, the params, the data files they name and the model manifest."""
    params = load_params(params_file)
    shutil.copytree(
        Path(__file__).resolve().parents[1], directory / "retrainer", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(params_file, directory / "params.yaml")
    stage_data_files(root, directory, bento_data_files(params))
    champion = registry.alias_version(model_name, registry.CHAMPION)
    challenger = registry.alias_version(model_name, registry.CHALLENGER)
    write_manifest(
        directory,
        model_name,
        versions,
        champion if champion in versions else versions[0],
        challenger if challenger in versions and challenger != champion else None,
    )


def build_bento(model_name: str, versions: list[str], root: Path) -> str:
    """Import the versions into the BentoML store, build a Bento offline, tag each version with it; return the tag."""
    if not versions:
        raise ValueError("build_bento needs at least one model version")
    use_project_bentoml_home(root)
    from retrainer.io.tracking import connect

    connect(root)
    import bentoml

    model_tags = import_versions(model_name, versions)
    params_file = resolve_params_path(root=root)
    options = build_options(load_params(params_file), model_name, versions, model_tags)
    with tempfile.TemporaryDirectory(prefix="bento-ctx-", dir=home_dir(root)) as staging:
        _stage_context(root, params_file, Path(staging), model_name, versions)
        bento = bentoml.bentos.build(SERVICE, build_ctx=staging, **options)
    tag = str(bento.tag)
    for version in versions:
        registry.tag_version(model_name, version, {"bento_tag": tag})
    return tag
