"""Every error of the user's input or environment ends in one line, never a traceback.

One table of cases, each run through bench.cli.main in-process as a new user would
type it: exit status 2, one line on stderr (`bench <command>: error: ...`, or
argparse's usage error for a flag's syntax) naming the offending path or value, no
traceback (printed, or escaping main(), which fails the test by itself), nothing on
stdout, nothing compiled (an XLA compilation, a trial or the calibration fails the
test) and no file written, changed or removed.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.contract import registry
from bench.cli import main
from bench.contract.schema import SCHEMA_VERSION
from bench.contract.sweepfile import preset_names
from conftest import write_npz
from models import MODELS

GOLDEN_RUN = Path(__file__).parent / "golden" / "run"
TINY = ["--models", "dense", "--units", "4", "--epochs", "1"]


@pytest.fixture
def nothing_may_run(monkeypatch):
    """Fails the test if XLA compiles anything, or a trial or the calibration is reached."""
    def forbidden(*args, **kwargs):
        pytest.fail("reached a compile, a trial or the calibration: input was not checked first")

    for target in ("jax._src.compiler.compile_or_get_cached",  # every XLA compilation
                   "bench.run.executors.run_job", "bench.engine.training.train_unit",
                   "bench.engine.calibrate.calibration", "bench.engine.calibrate.measure_peak",
                   "bench.run.ray_executor._import_ray"):  # no case may start Ray
        monkeypatch.setattr(target, forbidden)


# ---------------------------------------------------------------- what the cases set up
# Each takes the test's folder and returns nothing; the case's argv names what it made.


def a_file(name: str, content: bytes = b"x"):
    def make(tmp: Path):
        (tmp / name).write_bytes(content)
    return make


def a_folder(name: str):
    def make(tmp: Path):
        (tmp / name).mkdir()
    return make


def a_run(header: bytes | None = None, results: bytes | None = None, train_examples: int = 256):
    """A run directory `run`: the golden run.json and results.jsonl unless given other bytes.

    The header carries the plan, options and data of a run of one tiny trial on tiny.npz,
    so that a `bench run --resume` of it would otherwise go on to run that trial."""
    def make(tmp: Path):
        run = tmp / "run"
        run.mkdir()
        head = json.loads((GOLDEN_RUN / "run.json").read_text(encoding="utf-8"))
        npz = str(tmp / "tiny.npz")
        head["plan"] = [{"model": "dense", "units": 4, "activation": "relu", "optimizer": "sgd",
                         "epochs": 1}]
        head["options"] = {"device": "auto", "data": npz, "dataset": "tiny", "data_dir": None}
        head["data"] = {"name": "tiny", "source": "npz", "location": npz,
                        "train_examples": train_examples, "test_examples": 64}
        (run / "run.json").write_bytes(json.dumps(head).encode() if header is None else header)
        (run / "results.jsonl").write_bytes((GOLDEN_RUN / "results.jsonl").read_bytes()
                                            if results is None else results)
    return make


def record_line(**changes) -> bytes:
    first = (GOLDEN_RUN / "results.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return (json.dumps({**json.loads(first), **changes}) + "\n").encode()


def golden_lines(middle: bytes) -> bytes:
    """The golden results with `middle` as line 2."""
    lines = (GOLDEN_RUN / "results.jsonl").read_bytes().splitlines(keepends=True)
    return b"".join([lines[0], middle, *lines[1:]])


def corrupt_npz(tmp: Path):
    whole = write_npz(tmp / "cut.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(whole[: len(whole) // 2])


def an_npz_without_images(tmp: Path):
    with zipfile.ZipFile(tmp / "empty.npz", "w"):
        pass


def a_read_only_folder(tmp: Path):
    (tmp / "ro").mkdir(mode=0o555)


def a_compare_pair(tmp: Path):
    from test_compare import record, write_run
    write_run(tmp / "base", [record(seed=1)], peak_flops=1e12)
    write_run(tmp / "cand", [record(seed=2)])


def together(*makers):
    def make(tmp: Path):
        for maker in makers:
            maker(tmp)
    return make


def nothing(tmp: Path):
    pass


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """argv and the message's fragments may hold {tmp} (the test's folder) and {npz}
    (a valid tiny .npz); `usage` marks argparse's own error for a flag's syntax."""

    argv: list[str]
    named: list[str]
    setup: object = nothing
    usage: bool = False
    marks: tuple = ()


RUN_OUT = ["--out", "{tmp}/out"]
NEWER = json.dumps({"schema_version": SCHEMA_VERSION + 1}).encode()
CORRUPT_HEADERS = {  # run.json contents -> what the message says
    "not-json": (b"{not json", ["run.json is corrupt", "not JSON"]),
    "json-array": (b"[1, 2]", ["run.json is corrupt", "a JSON array"]),
    "not-utf8": (b'{"a": "\xff"}', ["run.json is corrupt", "not UTF-8"]),
    "newer-schema": (NEWER, ["run.json", "newer bench", "upgrade bench"]),
}


CASES: dict[str, Case] = {
    # ---- bench run: where it writes
    "run --out an existing file": Case(
        ["run", *TINY, "--data", "{npz}", "--out", "{tmp}/afile"],
        ["{tmp}/afile", "is a file, not a run directory"], a_file("afile")),
    "run --out under a file": Case(
        ["run", *TINY, "--data", "{npz}", "--out", "{tmp}/afile/sub"],
        ["{tmp}/afile/sub", "Not a directory"], a_file("afile")),
    "run --out in a read-only folder": Case(
        ["run", *TINY, "--data", "{npz}", "--out", "{tmp}/ro/sub"], ["{tmp}/ro/sub"],
        a_read_only_folder,
        marks=(pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; "
                                  "'--out under a file' covers an unwritable --out for root"),)),
    # ---- bench run: what it resumes
    "run --resume a missing folder": Case(
        ["run", "--resume", "{tmp}/nowhere"], ["{tmp}/nowhere", "no run to resume"]),
    "run --resume a file": Case(
        ["run", "--resume", "{tmp}/afile"], ["{tmp}/afile", "no run to resume"], a_file("afile")),
    **{f"run {flag} with run.json {kind}": Case(
        ["run", flag, "{tmp}/run", *([] if flag == "--resume" else TINY)],
        ["{tmp}/run/run.json", *named], a_run(header=content))
       for kind, (content, named) in CORRUPT_HEADERS.items() for flag in ("--resume", "--out")},
    "run --resume with run.json a folder": Case(
        ["run", "--resume", "{tmp}/run"], ["{tmp}/run/run.json", "cannot be read"],
        together(a_folder("run"), a_folder("run/run.json"))),
    "run --resume with a bad middle line in results": Case(
        ["run", "--resume", "{tmp}/run"], ["{tmp}/run/results.jsonl:2", "not a JSON line"],
        a_run(results=golden_lines(b'{"key": "x", "sta\n'))),
    "run --resume with a record from a newer bench": Case(
        ["run", "--resume", "{tmp}/run"], ["{tmp}/run", "newer bench"],
        a_run(results=record_line(schema_version=SCHEMA_VERSION + 1))),
    "run --resume onto other data": Case(
        ["run", "--resume", "{tmp}/run"], ["{tmp}/run", "same --data", "128", "256"],
        a_run(train_examples=128)),
    # ---- bench run: the sweep
    "run --sweep not UTF-8": Case(
        ["run", "--sweep", "{tmp}/latin1.toml", *RUN_OUT], ["{tmp}/latin1.toml", "not a UTF-8"],
        a_file("latin1.toml", 'name = "caf\u00e9"\n[grid]\nmodels = "dense"\n'.encode("latin-1"))),
    "run --sweep missing": Case(
        ["run", "--sweep", "{tmp}/absent.toml", *RUN_OUT], ["{tmp}/absent.toml", "cannot read"]),
    "run --sweep a folder": Case(
        ["run", "--sweep", "{tmp}/sweeps", *RUN_OUT], ["{tmp}/sweeps", "cannot read"],
        a_folder("sweeps")),
    "run --sweep invalid TOML": Case(
        ["run", "--sweep", "{tmp}/bad.toml", *RUN_OUT], ["{tmp}/bad.toml", "cannot read", "line 1"],
        a_file("bad.toml", b'[grid\nmodels = "dense"\n')),
    "run --sweep with an unknown key": Case(
        ["run", "--sweep", "{tmp}/typo.toml", *RUN_OUT], ["{tmp}/typo.toml", "'model'", "models"],
        a_file("typo.toml", b'[grid]\nmodel = "dense"\n')),
    "run --preset unknown": Case(
        ["run", "--preset", "nope", *RUN_OUT], ["'nope'", *preset_names()]),
    "run --preset and --sweep": Case(
        ["run", "--preset", "quick", "--sweep", "{tmp}/sweep.toml", *RUN_OUT], ["--sweep", "--preset"]),
    "run --compilation-cache under a file": Case(
        ["run", *TINY, "--compilation-cache", "{tmp}/afile/cache", *RUN_OUT],
        ["--compilation-cache", "{tmp}/afile/cache"], a_file("afile")),
    # ---- bench run: the executor
    "run --ray-address without --executor ray": Case(
        ["run", *TINY, "--data", "{npz}", "--ray-address", "127.0.0.1:6379", *RUN_OUT],
        ["--ray-address", "needs --executor ray"]),
    "run --tasks-per-node without --executor ray": Case(
        ["run", *TINY, "--data", "{npz}", "--tasks-per-node", "2", *RUN_OUT],
        ["--tasks-per-node", "needs --executor ray"]),
    "run --sweep with an unknown executor": Case(
        ["run", "--sweep", "{tmp}/dask.toml", "--data", "{npz}", *RUN_OUT],
        ["executor", "'dask'", "serial, ray"],
        a_file("dask.toml", b'[grid]\nmodels = "dense"\n[run]\nexecutor = "dask"\n')),
    "run --sweep with tasks_per_node 0": Case(
        ["run", "--sweep", "{tmp}/packed.toml", "--data", "{npz}", *RUN_OUT],
        ["tasks_per_node", "0", "positive integer"],
        a_file("packed.toml", b'[grid]\nmodels = "dense"\n[run]\nexecutor = "ray"\n'
                              b'tasks_per_node = 0\n')),
    "run --sweep with a ray_address but the serial executor": Case(
        ["run", "--sweep", "{tmp}/addr.toml", "--data", "{npz}", *RUN_OUT],
        ["[run] ray_address", "needs --executor ray"],
        a_file("addr.toml", b'[grid]\nmodels = "dense"\n[run]\nray_address = "10.0.0.1:6379"\n')),
    # ---- bench run: the data
    "run --data missing": Case(
        ["run", *TINY, "--data", "{tmp}/nowhere", *RUN_OUT], ["{tmp}/nowhere", "embedded", "tfds"]),
    "run --data not .npz or IDX": Case(
        ["run", *TINY, "--data", "{tmp}/digits.csv", *RUN_OUT], ["{tmp}/digits.csv", "not an .npz"],
        a_file("digits.csv", b"1,2,3\n")),
    "run --data a folder without IDX files": Case(
        ["run", *TINY, "--data", "{tmp}/empty", *RUN_OUT], ["{tmp}/empty", "train-images-idx3-ubyte"],
        a_folder("empty")),
    "run --data a corrupt .npz": Case(
        ["run", *TINY, "--data", "{tmp}/cut.npz", *RUN_OUT], ["{tmp}/cut.npz"], corrupt_npz),
    "run --data a text file named .npz": Case(
        ["run", *TINY, "--data", "{tmp}/text.npz", *RUN_OUT], ["{tmp}/text.npz", "not a zip archive"],
        a_file("text.npz", b"hello\n")),
    "run --data an .npz without the arrays": Case(
        ["run", *TINY, "--data", "{tmp}/empty.npz", *RUN_OUT], ["{tmp}/empty.npz", "x_train"],
        an_npz_without_images),
    # ---- bench run: names and values
    "run --models unknown": Case(
        ["run", "--models", "mlp", "--data", "{npz}", *RUN_OUT], ["'mlp'", *MODELS]),
    "run --activations unknown": Case(
        ["run", *TINY, "--activations", "swish", "--data", "{npz}", *RUN_OUT],
        ["'swish'", *registry.ACTIVATIONS]),
    "run --optimizers unknown": Case(
        ["run", *TINY, "--optimizers", "sgdm", "--data", "{npz}", *RUN_OUT],
        ["'sgdm'", *registry.OPTIMIZERS]),
    "run --units 1.5": Case(["run", *TINY, "--units", "1.5", *RUN_OUT], ["units", "1.5", "integer"]),
    "run --units 0": Case(["run", *TINY, "--units", "0", *RUN_OUT], ["units", "0", "> 0"]),
    "run --epochs 0": Case(["run", *TINY, "--epochs", "0", *RUN_OUT], ["epochs", "0", "> 0"]),
    "run --dropout 1": Case(["run", *TINY, "--dropout", "1", *RUN_OUT], ["dropout", "< 1"]),
    "run --device tpu": Case(
        ["run", *TINY, "--device", "tpu", "--data", "{npz}", *RUN_OUT],
        ["no tpu device", "platforms present: cpu"]),
    "run --device unknown": Case(
        ["run", *TINY, "--device", "abacus", "--data", "{npz}", *RUN_OUT],
        ["'abacus'", "cpu", "gpu", "tpu", "auto"]),
    # ---- bench run: flag syntax (argparse)
    "run --units many": Case(["run", "--units", "many"], ["--units", "'many'"], usage=True),
    "run --repeats 0": Case(["run", "--repeats", "0"], ["--repeats", "0"], usage=True),
    "run --round-steps 0": Case(["run", "--round-steps", "0"], ["--round-steps", "0"], usage=True),
    "run --burn-in -1": Case(["run", "--burn-in", "-1"], ["--burn-in", "-1"], usage=True),
    "run --targets 1.5": Case(["run", "--targets", "1.5"], ["--targets", "'1.5'"], usage=True),
    "run --tasks-per-node 0": Case(
        ["run", "--executor", "ray", "--tasks-per-node", "0"], ["--tasks-per-node", "0"], usage=True),
    "run --executor dask": Case(
        ["run", "--executor", "dask"], ["--executor", "'dask'", "serial", "ray"], usage=True),
    # ---- bench report
    "report a missing path": Case(
        ["report", "{tmp}/nowhere"], ["{tmp}/nowhere", "not a run directory"]),
    "report a folder without run.json": Case(
        ["report", "{tmp}/empty"], ["{tmp}/empty", "no run.json"], a_folder("empty")),
    "report run.json not JSON": Case(
        ["report", "{tmp}/run"], ["{tmp}/run/run.json", "not JSON"], a_run(header=b"{not json")),
    "report a bad middle line in results": Case(
        ["report", "{tmp}/run"], ["{tmp}/run/results.jsonl:2", "not a JSON line"],
        a_run(results=golden_lines(b'{"key": "x", "sta\n'))),
    "report a results line that is not UTF-8": Case(
        ["report", "{tmp}/run"], ["{tmp}/run/results.jsonl:2", "not UTF-8"],
        a_run(results=golden_lines(b'{"key": "\xff"}\n'))),
    "report results that are not JSON lines": Case(
        ["report", "{tmp}/run"], ["{tmp}/run/results.jsonl:1", "not a JSON line"],
        a_run(results=b"model,units,status\n")),
    "report results.jsonl a folder": Case(
        ["report", "{tmp}/run"], ["{tmp}/run/results.jsonl", "cannot be read"],
        together(a_folder("run"), a_file("run/run.json", (GOLDEN_RUN / "run.json").read_bytes()),
                 a_folder("run/results.jsonl"))),
    "report a record from a newer bench": Case(
        ["report", "{tmp}/run"], ["{tmp}/run", "record 1", "newer bench"],
        a_run(results=record_line(schema_version=SCHEMA_VERSION + 1))),
    "report --out an existing file": Case(
        ["report", str(GOLDEN_RUN), "--out", "{tmp}/afile"], ["{tmp}/afile", "is a file"],
        a_file("afile")),
    "report --out under a file": Case(
        ["report", str(GOLDEN_RUN), "--out", "{tmp}/afile/sub"], ["{tmp}/afile/sub"],
        a_file("afile")),
    "report --format pdf": Case(
        ["report", str(GOLDEN_RUN), "--format", "pdf"], ["--format", "'pdf'"], usage=True),
    # ---- bench compare (exit status 2: unusable input)
    "compare a missing path": Case(
        ["compare", "{tmp}/base", "{tmp}/nowhere"], ["{tmp}/nowhere", "no such file"],
        a_compare_pair),
    "compare lines that are not JSON": Case(
        ["compare", "{tmp}/base", "{tmp}/garbage/results.jsonl"],
        ["{tmp}/garbage/results.jsonl:1", "not a JSON line"],
        together(a_compare_pair, a_folder("garbage"),
                 a_file("garbage/results.jsonl", b'{not json\n{"key": 1\n'))),
    "compare empty results": Case(
        ["compare", "{tmp}/base", "{tmp}/empty"], ["{tmp}/empty", "no trial results"],
        together(a_compare_pair, a_folder("empty"), a_file("empty/results.jsonl", b""))),
    "compare no trials in common": Case(
        ["compare", "{tmp}/base", str(GOLDEN_RUN)], ["no trial in common"], a_compare_pair),
    "compare a record from a newer bench": Case(
        ["compare", "{tmp}/base", "{tmp}/run"], ["{tmp}/run", "newer bench"],
        together(a_compare_pair, a_run(results=record_line(schema_version=SCHEMA_VERSION + 1)))),
    "compare --normalize without calibration": Case(
        ["compare", "{tmp}/base", "{tmp}/cand", "--normalize"], ["{tmp}/cand", "calibration"],
        a_compare_pair),
    "compare --markdown a folder": Case(
        ["compare", "{tmp}/base", "{tmp}/cand", "--markdown", "{tmp}/md"], ["{tmp}/md"],
        together(a_compare_pair, a_folder("md"))),
    "compare --threshold unknown": Case(
        ["compare", "{tmp}/base", "{tmp}/cand", "--threshold", "speed=0.1"],
        ["--threshold", "speed", "step_time"], a_compare_pair, usage=True),
}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", [pytest.param(name, marks=case.marks) for name, case in CASES.items()])
def test_an_error_is_one_line_naming_the_cause(name, isolated, tiny_npz, nothing_may_run, capsys,
                                               tmp_path):
    case = CASES[name]
    case.setup(tmp_path)
    argv = [a.format(tmp=tmp_path, npz=tiny_npz) for a in case.argv]
    before = snapshot(tmp_path)
    if case.usage:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        status = exit_.value.code
    else:
        status = main(argv)
    out, err = capsys.readouterr()

    assert "Traceback" not in out + err
    assert status == 2, err
    assert out == ""
    lines = err.splitlines()
    if case.usage:  # usage: bench <command> [...] (maybe wrapped), then the error line
        assert lines[0].startswith(f"usage: bench {argv[0]}")
        lines = lines[-1:]
        assert err.endswith("\n") and lines[0].startswith(f"bench {argv[0]}: error: argument ")
    else:
        assert len(lines) == 1 and err.endswith("\n"), err
        assert lines[0].startswith(f"bench {argv[0]}: error: "), err
    for fragment in case.named:
        assert fragment.format(tmp=tmp_path) in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert snapshot(tmp_path) == before  # nothing written, created or removed


def test_the_guard_sees_a_compile(nothing_may_run):
    import jax
    with pytest.raises(pytest.fail.Exception, match="reached a compile"):
        jax.jit(lambda x: x * 3 + 1)(1.0)


def test_the_guard_sees_a_run_that_would_go_ahead(isolated, tiny_npz, nothing_may_run):
    """The table's command lines are live: without their fault, one reaches the guard."""
    with pytest.raises(pytest.fail.Exception, match="reached a compile"):
        main(["run", *TINY, "--activations", "relu", "--optimizers", "sgd", "--data", str(tiny_npz),
              "--out", "out"])
