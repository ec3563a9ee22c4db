"""Run directories: one writer at a time, unique new directories, atomic and checked files.

Also the calibration cache: written atomically under a lock, and a corrupt one is
measured again with a warning. Tests that start processes are marked slow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.contract import results
from bench.contract.facts import RunHeader
from bench.contract.results import RunDirBusy, RunDirError, lock_run_dir, new_run_dir
from bench.contract.schema import SchemaError

NOW = dt.datetime(2026, 12, 1, 10, 0, 0)
REPO = Path(__file__).resolve().parents[1]

# A process that holds the lock of argv[1] until its stdin closes or gets a line.
HOLDER = """
import sys
from bench.contract.results import lock_run_dir
with lock_run_dir(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- the lock


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with lock_run_dir(run_dir, command="python -m bench run --preset quick"):
        with pytest.raises(RunDirBusy) as busy, lock_run_dir(run_dir):
            pass
        message = one_line(busy)
        assert message.startswith(f"{run_dir} is being written by another bench run "
                                  f"(pid {os.getpid()} on ")
        assert "python -m bench run --preset quick" in message
        assert message.endswith("wait for it to finish, or give another --out")
    with lock_run_dir(run_dir) as held:  # released: free again
        assert held == run_dir
    assert not (run_dir / results.LOCK).exists()  # leaves nothing behind


def test_busy_is_a_run_dir_error_and_a_value_error():
    assert issubclass(RunDirBusy, RunDirError) and issubclass(RunDirError, ValueError)


def test_the_lock_records_its_holder(tmp_path):
    with lock_run_dir(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / results.LOCK).read_text())
    assert holder["pid"] == os.getpid()
    assert holder["command"] and holder["host"] and holder["since"]


