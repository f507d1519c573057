"""The integration modules share the session's Prefect test harness (tests/conftest.py: `prefect_harness`)."""
