"""Flow overhead: the retrain flow's wall time against the same stages run as a plain script, same data.

Setup (not timed): a workspace bootstrapped on Jan..Nov 2013 with no training window (`dvc repro`, whole
pipeline), then copied twice so both arms start from the same trained state with stores of their own.
Timed, once each, as subprocess wall time:
  plain  the pipeline stages (retrainer.stages.run_stage, in order) and the gate, with December already
         placed in data/batches;
  flow   flows.retrain.retrain on the December batch; inside the subprocess the Prefect ephemeral server is
         started explicitly before the call, so its start-up is reported apart from the flow itself;
  rerun  the same flow again with force=True on the same batch (nothing changed).

Run: .venv/bin/python bench/flow_bench.py   (prints figures, writes bench/results/flow.json;
asserts nothing about time).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from train_bench import ROOT, code_state, machine, run_timed, say, warm_up, workspace_env, write_params

TARGET_OVERHEAD = 0.15
TARGET_RERUN_RATIO = 0.15

PLAIN = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from retrainer.config import load_params
from retrainer.cycle import gather_and_decide, write_gate_report
from retrainer.io.tracking import connect
from retrainer.stages import STAGES, run_stage
root = Path(sys.argv[1])
params = load_params(root / "params.yaml")
connect(root)
ready = time.perf_counter()
seconds = {}
for name in STAGES:
    begun = time.perf_counter()
    run_stage(name, params, root)  # what `dvc repro` and the flow run: same thread policy
    seconds[name] = round(time.perf_counter() - begun, 3)
begun = time.perf_counter()
gate = write_gate_report(gather_and_decide(params, root), root)
seconds["gate"] = round(time.perf_counter() - begun, 3)
done = time.perf_counter()
print(json.dumps({"import_seconds": round(ready - started, 3), "work_seconds": round(done - ready, 3),
                  "stages": seconds, "gate_passed": gate["passed"],
                  "challenger_version": gate["challenger_version"],
                  "roc_auc": gate["challenger_metrics"]["roc_auc"]}))
"""

FLOW = """
import json, sys, time
started = time.perf_counter()
from flows.retrain import retrain
from prefect.server.api.server import SubprocessASGIServer
imported = time.perf_counter()
SubprocessASGIServer().start()
ready = time.perf_counter()
result = retrain(batch=sys.argv[2], root=sys.argv[1], force=sys.argv[3] == "force")
done = time.perf_counter()
print(json.dumps({"import_seconds": round(imported - started, 3),
                  "server_seconds": round(ready - imported, 3),
                  "flow_seconds": round(done - ready, 3), "status": result.get("status"),
                  "reused": bool(result.get("reused")), "stages": result.get("stages"),
                  "challenger_version": result.get("challenger_version"),
                  "roc_auc": ((result.get("metrics") or {}).get("challenger") or {}).get("roc_auc")}))
"""


