"""The run directory: a run.json header and results.jsonl, one line per finished trial.

Each record is appended, flushed and fsynced as its trial ends, so an
interruption loses at most the trial in flight. Readers skip a torn last line.
One process writes a run directory at a time: it holds an exclusive lock on
`.lock` inside it for the whole run (lock_run_dir). Whether the directory is new
is decided by the atomic mkdir of the process that creates it, and only that
process removes it again (when no run was written in it), while holding its lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import itertools
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from bench.contract.facts import FactsError, RunHeader
from bench.contract.schema import SCHEMA_VERSION, SchemaError, check_version

HEADER = "run.json"
RESULTS = "results.jsonl"
LOCK = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be used; the one-line message says what and what to do."""


class RunDirBusy(RunDirError):
    """The run directory is being written by another bench process (named in the message)."""


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return now.strftime("%Y%m%d-%H%M%S")


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def new_run_dir(root: Path, now: dt.datetime | None = None) -> Path:
    """Creates and returns a new directory root/<YYYYmmdd-HHMMSS>, with -2, -3... if taken.

    mkdir without exist_ok is atomic, so two processes starting in the same second
    never both get the same directory.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot("create", root, exc) from None
    run_id = new_run_id(now)
    names = itertools.chain([run_id], (f"{run_id}-{n}" for n in itertools.count(2)))
    for candidate in (root / name for name in names):
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise _cannot("create", candidate, exc) from None
    raise AssertionError("unreachable: the names never run out")


@contextlib.contextmanager
def lock_run_dir(run_dir: Path, command: str | None = None, *, discard_unused: bool = False,
                 created: bool = False) -> Iterator[Path]:
    """Holds the run directory's exclusive lock for the duration; RunDirBusy if another process has it.

    The lock is an flock on run_dir/.lock, so the kernel frees it when the holder dies,
    even by SIGKILL. The file records the holder (pid, host, start, `command`, by default
    sys.argv) for the message another process gets.

    With `discard_unused`, a directory that this call created (or, with `created`, that
    the caller has just made with new_run_dir) is removed at the end if no run.json was
    written in it. That is decided and done while the lock is held, and only by the
    process whose mkdir made the directory: one that lost the race into a new directory
    gets RunDirBusy and removes nothing.
    """
    run_dir = Path(run_dir)
    fd, made = _acquire(run_dir)
    try:
        _write_holder(fd, command)
        yield run_dir
    finally:
        if discard_unused and (made or created) and not (run_dir / HEADER).exists():
            _discard(run_dir)  # still locked: nobody else can have started a run in it
        # Unlinked while still locked: a process that opened this file meanwhile finds,
        # once it gets the lock, that the path no longer names it, and starts over.
        # Only if the path still names our file: never remove another process's lock.
        elif _names(run_dir / LOCK, fd):
            with contextlib.suppress(OSError):
                os.unlink(run_dir / LOCK)
        os.close(fd)


def _discard(run_dir: Path) -> None:
    """Removes an unused run directory whose lock this process holds.

    It is first renamed away (atomically), so that a process arriving meanwhile finds no
    directory and creates a fresh one, rather than locking a file inside one being deleted.
    """
    trash = run_dir.with_name(f".{run_dir.name}.discarded-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(run_dir, trash)
    except OSError:
        return  # left in place: an empty directory is harmless
    shutil.rmtree(trash, ignore_errors=True)


def _usable_dir(run_dir: Path) -> bool:
    """Creates `run_dir` if missing, and says whether this call created it (mkdir is
    atomic: of two processes, one alone creates it); RunDirError if it is not a writable
    directory."""
    try:
        run_dir.mkdir(parents=True)
        made = True
    except FileExistsError:
        made = False
    except OSError as exc:
        raise _cannot("create", run_dir, exc) from None
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory; give another --out")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"{run_dir} is not writable; give another --out")
    return made


def _acquire(run_dir: Path) -> tuple[int, bool]:
    """An open descriptor of run_dir/.lock, exclusively locked, and whether this process
    created run_dir; RunDirBusy if the lock is held elsewhere."""
    path, made = run_dir / LOCK, False
    for _ in range(100):
        made = _usable_dir(run_dir) or made
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # its creator discarded the directory as we opened: create it anew
        except OSError as exc:
            raise _cannot("create", path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise _cannot("lock", path, exc) from None
            raise RunDirBusy(_busy_message(run_dir)) from None
        if _names(path, fd):
            return fd, made
        os.close(fd)  # the holder removed the file (or the directory) as we opened it: again
    raise RunDirBusy(_busy_message(run_dir))


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _write_holder(fd: int, command: str | None) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(),
              "command": command if command is not None else shlex.join(sys.argv)}
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _busy_message(run_dir: Path) -> str:
    """'<dir> is being written by another bench run (pid ... on host, since ...: command); ...'."""
    try:
        holder = json.loads((run_dir / LOCK).read_text(encoding="utf-8"))
        who = f"pid {holder['pid']} on {holder['host']}, since {holder['since']}: {holder['command']}"
    except (OSError, ValueError, TypeError, KeyError):
        who = "which has only just started"  # locked, holder not written yet
    return (f"{run_dir} is being written by another bench run ({who}); "
            "wait for it to finish, or give another --out")


def _cannot(action: str, path: Path, exc: OSError) -> RunDirError:
    return RunDirError(f"cannot {action} {path} ({_reason(exc)}); give another --out")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def package_versions() -> dict:
    """Versions of Python and of the libraries that decide the numbers."""
    versions = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy-openblas32", "bench"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the bench checkout in use ('+dirty' when it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def make_header(run_id: str, *, device: dict, data: dict, argv: list[str] | None = None,
                extra: dict | None = None) -> RunHeader:
    """A new run's header: everything needed to say where the numbers came from."""
    return RunHeader(run_id=run_id, schema_version=SCHEMA_VERSION, started=now_iso(),
                     command=" ".join(argv if argv is not None else sys.argv),
                     git_commit=git_commit(), versions=package_versions(), device=device,
                     data=data, **(extra or {}))


