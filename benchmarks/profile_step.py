"""Where a training step's time goes: XLA operations ranked by their time per step.

    python benchmarks/profile_step.py --model recurrent --units 128 [--cell gru] [--top 30]

Runs bench's `train_round` program (Adam, relu, batch 128, random data) under
`jax.profiler.trace` with XLA:CPU's per-operation trace events switched on, and prints
each operation's mean own time per step (without the operations nested in it, such as a
loop's body) with its HLO shape and operands; and, over the unprofiled rounds, the CPU time
of the process and of each busy thread (a thread that spins beside the work shows there).
Operations that run on several threads are counted once per thread that reported them, so
the column can add up to more than the step's wall time. XLA:CPU only (on a GPU, use the
trace with TensorBoard or Perfetto instead). A developer's tool (it is how the per-step
figures in docs/measurements.md were taken), not part of `bench run`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# Before jax starts its CPU client: ask XLA:CPU for one trace event per operation.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.contract import registry  # noqa: E402
from bench.contract.schema import make_config  # noqa: E402
from bench.engine.steps import build_program  # noqa: E402
from bench.engine.training import build_model  # noqa: E402


def compiled_round(model: str, units: int | None, cell: str, batch: int, steps: int):
    config = make_config({"model": model, "units": units, "activation": "relu", "optimizer": "adam",
                          "batch_size": batch, "cell": cell})
    program = build_program(build_model(config), registry.optimizer("adam"), batch,
                            round_steps=steps)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.random((50 * batch, 28, 28), dtype=np.float32))
    y = jax.numpy.asarray(rng.integers(0, 10, 50 * batch).astype(np.int32))
    args = (program.init(), x, y, jax.random.key(0))
    return jax.jit(program.train_round).lower(*args).compile(), args


def operation_times(trace_dir: str) -> collections.Counter:
    """Own nanoseconds per XLA operation name, from the trace's XLA worker threads.

    An event nested in another on the same thread (the operations of a loop body run
    inside the loop's event, e.g. the fused LSTM kernel's calls) counts for itself only,
    not again for its parent.
    """
    totals: collections.Counter = collections.Counter()
    for path in Path(trace_dir).rglob("*.xplane.pb"):
        for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
            for line in plane.lines:
                if line.name.startswith("tf_XLA"):
                    _add_own_times(line.events, totals)
    return totals


def _add_own_times(events, totals: collections.Counter) -> None:
    open_events: list[list] = []  # [end_ns, name, own_ns], outermost first
    for event in sorted(events, key=lambda e: (e.start_ns, -e.duration_ns)):
        while open_events and open_events[-1][0] <= event.start_ns:
            _close(open_events.pop(), totals)
        if open_events:
            open_events[-1][2] -= event.duration_ns
        open_events.append([event.start_ns + event.duration_ns, event.name, event.duration_ns])
    while open_events:
        _close(open_events.pop(), totals)


def _close(entry: list, totals: collections.Counter) -> None:
    _, name, own_ns = entry
    if not name.startswith("ThunkExecutor"):
        totals[name] += own_ns


def thread_cpu_seconds() -> dict[str, tuple[str, float]]:
    """Thread id -> (name, CPU seconds so far) for this process's live threads (Linux's
    /proc; empty elsewhere). Threads that ended are not listed: `process_cpu_seconds` counts
    them."""
    found = {}
    tasks = Path("/proc/self/task")
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        found[task.name] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return found


def process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def busy_threads(before: dict, after: dict, wall: float) -> str:
    """The threads that used more than 2% of `wall` between two `thread_cpu_seconds`, busiest
    first: which threads did a step's work, and whether any spun beside it."""
    used = [(after[tid][1] - before.get(tid, (None, 0.0))[1], after[tid][0]) for tid in after]
    busy = sorted((u for u in used if u[0] > 0.02 * wall), reverse=True)
    return ", ".join(f"{name} {seconds:.2f}" for seconds, name in busy)


def describe_operations(hlo_text: str) -> dict[str, str]:
    """Operation name -> 'shape opcode(operands)' from the compiled HLO text."""
    found = {}
    for m in re.finditer(r"%([\w.\-]+) = (\S+) ([\w\-]+)\(([^)]*)\)", hlo_text):
        found[m.group(1)] = f"{m.group(2)} {m.group(3)}({m.group(4).replace('%', '')[:70]})"
    for m in re.finditer(r'%([\w.\-]+) = .*? custom-call\(.*?custom_call_target="([^"]+)"', hlo_text):
        found[m.group(1)] = f"custom-call {m.group(2)}"  # its tuple shape defeats the pattern above
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="recurrent")
    p.add_argument("--units", type=int, default=None, help="default: the reference units")
    p.add_argument("--cell", default="lstm", help="for --model recurrent")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per profiled round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)

    if jax.default_backend() != "cpu":
        p.error(f"profiles XLA:CPU operations only; the default backend is {jax.default_backend()}")
    step, (state, x, y, key) = compiled_round(args.model, args.units, args.cell,
                                              args.batch_size, args.steps)
    state = jax.block_until_ready(step(state, x, y, key)[0])  # warm-up
    threads_before, cpu_before = thread_cpu_seconds(), process_cpu_seconds()
    start = time.perf_counter()
    for _ in range(args.rounds):
        state = step(state, x, y, key)[0]
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    cpu = process_cpu_seconds() - cpu_before
    threads = busy_threads(threads_before, thread_cpu_seconds(), seconds)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.rounds):
                state = step(state, x, y, key)[0]
            jax.block_until_ready(state)
        totals = operation_times(trace_dir)
    steps = args.rounds * args.steps
    described = describe_operations(step.as_text())
    print(f"{args.model}: {seconds / steps * 1e3:.2f} ms per step (wall, not profiled); "
          f"operations {sum(totals.values()) / steps / 1e6:.2f} ms per step (profiled)")
    print(f"CPU seconds over the {seconds:.2f} s unprofiled: the process {cpu:.2f} "
          f"({cpu / seconds:.2f} cores); live threads: {threads or 'none listed'}")
    for name, ns in totals.most_common(args.top):
        print(f"{ns / steps / 1e6:8.3f} ms  {name:34s} {described.get(name, '')}")


if __name__ == "__main__":
    main()