def last_json(stdout: str) -> dict:
    """The JSON line a measured subprocess prints last."""
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure, print and write the figures."""
    sys.path.insert(0, str(ROOT / "src"))
    import pandas as pd

    from retrainer.config import load_params
    from retrainer.demo import DemoData
    from retrainer.io.batches import batch_id
    from retrainer.io.workspace import create_workspace, reproduce

    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="retrainer-flow-bench-") as tmp:
        tmpdir = Path(tmp)
        params_file = write_params(tmpdir / "params.yaml", "2013-01-01", "2013-12-01")
        base = create_workspace(ROOT, tmpdir / "base", params_file)
        say(f"workspace {base}: dvc repro on Jan..Nov 2013, all months (not timed)")
        bootstrap = reproduce(base, env=workspace_env(base))
        say(f"  ran {bootstrap.ran} in {bootstrap.seconds:.1f} s")
        seed = DemoData.from_params(load_params(ROOT / "params.yaml"), ROOT)
        december = seed.write_batch(pd.Period("2013-12", "M"), tmpdir / "incoming")
        identifier = batch_id(december)

        plain_ws, flow_ws = tmpdir / "plain", tmpdir / "flow"
        for copy in (plain_ws, flow_ws):
            shutil.copytree(base, copy, symlinks=True)
        # the name the flow's accept step gives the batch, so ingest reads the same files in both arms
        shutil.copyfile(december, plain_ws / "data" / "batches" / f"{identifier}{december.suffix}")
        warm_up(flow_ws, workspace_env(flow_ws), tmpdir / "warm.log")

        say("timing the plain script: every stage in order, then the gate")
        plain_s, out = run_timed(
            [python, "-c", PLAIN, str(plain_ws)], plain_ws, workspace_env(plain_ws), tmpdir / "plain.log"
        )
        plain = last_json(out)
        say(f"  {plain_s:.1f} s (work {plain['work_seconds']:.1f} s): {plain['stages']}")

        say("timing the flow: flows.retrain.retrain on the December batch")
        flow_s, out = run_timed(
            [python, "-c", FLOW, str(flow_ws), str(december), "first"],
            flow_ws,
            workspace_env(flow_ws),
            tmpdir / "flow.log",
        )
        flow = last_json(out)
        say(
            f"  {flow_s:.1f} s (server start-up {flow['server_seconds']:.1f} s, flow call "
            f"{flow['flow_seconds']:.1f} s): {flow['status']}; stages {flow['stages']}"
        )

        say("timing the no-change rerun: the same flow, force=True, same batch")
        rerun_s, out = run_timed(
            [python, "-c", FLOW, str(flow_ws), str(december), "force"],
            flow_ws,
            workspace_env(flow_ws),
            tmpdir / "rerun.log",
        )
        rerun = last_json(out)
        say(
            f"  {rerun_s:.1f} s (flow call {rerun['flow_seconds']:.1f} s): {rerun['status']}, "
            f"reused {rerun['reused']}; stages {rerun['stages']}"
        )
        rows = json.loads((flow_ws / "data" / "processed" / "split_report.json").read_text())

    flow_ex_server = flow_s - flow["server_seconds"]
    figures = {
        "train_window": "2013-01-01 .. 2013-12-31 (bootstrap Jan..Nov + December batch), window_months 0",
        "rows_train": rows["train"]["rows"],
        "rows_holdout": rows["holdout"]["rows"],
        "bootstrap_seconds_not_timed": round(bootstrap.seconds, 3),
        "plain_seconds": round(plain_s, 3),
        "plain_seconds_in_process": plain["work_seconds"],
        "plain_import_seconds": plain["import_seconds"],
        "plain_step_seconds": plain["stages"],
        "flow_seconds": round(flow_s, 3),
        "flow_seconds_excluding_server_startup": round(flow_ex_server, 3),
        "flow_server_startup_seconds": flow["server_seconds"],
        "flow_import_seconds": flow["import_seconds"],
        "flow_call_seconds": flow["flow_seconds"],
        "flow_stage_tasks": flow["stages"],
        "flow_status": flow["status"],
        "overhead_pct": round(100 * (flow_s / plain_s - 1), 1),
        "overhead_pct_excluding_server_startup": round(100 * (flow_ex_server / plain_s - 1), 1),
        "overhead_pct_in_process": round(100 * (flow["flow_seconds"] / plain["work_seconds"] - 1), 1),
        "rerun_seconds": round(rerun_s, 3),
        "rerun_call_seconds": rerun["flow_seconds"],
        "rerun_reused_decision": rerun["reused"],
        "rerun_stage_tasks": rerun["stages"],
        "rerun_over_first_ratio": round(rerun_s / flow_s, 3),
        "rerun_over_first_ratio_in_process": round(rerun["flow_seconds"] / flow["flow_seconds"], 3),
        "plain_holdout_roc_auc": round(plain["roc_auc"], 6),
        "flow_holdout_roc_auc": round(flow["roc_auc"], 6) if flow["roc_auc"] is not None else None,
        "target_overhead": TARGET_OVERHEAD,
        "target_rerun_ratio": TARGET_RERUN_RATIO,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        **code_state(),
        **machine(),
    }
    out_file = ROOT / "bench" / "results" / "flow.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(figures, indent=2) + "\n")

    print(f"\nflow bench: {figures['rows_train']:,} training rows, {figures['rows_holdout']:,} holdout rows")
    print(f"{'arm':<52}{'wall':>10}{'vs plain':>10}")
    for arm, seconds in (
        ("plain script (stages + gate)", plain_s),
        ("retrain flow (subprocess wall)", flow_s),
        ("retrain flow excluding ephemeral server start-up", flow_ex_server),
        ("no-change rerun (force=True)", rerun_s),
    ):
        print(f"{arm:<52}{seconds:>8.1f} s{seconds / plain_s:>9.2f}x")
    print(
        f"overhead {figures['overhead_pct']:+.1f} % "
        f"({figures['overhead_pct_excluding_server_startup']:+.1f} % "
        f"without server start-up; target <= {TARGET_OVERHEAD:.0%}); rerun/first "
        f"{figures['rerun_over_first_ratio']:.2f} (target <= {TARGET_RERUN_RATIO}) -> {out_file}"
    )


if __name__ == "__main__":
    main()