def write_atomic(path: Path, text: str) -> None:
    """Replaces `path` with `text` so that a reader sees the old file or the new, never half.

    The temporary file is in the same directory (rename is atomic only within a file
    system) under a name of its own (a fixed name would be shared by two writers),
    created with the umask's permissions like any new file, and removed on failure.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_header(run_dir: Path, header: RunHeader | dict) -> None:
    """Writes run.json atomically (see write_atomic): a RunHeader (as bench run does), or a
    table as it is."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = header.to_json() if isinstance(header, RunHeader) else header
    write_atomic(run_dir / HEADER, json.dumps(table, indent=2) + "\n")


def read_header(run_dir: Path) -> dict:
    """The run's run.json; RunDirError (one line) if it is missing, unreadable or not a JSON object."""
    file = Path(run_dir) / HEADER
    fix = "it cannot be resumed or reported; start a new run with another --out"
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{file} is corrupt (not UTF-8 text: {_byte_error(exc)}); {fix}") from None
    except OSError as exc:
        raise RunDirError(f"{file} cannot be read ({_reason(exc)}); {fix}") from None
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{file} is corrupt (not JSON: {_json_error(exc)}); {fix}") from None
    if not isinstance(header, dict):
        raise RunDirError(f"{file} is corrupt (a JSON {_kind(header)}, not an object); {fix}")
    return header


def load_header(run_dir: Path) -> RunHeader:
    """The run's run.json as a RunHeader, of a version this bench reads (migrated as it is
    read); RunDirError or SchemaError (one line) otherwise."""
    header = read_header(run_dir)
    where = str(Path(run_dir) / HEADER)
    check_version(header.get("schema_version"), where)
    try:
        return RunHeader.from_json(header)
    except FactsError as exc:
        raise SchemaError(f"{where}: {exc}") from None


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg}: line {exc.lineno} column {exc.colno}"


def _byte_error(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"


def _kind(value) -> str:
    names = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return names.get(type(value), "null")


def append_result(run_dir: Path, record: dict) -> None:
    """Appends one record as a JSON line and forces it to disk."""
    _end_torn_line(Path(run_dir) / RESULTS)
    with open(Path(run_dir) / RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(_finite(record), allow_nan=False, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _end_torn_line(file: Path) -> None:
    """Drops a partial last line (an interrupted write) so the next record starts a line.

    Appending after it would glue the record onto the torn text: the record would be
    lost, and the broken line would no longer be the last one that readers skip.
    """
    if not file.exists() or file.stat().st_size == 0:
        return
    with open(file, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":  # the usual case: no need to read the records
            return
        f.seek(0)
        text = f.read()
        start = text.rfind(b"\n") + 1
        try:
            json.loads(text[start:])
            f.write(b"\n")  # a whole record whose newline was not written: keep it
        except ValueError:
            f.truncate(start)


def _finite(value):
    """NaN and infinities become null: JSON has no spelling for them (status says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_results(path: Path) -> list[dict]:
    """Records of a run directory or a results.jsonl file; a torn last line is skipped.

    Any other line that is not a UTF-8 JSON object raises RunDirError naming file and line.
    """
    path = Path(path)
    file = path / RESULTS if path.is_dir() else path
    if not file.exists():
        return []
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise RunDirError(f"{file} cannot be read ({_reason(exc)})") from None
    lines = data.splitlines()
    # Only an unfinished last line (no newline after it) can be an interrupted write.
    unfinished = len(lines) if data and not data.endswith(b"\n") else None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record, problem, torn = _parse_line(line)
        if record is not None:
            records.append(record)
        elif not (torn and number == unfinished):
            raise RunDirError(f"{file}:{number}: not a JSON line ({problem}); only the last line "
                              "may be torn by an interruption: remove or repair that line")
    return records


def _parse_line(line: bytes) -> tuple[dict | None, str | None, bool]:
    """(record, None, False), or (None, what is wrong, whether an interrupted write explains it)."""
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:  # a multi-byte character cut in two, if torn
        return None, f"not UTF-8 text: {_byte_error(exc)}", True
    except json.JSONDecodeError as exc:
        return None, _json_error(exc), True
    if not isinstance(value, dict):  # complete JSON: no interruption makes that
        return None, f"a JSON {_kind(value)}, not an object", False
    return value, None, False
