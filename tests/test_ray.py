"""`--executor ray` against a real Ray cluster: a head and a second node, started here on the
loopback interface only, and stopped at the end (no process or port is left behind).

Nothing is mocked: sweeps run through the command line, as a user runs them, with workers
on both nodes. Deselect with -m "not ray" (CI installs the `ray` extra and runs them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import write_npz

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# A private Ray's HTTP goes nowhere but loopback: Ray's dashboard otherwise asks cloud
# metadata services (169.254.169.254) which cloud it is on (bench.run.ray_executor._loopback_only
# does the same for the private Ray it starts).
LOOPBACK_HTTP = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                 "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
RAY_MARKERS = ("gcs_server", "raylet", "ray::", "/ray/")
SMALL = ["--repeats", "2", "--burn-in", "0", "--round-steps", "5"]


# ---------------------------------------------------------------- processes and sockets

def ray_processes() -> dict[int, str]:
    """pid -> command line of every live Ray process on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (comm in ("gcs_server", "raylet") or any(m in cmd for m in RAY_MARKERS[2:])):
            found[int(entry.name)] = cmd.strip()
    return found


def sockets_of(pids: set[int] | None) -> list[tuple[str, str, str, int | None]]:
    """(state, local, peer, pid) of the TCP and UDP sockets the processes hold (`ss -tuanpH`);
    pids None: every socket, those of no process (closed, TIME-WAIT) with pid None."""
    out = subprocess.run(["ss", "-tuanpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        owners = [int(p) for p in re.findall(r"pid=(\d+)", line)] or [None]
        for pid in owners:
            if pids is None or pid in pids:
                found.append((fields[1], fields[4], fields[5], pid))
    return found


def loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") \
        or host.startswith("::ffff:127.")


def beyond_loopback(socket: tuple) -> bool:
    """Listening or connected on an address outside 127.0.0.0/8 (a wildcard listen counts)."""
    _, local, peer, _ = socket
    return not (loopback(local) and (peer in ("*", "0.0.0.0:*", "*:*") or loopback(peer)))


class SocketWatch:
    """Samples the sockets of every Ray process, in a thread, from start() to stop().

    A connection that has closed (TIME-WAIT) has no process in `ss`; one beyond loopback
    that was not there when the watch began is counted as well, whoever made it."""

    def __init__(self):
        self.seen, self.bad, self.samples, self.sockets = set(), set(), 0, 0
        self.earlier = {s[:3] for s in sockets_of(None) if beyond_loopback(s)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        pids = set(ray_processes())
        self.seen |= pids
        for socket in sockets_of(None):
            if socket[3] in pids:
                self.sockets += 1
            if beyond_loopback(socket) and (socket[3] in pids or (socket[3] is None and socket[:3] not in self.earlier)):
                self.bad.add(socket)
        self.samples += 1


# ---------------------------------------------------------------- the cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and one more node, 1 CPU each, on 127.0.0.1; stopped, and checked gone, after."""
    root = tmp_path_factory.mktemp("ray-cluster")
    before = set(ray_processes())
    with pytest.MonkeyPatch.context() as mp, SocketWatch() as watch:
        for name, value in {**LOOPBACK_HTTP, **compilation_cache(root / "xla-cache"),
                            "XDG_CACHE_HOME": str(root / "cache"),
                            "TFDS_DATA_DIR": str(root / "tfds"), "JAX_PLATFORMS": "cpu"}.items():
            mp.setenv(name, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # set by conftest
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            cluster.root, cluster.watch = root, watch
            yield cluster
        finally:
            cluster.shutdown()
    assert_gone(before)
    assert watch.bad == set(), f"Ray reached beyond loopback: {watch.bad}"


def compilation_cache(folder: Path) -> dict[str, str]:
    """JAX's persistent compilation cache for every process of the cluster and every `bench
    run` started here (they inherit the environment): the tests below train the same few
    dense programs again and again (the serial reference, the resumed run, each unit), and
    a user's `--compilation-cache` makes all but the first a load, as here."""
    return {"JAX_COMPILATION_CACHE_DIR": str(folder),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def assert_gone(before: set[int], within: float = 30.0) -> None:
    """No Ray process started since `before` is alive after `within` seconds, nor its ports."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = {p: c for p, c in ray_processes().items() if p not in before}
        if not left:
            return
        time.sleep(0.5)
    ports = sockets_of(set(left))
    pytest.fail(f"Ray processes left running: {left}; their sockets: {ports}")


@pytest.fixture(scope="module")
def data(cluster) -> Path:
    """An MNIST-shaped .npz at an absolute path every node can read."""
    return write_npz(cluster.root / "digits.npz", n_train=2048, n_test=256)


def bench_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bench", "run", *map(str, args)]


def run_bench(args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(bench_cmd(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def sweep(data: Path, *extra) -> list:
    """4 dense trials, each its own unit (population off), on the test data."""
    return ["--models", "dense", "--units", "32", "--activations", "relu,tanh",
            "--optimizers", "sgd,adam", "--epochs", "2", "--population", "off",
            "--data", data, *SMALL, *extra]


# ---------------------------------------------------------------- end to end

def test_sweep_on_two_nodes_matches_serial_and_stays_on_loopback(cluster, data):
    root = cluster.root
    on_ray = run_bench(sweep(data, "--executor", "ray", "--ray-address", cluster.address,
                             "--out", root / "on-ray"), root)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    serial = run_bench(sweep(data, "--out", root / "serial"), root)
    assert serial.returncode == 0, serial.stderr[-3000:]

    got, want = records(root / "on-ray"), records(root / "serial")
    assert sorted(r["key"] for r in got) == sorted(r["key"] for r in want)
    assert all(r["status"] == "ok" for r in got)
    nodes = {r["machine"].get("node") for r in got}
    assert len(nodes) == 2 and None not in nodes  # both nodes ran units
    assert {r["machine"].get("node") for r in want} == {None}
    # Same seeds, same machine: the same accuracies (observed: identical).
    serial_acc = {r["key"]: r["test_accuracy"] for r in want}
    for r in got:
        assert r["test_accuracy"] == pytest.approx(serial_acc[r["key"]], abs=1e-6), r["config"]

    header = json.loads((root / "on-ray" / "run.json").read_text())
    assert header["executor"]["name"] == "ray"
    assert {n["node"] for n in header["nodes"]} == nodes
    assert sum(n["trials"] for n in header["nodes"]) == 4
    assert len(header["executor_units"]) == 4
    assert all(u["round_trip_s"] >= u["work_s"] > 0 for u in header["executor_units"])
    assert "units: 4 finished" in on_ray.stdout

    # Nothing of Ray's listened or connected beyond 127.0.0.0/8, from the cluster's start on.
    watch = cluster.watch
    assert watch.samples > 10 and watch.seen and watch.sockets
    assert watch.bad == set()
    report = (root / "on-ray" / "report.md").read_text()
    assert "2 nodes" in report


def test_a_killed_worker_fails_its_unit_and_the_sweep_goes_on(cluster, data):
    root = cluster.root
    out = root / "killed"
    proc = subprocess.Popen(bench_cmd(*sweep(data, "--epochs", "6", "--units", "256",
                                            "--executor", "ray", "--ray-address", cluster.address,
                                            "--out", out)),
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = wait_for(lambda: next((p for p, c in ray_processes().items()
                                    if c.startswith("ray::UnitWorker.run")), None), 240)
    assert victim is not None, "no worker ever ran a unit"
    os.kill(victim, signal.SIGKILL)
    out_text, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    got = records(out)
    assert len(got) == 4 and len({r["key"] for r in got}) == 4
    failed = [r for r in got if r["status"] == "failed"]
    assert len(failed) == 1, [(r["status"], r["error"]) for r in got]
    assert "worker died" in failed[0]["error"] and "not retried" in failed[0]["error"]
    assert all(r["status"] == "ok" for r in got if r is not failed[0])


def test_ctrl_c_keeps_finished_trials_and_resume_skips_them(cluster, data):
    root = cluster.root
    out = root / "cancelled"
    args = sweep(data, "--seeds", "0,1,2", "--executor", "ray", "--ray-address", cluster.address,
                 "--out", out)  # 12 units
    # As from a terminal: SIGINT neither blocked nor ignored in the child, whatever this
    # process's state (a child inherits both; in the whole suite a run once ignored it).
    inherited = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    proc = subprocess.Popen(bench_cmd(*args), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    results = out / "results.jsonl"
    assert wait_for(lambda: results.exists() and results.read_text().count("\n") >= 2, 300)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (inherited, err[-3000:])
    kept = records(out)
    assert 2 <= len(kept) < 12 and all(r["status"] == "ok" for r in kept)
    # The workers were stopped with the run: none is still running a unit.
    assert wait_for(lambda: not any(c.startswith("ray::UnitWorker")
                                    for c in ray_processes().values()), 30)

    resumed = run_bench(["--resume", out, "--executor", "ray", "--ray-address", cluster.address],
                        root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(kept)} already finished" in resumed.stdout
    final = records(out)
    assert final[: len(kept)] == kept  # finished trials untouched, not run again
    assert len(final) == 12 and len({r["key"] for r in final}) == 12


def test_a_private_ray_runs_on_loopback_and_stops_with_the_run(cluster, data, monkeypatch):
    root = cluster.root
    before = set(ray_processes())
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # bench sets it for its private Ray
    for name in LOOPBACK_HTTP:  # and keeps that Ray's HTTP on loopback itself
        monkeypatch.delenv(name)
    with SocketWatch() as watch:
        done = run_bench(["--models", "dense", "--units", "16", "--activations", "relu",
                          "--optimizers", "adam", "--epochs", "1", "--data", data, *SMALL,
                          "--executor", "ray", "--out", root / "private"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "private local Ray" in done.stdout
    assert [r["status"] for r in records(root / "private")] == ["ok"]
    assert watch.seen - before and watch.sockets and watch.bad == set()
    assert_gone(before)


def test_an_address_nobody_answers_fails_in_seconds(cluster, data):
    start = time.monotonic()
    done = run_bench(sweep(data, "--executor", "ray", "--ray-address", "127.0.0.1:1",
                           "--out", cluster.root / "nowhere"), cluster.root, timeout=120)
    assert done.returncode == 2
    assert "no Ray cluster answers there" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - start < 60
    assert not (cluster.root / "nowhere").exists()


def interruptible() -> None:
    """In a child before exec: SIGINT delivered and at its default, so that Python installs
    its KeyboardInterrupt handler."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, timeout: float):
    """condition()'s first truthy value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return None


def test_a_pruned_sweep_decides_each_halving_group_on_one_worker_as_serially(cluster, data):
    """--prune halving: each halving group (here one per optimizer) is one unit, so one
    worker decides its rungs; the decisions and figures are the serial run's."""
    root = cluster.root
    # Each group one population (the alone path is tests/test_pruning.py's): one compile a unit.
    pruned = ["--learning-rate", "0.1,0.01,0.001", "--seeds", "0,1", "--activations", "relu",
              "--validation", "0.25", "--prune", "halving", "--population", "auto"]
    on_ray = run_bench(sweep(data, *pruned, "--executor", "ray", "--ray-address",
                             cluster.address, "--out", root / "pruned-ray"), root)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    serial = run_bench(sweep(data, *pruned, "--out", root / "pruned-serial"), root)
    assert serial.returncode == 0, serial.stderr[-3000:]
    got, want = records(root / "pruned-ray"), records(root / "pruned-serial")
    outcome = lambda rs: {r["key"]: (r["status"], r.get("pruned_at_epoch")) for r in rs}  # noqa: E731
    assert outcome(got) == outcome(want)
    assert sorted(s for s, _ in outcome(got).values()) == ["ok"] * 4 + ["pruned"] * 8
    header = json.loads((root / "pruned-ray" / "run.json").read_text())
    assert len(header["executor_units"]) == 2  # one unit per halving group
    serial_acc = {r["key"]: r["test_accuracy"] for r in want}
    for r in got:
        assert r["test_accuracy"] == pytest.approx(serial_acc[r["key"]], abs=1e-6), r["config"]
