"""The Ray executor measured on a local two-node Ray cluster (loopback only).

    python benchmarks/ray_cluster.py OUT [--nodes-cpus 1,1]

Starts a head and a second node on 127.0.0.1 (ray.cluster_utils.Cluster), then, back to
back, runs:
  1. the quick preset serially, then with --executor ray on the cluster: whole-command
     wall times, Ray's overhead per unit (seconds from submission to records in the driver,
     less the seconds the worker spent on the unit), and test accuracies side by side;
  2. a 32-trial sweep (each trial its own unit) on the cluster: units finished per node,
     and the sum of the units' times against the whole command's wall time.
Writes the run directories and OUT/summary.md, then stops the cluster.

On one machine the two "nodes" share its cores: the figures measure Ray's dispatch and
bench's bookkeeping, not a cluster's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SWEEP_32 = ["--models", "dense", "--units", "32", "--activations", "relu,tanh",
            "--optimizers", "sgd,adam", "--learning-rate", "0.01,0.001", "--seeds", "0,1,2,3",
            "--epochs", "2", "--population", "off"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--node-cpus", default="1,1", help="CPUs of the head, then of the other node")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    from bench.run.ray_executor import LOOPBACK_HTTP  # Ray's dashboard stays off the network
    os.environ.update(LOOPBACK_HTTP)
    from ray.cluster_utils import Cluster
    head_cpus, node_cpus = (int(n) for n in args.node_cpus.split(","))
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
        ray = ["--executor", "ray", "--ray-address", cluster.address]
        lines = [f"# Ray executor on a local two-node cluster ({head_cpus} + {node_cpus} CPUs, "
                 f"127.0.0.1), {time.strftime('%Y-%m-%d')}", ""]
        serial_s = bench(["--preset", "quick", "--out", out / "quick-serial"])
        ray_s = bench(["--preset", "quick", *ray, "--out", out / "quick-ray"])
        lines += quick_summary(out, serial_s, ray_s)
        sweep_s = bench([*SWEEP_32, *ray, "--out", out / "sweep-32"])
        lines += sweep_summary(out / "sweep-32", sweep_s)
    finally:
        cluster.shutdown()
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def bench(args: list) -> float:
    """Wall seconds of one `python -m bench run ...` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench", "run", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def records(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return {r["key"]: r for r in map(json.loads, lines)}


def overheads(run_dir: Path) -> list[float]:
    units = json.loads((run_dir / "run.json").read_text()).get("executor_units", [])
    return [u["round_trip_s"] - u["work_s"] for u in units if u.get("work_s") is not None]


def quick_summary(out: Path, serial_s: float, ray_s: float) -> list[str]:
    serial, on_ray = records(out / "quick-serial"), records(out / "quick-ray")
    assert serial.keys() == on_ray.keys(), "the two runs planned different trials"
    diffs = [abs(on_ray[k]["test_accuracy"] - serial[k]["test_accuracy"]) for k in serial]
    extra = overheads(out / "quick-ray")
    return ["## quick preset, serial then --executor ray", "",
            "| | serial | ray |", "|---|---:|---:|",
            f"| whole command | {serial_s:.1f} s | {ray_s:.1f} s |",
            f"| trials ok | {ok(serial)} | {ok(on_ray)} |",
            f"| mean test accuracy | {mean_acc(serial):.2f}% | {mean_acc(on_ray):.2f}% |", "",
            f"- Ray's overhead per unit ({len(extra)} units): median {statistics.median(extra):.3f} s, "
            f"max {max(extra):.3f} s",
            f"- largest test-accuracy difference per trial: {100 * max(diffs):.3f} points "
            f"({sum(d == 0 for d in diffs)} of {len(diffs)} identical)", ""]


def sweep_summary(run_dir: Path, wall_s: float) -> list[str]:
    header = json.loads((run_dir / "run.json").read_text())
    units = header["executor_units"]
    per_node: dict[str, list] = {}
    for unit in units:
        per_node.setdefault(unit["node"], []).append(unit)
    rows = [f"| {node} | {len(us)} | {sum(u['work_s'] for u in us):.1f} s |"
            for node, us in sorted(per_node.items())]
    work = sum(u["work_s"] for u in units)
    extra = overheads(run_dir)
    return [f"## {len(units)}-trial sweep on the cluster (each trial its own unit)", "",
            "| node | units | sum of unit times |", "|---|---:|---:|", *rows, "",
            f"- sum of unit times {work:.1f} s; whole command {wall_s:.1f} s "
            f"(ratio {work / wall_s:.2f})",
            f"- Ray's overhead per unit: median {statistics.median(extra):.3f} s", ""]


def ok(rs: dict) -> str:
    return f"{sum(r['status'] == 'ok' for r in rs.values())}/{len(rs)}"


def mean_acc(rs: dict) -> float:
    return 100 * statistics.mean(r["test_accuracy"] for r in rs.values() if r["test_accuracy"] is not None)


if __name__ == "__main__":
    sys.exit(main())
