"""Use cases: one plain function per thing a user does, each returning a frozen, typed result (no Prefect here).

The entry points (`retrainer.cli`, `retrainer.demo`, the `flows/` package, the benchmarks) call these functions;
`flows/` wraps their pieces as Prefect tasks and publishes artifacts.
"""