def test_lock_creates_missing_directories(tmp_path):
    with lock_run_dir(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b").is_dir()


def test_lock_on_a_file_is_refused(tmp_path):
    file = tmp_path / "results"
    file.write_text("x")
    with pytest.raises(RunDirError, match="is a file") as error, lock_run_dir(file):
        pass
    assert str(file) in one_line(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_lock_on_an_unwritable_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o555)
    with pytest.raises(RunDirError, match="not writable"), lock_run_dir(run_dir):
        pass


def test_releasing_never_removes_another_holders_lock(tmp_path):
    run_dir = tmp_path / "run"
    first = lock_run_dir(run_dir)
    first.__enter__()
    (run_dir / results.LOCK).unlink()  # someone removed the file: a second run can lock anew
    second = lock_run_dir(run_dir)
    second.__enter__()
    first.__exit__(None, None, None)
    assert (run_dir / results.LOCK).exists()
    with pytest.raises(RunDirBusy), lock_run_dir(run_dir):
        pass
    second.__exit__(None, None, None)


def start_holder(run_dir: Path) -> subprocess.Popen:
    """A process holding `run_dir`'s lock, started and confirmed locked."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_lock_held_by_another_process_is_refused_until_it_exits(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_holder(run_dir)
    try:
        with pytest.raises(RunDirBusy) as busy, lock_run_dir(run_dir):
            pass
        assert f"pid {proc.pid} " in one_line(busy)
        assert "-c" in str(busy.value)  # its command line
    finally:
        proc.communicate("done\n", timeout=30)
    with lock_run_dir(run_dir):
        pass


@pytest.mark.slow
def test_the_lock_dies_with_its_holder(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_holder(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (run_dir / results.LOCK).exists()  # a stale file, but no lock
    with lock_run_dir(run_dir):
        holder = json.loads((run_dir / results.LOCK).read_text())
    assert holder["pid"] == os.getpid()


# ---------------------------------------------------------------- a new --out: who creates, who removes


def lock_is_held(lock_file: Path) -> bool:
    """Whether some open file description holds `lock_file`'s flock (tried without waiting)."""
    import fcntl
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@pytest.fixture
def tiny_sweep():
    from bench.contract.schema import make_config
    from bench.contract.sweepfile import Sweep
    trial = make_config({"model": "dense", "units": 4, "activation": "relu", "optimizer": "sgd",
                         "epochs": 1})
    return Sweep(name="race", trials=(trial,))


def run_into(out: Path, sweep, npz: Path) -> int:
    from bench.run.runner import RunOptions, run_sweep
    return run_sweep(sweep, RunOptions(out=out, data=str(npz), dataset="tiny"),
                     ["run", "--out", str(out)])


def before_mkdir_of(monkeypatch, target: Path, action) -> list:
    """Runs `action` once, just before the first mkdir of `target` (another process's move
    between this one's steps); the list records that it ran."""
    ran, real_mkdir = [], Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target and not ran:
            ran.append(True)
            action()
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return ran


def test_a_run_that_loses_the_race_into_a_new_out_leaves_the_winners_directory(
        isolated, tmp_path, tiny_npz, tiny_sweep, monkeypatch):
    """Two runs into the same new --out: the other one creates and locks it just before this
    one's mkdir. This one is refused, and the winner's directory and lock stay."""
    out = tmp_path / "out"
    winner = lock_run_dir(out, command="the winner")
    ran = before_mkdir_of(monkeypatch, out, winner.__enter__)
    try:
        with pytest.raises(RunDirBusy, match="the winner"):
            run_into(out, tiny_sweep, tiny_npz)
        assert ran, "the race was not staged: run_sweep never made the directory"
        assert (out / results.LOCK).exists() and lock_is_held(out / results.LOCK)
        results.write_header(out, {"run_id": "the winner's"})  # the winner goes on
    finally:
        winner.__exit__(None, None, None)
    assert results.read_header(out) == {"run_id": "the winner's"}


def test_a_creator_that_loses_the_lock_removes_nothing(tmp_path, monkeypatch):
    """This process makes the new directory, but another locks it first: busy, and the
    directory (now the other's) stays."""
    import fcntl
    out = tmp_path / "out"
    other, real_flock = lock_run_dir(out, command="the other"), fcntl.flock
    ran = []

    def flock(fd, operation):
        if not ran:  # this process's first lock attempt: the other one gets there first
            ran.append(True)
            other.__enter__()
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        with pytest.raises(RunDirBusy, match="the other"), lock_run_dir(out, discard_unused=True):
            pass
        assert ran and (out / results.LOCK).exists() and lock_is_held(out / results.LOCK)
    finally:
        other.__exit__(None, None, None)
    assert out.is_dir()


def test_a_new_directory_with_no_run_in_it_is_removed_while_still_locked(tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []
    real_rmtree = results.shutil.rmtree

    def rmtree(path, **kwargs):  # renamed away, its lock still held
        seen.append((Path(path).parent == tmp_path, lock_is_held(Path(path) / results.LOCK)))
        return real_rmtree(path, **kwargs)

    monkeypatch.setattr(results.shutil, "rmtree", rmtree)
    with lock_run_dir(out, discard_unused=True):
        assert out.is_dir()
    assert seen == [(True, True)]
    assert list(tmp_path.iterdir()) == []  # nothing left, not even the renamed directory


def test_only_an_unused_new_directory_is_removed(tmp_path):
    used, existing, kept = tmp_path / "used", tmp_path / "existing", tmp_path / "kept"
    with lock_run_dir(used, discard_unused=True):
        results.write_header(used, {"a": 1})  # a run was written: it stays
    existing.mkdir()
    with lock_run_dir(existing, discard_unused=True):
        pass  # not made by this call: it stays
    with lock_run_dir(kept):
        pass  # discard_unused not asked for
    assert [p.name for p in used.iterdir()] == [results.HEADER]
    assert existing.is_dir() and list(existing.iterdir()) == []
    assert kept.is_dir()
    made = new_run_dir(tmp_path / "reports", NOW)
    with lock_run_dir(made, discard_unused=True, created=True):
        pass  # the caller made it (new_run_dir)
    assert not made.exists()


def test_a_run_that_fails_before_its_header_leaves_no_new_directory(
        isolated, tmp_path, tiny_npz, tiny_sweep, monkeypatch):
    def fail(sweep, options, argv, run_dir):
        assert lock_is_held(run_dir / results.LOCK)
        raise RuntimeError("failed before run.json")

    monkeypatch.setattr("bench.run.runner._run_locked", fail)
    with pytest.raises(RuntimeError, match="before run.json"):
        run_into(tmp_path / "out", tiny_sweep, tiny_npz)
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()  # a directory the user made is kept, empty or not
    with pytest.raises(RuntimeError, match="before run.json"):
        run_into(tmp_path / "mine", tiny_sweep, tiny_npz)
    assert (tmp_path / "mine").is_dir()


def test_a_process_arriving_while_the_creator_discards_gets_a_fresh_directory(tmp_path,
                                                                             monkeypatch):
    """A process opens the lock file of a new directory whose creator then discards it
    unused (renamed away under the lock); once it gets that lock, it finds the path names no
    file, and starts over in a fresh directory of its own, which it may discard in turn."""
    import fcntl
    out = tmp_path / "out"
    creator = lock_run_dir(out, discard_unused=True)
    creator.__enter__()
    real_flock, ran = fcntl.flock, []

    def flock(fd, operation):
        if not ran:  # opened the creator's file; the creator finishes before the lock is tried
            ran.append(True)
            creator.__exit__(None, None, None)
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with lock_run_dir(out, discard_unused=True):
        assert ran and out.is_dir() and lock_is_held(out / results.LOCK)
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- new directories


def test_new_run_dirs_in_the_same_second_differ(tmp_path):
    dirs = [new_run_dir(tmp_path / "reports", NOW) for _ in range(30)]
    assert len(set(dirs)) == 30 and all(d.is_dir() for d in dirs)
    assert dirs[0].name == "20261201-100000" and dirs[1].name == "20261201-100000-2"


def test_new_run_dirs_from_threads_differ(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path, NOW), range(80)))
    assert len(set(dirs)) == 80


