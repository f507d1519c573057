"""MLflow model registry: champion/challenger aliases, version tags, and compare-and-set promotion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retrainer.io.backend import registry_lock

CHAMPION = "champion"
CHALLENGER = "challenger"
STALE = "stale champion"


@dataclass(frozen=True)
class Promotion:
    """What a compare-and-set promotion did."""

    promoted: bool
    champion_version: str | None
    reason: str


def _client():
    import mlflow

    return mlflow.MlflowClient()


def alias_version(model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def load_version(model_name: str, version: str):
    """Load a registered version as the fitted sklearn pipeline it was logged as."""
    import mlflow.sklearn

    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


def version_tags(model_name: str, version: str) -> dict[str, str]:
    """All tags of a model version."""
    return dict(_client().get_model_version(model_name, version).tags)


def tag_version(model_name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a model version."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))


def set_alias(model_name: str, alias: str, version: str) -> None:
    """Point an alias at a version."""
    _client().set_registered_model_alias(model_name, alias, version)


def clear_alias(model_name: str, alias: str) -> None:
    """Remove an alias if it exists."""
    if alias_version(model_name, alias) is not None:
        _client().delete_registered_model_alias(model_name, alias)


def promote_if_current(model_name: str, version: str, expected_champion: str | None, lock_path: Path) -> Promotion:
    """Make `version` the champion only if the champion is still `expected_champion`.

    MLflow aliases are last-writer-wins, so the check and the set happen under the registry lock
    (`io/backend.py:registry_lock`): PostgreSQL's advisory lock when RETRAINER_DATABASE_URL is set, so runs on
    different hosts are serialised, else the OS file lock `lock_path`. Either is released if its holder dies.
    """
    with registry_lock(lock_path, model_name):
        current = alias_version(model_name, CHAMPION)
        if current == version:
            return Promotion(False, current, f"v{version} is already the champion")
        if current != expected_champion:
            return Promotion(False, current, f"{STALE}: champion is v{current}, compared against v{expected_champion}")
        set_alias(model_name, CHAMPION, version)
        if alias_version(model_name, CHALLENGER) == version:
            clear_alias(model_name, CHALLENGER)
        tag_version(model_name, version, {"promoted_from": expected_champion or "none"})
        previous = f"v{expected_champion}" if expected_champion else "no champion"
        return Promotion(True, version, f"v{version} promoted over {previous}")
