"""Adapters: everything with a side effect (files, DVC, MLflow, Prefect, HTTP). Thin by design."""