@pytest.mark.slow
def test_new_run_dirs_from_processes_differ(tmp_path):
    script = ("import sys, datetime as dt\nfrom bench.contract.results import new_run_dir\n"
              "now = dt.datetime(2026, 12, 1, 10, 0, 0)\n"
              "for _ in range(25): print(new_run_dir(sys.argv[1], now))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO) for _ in range(4)]
    dirs = [line for p in procs for line in p.communicate(timeout=60)[0].split()]
    assert len(dirs) == 100 and len(set(dirs)) == 100


def test_new_run_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "reports").write_text("x")
    with pytest.raises(RunDirError, match="reports"):
        new_run_dir(tmp_path / "reports")


# ---------------------------------------------------------------- run.json


def test_write_header_leaves_no_temporary_file(tmp_path):
    results.write_header(tmp_path, {"a": 1})
    results.write_header(tmp_path, {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == [results.HEADER]
    assert results.read_header(tmp_path) == {"a": 2}


def test_write_header_keeps_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        results.write_header(tmp_path, {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / results.HEADER).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_keeps_the_old_header_and_no_temporary_file(tmp_path, monkeypatch, failing):
    results.write_header(tmp_path, {"a": 1})

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError):
        results.write_header(tmp_path, {"a": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [results.HEADER]
    assert results.read_header(tmp_path) == {"a": 1}


def test_a_reader_never_sees_half_a_header(tmp_path):
    big = [{"a": "x" * 50_000}, {"b": list(range(20_000))}]
    results.write_header(tmp_path, big[0])
    stop, seen = threading.Event(), []

    def write():
        for i in range(60):
            results.write_header(tmp_path, big[i % 2])
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not stop.is_set():
        header = results.read_header(tmp_path)  # RunDirError if it were half written
        seen.append(header in big)
    writer.join()
    assert seen and all(seen)


@pytest.mark.parametrize("content, problem", [
    (b"", "not JSON: Expecting value: line 1 column 1"),
    (b'{"a": 1', "not JSON"),
    (b'{"a": "\xff"}', "not UTF-8 text: byte 0xff at offset 7"),
    (b"[1, 2]", "a JSON array, not an object"),
    (b"null", "a JSON null, not an object"),
])
def test_a_corrupt_header_is_a_run_dir_error(tmp_path, content, problem):
    (tmp_path / results.HEADER).write_bytes(content)
    with pytest.raises(RunDirError) as error:
        results.read_header(tmp_path)
    message = one_line(error)
    assert message.startswith(f"{tmp_path / results.HEADER} is corrupt ({problem}")
    assert "another --out" in message


def test_a_missing_header_is_a_run_dir_error(tmp_path):
    with pytest.raises(RunDirError, match="cannot be read"):
        results.read_header(tmp_path)


# ---------------------------------------------------------------- results.jsonl


def write_lines(run_dir: Path, *lines: bytes) -> Path:
    file = run_dir / results.RESULTS
    file.write_bytes(b"".join(lines))
    return file


def test_a_torn_last_line_is_skipped(tmp_path):
    write_lines(tmp_path, b'{"key": "a"}\n', b'{"key": "b"}\n', b'{"key": "c", "acc')
    assert [r["key"] for r in results.read_results(tmp_path)] == ["a", "b"]


def test_a_last_line_torn_inside_a_character_is_skipped(tmp_path):
    write_lines(tmp_path, b'{"key": "a"}\n', '{"key": "é'.encode()[:-1])
    assert [r["key"] for r in results.read_results(tmp_path)] == ["a"]


@pytest.mark.parametrize("bad, problem", [
    (b'{"key": "b", "acc\n', "Unterminated string starting at: line 1 column 14"),
    (b'{"key": "\xff"}\n', "not UTF-8 text"),
    (b'[1, 2]\n', "a JSON array, not an object"),
])
def test_a_bad_middle_line_is_a_run_dir_error_naming_it(tmp_path, bad, problem):
    file = write_lines(tmp_path, b'{"key": "a"}\n', bad, b'{"key": "c"}\n')
    with pytest.raises(RunDirError) as error:
        results.read_results(tmp_path)
    assert one_line(error).startswith(f"{file}:2: not a JSON line ({problem}")


def test_a_complete_last_line_that_is_no_object_is_an_error(tmp_path):
    file = write_lines(tmp_path, b'{"key": "a"}\n', b'"text"\n')
    with pytest.raises(RunDirError, match=f"{file.name}:2: not a JSON line"):
        results.read_results(file)


def test_appending_after_a_torn_line_keeps_every_record(tmp_path):
    write_lines(tmp_path, b'{"key": "a"}\n', b'{"key": "b", "acc')
    results.append_result(tmp_path, {"key": "c"})
    assert [r["key"] for r in results.read_results(tmp_path)] == ["a", "c"]


# ---------------------------------------------------------------- the calibration cache


@pytest.fixture
def cpu():
    import jax
    return jax.devices("cpu")[0]


def cache_path() -> Path:
    from bench.engine.calibrate import cache_file
    return cache_file()


def test_a_good_cache_is_used_without_a_warning(isolated, fake_peak, cpu):
    from bench.engine.calibrate import calibration
    first, second = calibration(cpu), calibration(cpu)
    assert len(fake_peak) == 1 and second["cached"] and "warning" not in first | second


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (None, "lacks a numeric peak_flops"),  # an entry for this machine without a figure
])
def test_a_corrupt_cache_is_measured_again_and_rewritten(isolated, fake_peak, cpu, content, problem):
    from bench.engine.calibrate import calibration, machine_key
    path = cache_path()
    path.parent.mkdir(parents=True)
    if content is None:
        content = json.dumps({machine_key(cpu): {"peak_flops": "fast", "matrix_size": 2048},
                              "another machine": {"peak_flops": 5.0, "matrix_size": 8}})
    path.write_text(content)
    result = calibration(cpu)
    assert len(fake_peak) == 1 and not result["cached"]
    assert result["warning"].startswith(f"calibration cache {path} was corrupt (")
    assert problem in result["warning"] and result["warning"].endswith("measured again")
    stored = json.loads(path.read_text())
    assert stored[machine_key(cpu)]["peak_flops"] == result["peak_flops"]
    if "another machine" in content:
        assert stored["another machine"]["peak_flops"] == 5.0  # good entries survive
    again = calibration(cpu)
    assert again["cached"] and "warning" not in again and len(fake_peak) == 1


def test_an_unwritable_cache_is_a_warning(isolated, fake_peak, cpu, tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    isolated.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    from bench.engine.calibrate import calibration
    result = calibration(cpu)
    assert "could not be written" in result["warning"] and result["peak_flops"] > 0


def test_concurrent_cache_writers_keep_every_entry(isolated):
    from bench.engine.calibrate import _store
    path = cache_path()
    entry = {"peak_flops": 1.0, "matrix_size": 8}
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: _store(path, f"machine {i}", entry), range(120)))
    assert len(json.loads(path.read_text())) == 120
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_cache_leaves_no_temporary_file(isolated, fake_peak, cpu):
    import socket
    from bench.engine.calibrate import calibration
    calibration(cpu, use_cache=False)
    names = sorted(p.name for p in cache_path().parent.iterdir())
    assert names[:2] == ["calibration.json", "calibration.json.lock"]  # the cache and its lock
    assert names[2:] == [f"calibration.measuring.{socket.gethostname()}.lock"]  # the node's


def test_run_json_is_read_through_the_run_header(tmp_path):
    """run.json is written and read as a RunHeader: the fields it names, migrated from older
    versions, and an unknown field refused by name."""
    header = RunHeader(run_id="r1", schema_version=3, name="quick", device={"platform": "cpu"},
                       nodes=[{"host": "a", "units": 1, "trials": 2}])
    results.write_header(tmp_path, header)
    written = results.read_header(tmp_path)
    assert "resumed" not in written and written["nodes"] == header.nodes
    read = results.load_header(tmp_path)
    assert read == header and read.population_setting is None
    read.resumed.append({"command": "python -m bench run --resume r1", "population": "off"})
    assert read.population_setting == "off"  # this invocation's setting, not the first one's
    results.write_header(tmp_path, {**written, "colour": "blue"})
    with pytest.raises(SchemaError, match="unknown run.json field.*colour"):
        results.load_header(tmp_path)
