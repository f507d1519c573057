"""The canary's latency check on traffic that mixes one-row and many-row requests (a breaker test).

Routing is sticky per record, so a many-row request is split between the arms. Read back with one latency per
request for each arm that served a row of it (876819c, since reverted), at a 10 % step almost every large request
had a challenger row but only a tenth of the one-row requests did: the challenger's latency sample was mostly large
requests, the champion's mostly small ones, and two identical models differed in p95 by the ratio of a large
request's latency to a small one's, which Mann-Whitney called significant. Read per row, both arms see the same mix.

The log is written through the real PredictionLog (SQLite file) and read back by the canary's own reader
(replay.read_arm); the latencies are set, not timed, so the test is deterministic: a request's latency depends only
on its size, the same whichever arm served its rows (identical models).
"""

from __future__ import annotations

import numpy as np

from retrainer.config import CanaryConfig
from retrainer.serving.prediction_log import PredictionLog, RequestLog, new_request_key
from retrainer.serving.replay import read_arm
from retrainer.steps.canary import ArmStats, StepProgress, analyse_canary


def test_identical_models_are_not_rolled_back_for_latency_when_requests_mix_sizes(tmp_path):
    path = tmp_path / "predictions.db"
    log = PredictionLog(path)
    rng = np.random.default_rng(7)
    sizes = [1] * 2000 + [200] * 80
    rng.shuffle(sizes)
    requests = {"champion": 0, "challenger": 0}
    try:
        for i, size in enumerate(sizes):
            arms = ["challenger" if draw < 0.10 else "champion" for draw in rng.random(size)]
            for arm in set(arms):
                requests[arm] += 1
            latency = (2.0 if size == 1 else 20.0) + float(rng.uniform(0, 0.5))  # same for either arm
            log.record(
                RequestLog(
                    key=new_request_key(),
                    time=f"2013-03-05T10:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}+00:00",
                    latency_ms=latency,
                    versions={"champion": "1", "challenger": "2"},
                    arms=arms,
                    probabilities=rng.uniform(size=size).tolist(),
                    labels=[0] * size,
                    records=[{"i": j} for j in range(size)],
                )
            )
    finally:
        log.close()

    champion, challenger = read_arm(path, "champion", "1", ""), read_arm(path, "challenger", "2", "")
    arm = {
        name: ArmStats(requests=requests[name], latencies_ms=rows.latencies_ms, probabilities=rows.probabilities)
        for name, rows in (("champion", champion), ("challenger", challenger))
    }
    decision = analyse_canary(
        arm["champion"], arm["challenger"], StepProgress(0, 4, 600.0), CanaryConfig(min_requests_per_step=100)
    )
    latency_failures = [r for r in decision.reasons if "latency" in r and "not a failure" not in r]
    numbers = {k: round(v, 4) for k, v in decision.numbers.items() if "latency" in k or "p95" in k}
    assert not latency_failures, f"identical models rolled back on latency: {latency_failures}; {numbers}"
