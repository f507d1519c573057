"""Prefect flows: thin wiring of retrainer's steps and adapters, one file per flow."""
