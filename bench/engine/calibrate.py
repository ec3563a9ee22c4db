"""The device's measured fp32 peak: the FLOP/s of a large matrix product.

"% of peak" needs a peak. A datasheet figure is not what this process can get
on this machine (threads, affinity, clocks), so bench measures a large fp32
matrix product on the same device and caches the figure per machine, keyed by
everything that changes it (device, host CPU, usable cores, jaxlib version).
The cache is replaced atomically under a lock, so concurrent bench processes
neither tear it nor drop each other's entries.

A peak measured while other processes used the CPU is too low, and every % of
peak derived from it too high (docs/measurements.md, "Design measurements cited
from the code", the calibration on a busy machine). So the measurement runs
under the host-load guard (bench.engine.hostload), one at a time per node (a
second process waits, then reads what the first cached), and a measurement made
on a busy machine is used for this run only, with a warning, and never cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp

from bench.engine.devices import device_facts
from bench.engine.hostload import LoadMeter
from bench.contract.results import package_versions, write_atomic
from bench.engine.timing import compile_ahead, time_rounds

SIZES = {"cpu": 2048, "gpu": 8192, "tpu": 8192}


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "bench" / "calibration.json"


def machine_key(device: jax.Device) -> str:
    facts = device_facts(device)
    return "|".join(str(v) for v in (facts["platform"], facts["device_kind"], facts["device_count"],
                                       facts["host_cpu"], facts["usable_cpu_count"],
                                       package_versions()["jaxlib"]))


def measure_peak(device: jax.Device, size: int | None = None, repeats: int = 5) -> dict:
    """Best FLOP/s of `repeats` synchronised (size x size) @ (size x size) fp32 products.

    The timed products run under a LoadMeter: "busy" says whether other processes used
    more than a quarter of a core meanwhile (then the figure is too low), and
    "other_cpu_cores" how much they used (None where /proc/stat cannot be read)."""
    n = size or SIZES.get(device.platform, 4096)
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), device)
    matmul, _ = compile_ahead(lambda x, y: x @ y, a, a)
    with LoadMeter() as load:
        best = min(time_rounds(lambda: matmul(a, a), repeats=repeats, burn_in=1))
    return {"peak_flops": round(2 * n**3 / best, 1), "matrix_size": n, "seconds": round(best, 6),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "other_cpu_cores": load.other_cores(), "busy": load.busy()}


def calibration(device: jax.Device, *, use_cache: bool = True) -> dict:
    """The cached calibration for this machine, measuring (and caching) it if absent.

    One process of a node measures at a time (`_measuring`): one that waited for
    another's measurement uses what that one cached, even with use_cache False (it is
    as fresh as asked for). A measurement made while other processes used the CPU
    ("busy") is returned but not cached, with a "warning". A corrupt cache, or an
    unusable entry for this machine, is measured again and the cache rewritten; the
    result then has a one-line "warning" for the caller to show, as it has when the
    cache cannot be written.
    """
    key, path = machine_key(device), cache_file()
    entries, problem = _read(path, key)
    if use_cache and key in entries:
        return _cached(entries[key], key)
    before = entries.get(key)
    with _measuring(path):
        entries, problem = _read(path, key)  # another process may have measured while we waited
        if key in entries and (use_cache or entries[key] != before):
            return _cached(entries[key], key)
        result = measure_peak(device)
        warnings = [f"calibration cache {path} {problem}; measured again"] if problem else []
        if result.get("busy"):
            warnings.append(busy_warning(result, kept=key in entries))
        else:
            try:
                _store(path, key, result)
            except OSError as exc:
                warnings.append(f"calibration cache {path} could not be written "
                                f"({exc.strerror or exc}); the next run will measure again")
    out = {**result, "cached": False, "machine_key": key}
    return {**out, "warning": "; ".join(warnings)} if warnings else out


def busy_warning(result: dict, kept: bool = False) -> str:
    """The run's one line about a peak measured while other processes used the CPU
    (`kept`: the cache holds an earlier, quiet figure, which stays)."""
    cores = result.get("other_cpu_cores")
    used = f"{cores:g} cores" if isinstance(cores, (int, float)) else "CPU time"
    after = "the cache keeps its earlier figure" if kept else "the next run measures again"
    return (f"peak measured while the machine was busy (other processes used {used}): "
            f"{result['peak_flops'] / 1e9:,.1f} GFLOP/s is likely too low and every % of peak "
            f"too high; not cached ({after})")


def _cached(entry: dict, key: str) -> dict:
    return {**entry, "cached": True, "machine_key": key}


def _read(path: Path, key: str) -> tuple[dict, str | None]:
    """The cache's usable entries, and what is wrong with the file or `key`'s entry, if anything."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"could not be read ({exc.strerror or exc})"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return {}, f"was corrupt (not JSON: {exc})"
    if not isinstance(data, dict):
        return {}, f"was corrupt (not a JSON object but a {type(data).__name__})"
    entries = {k: v for k, v in data.items() if _usable(v)}
    if key in data and key not in entries:
        return entries, ("was corrupt (its entry for this machine lacks a numeric peak_flops "
                         "or matrix_size)")
    return entries, None


def _usable(entry) -> bool:
    """Whether a cache entry has what the runner reads: a positive peak and the matrix size."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return (isinstance(entry, dict) and number(entry.get("peak_flops"))
            and number(entry.get("matrix_size")))


def _store(path: Path, key: str, result: dict) -> None:
    """Adds `result` under `key`, keeping what other processes stored meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock")):
        entries, _ = _read(path, key)  # re-read under the lock: another bench may have written
        entries[key] = result
        write_atomic(path, json.dumps(entries, indent=2) + "\n")


@contextlib.contextmanager
def _measuring(path: Path) -> Iterator[None]:
    """Holds this node's measurement lock: one peak measurement per host at a time.

    Two processes measuring at once (the Ray workers of one node, two bench runs) would
    each time the other's load and halve the peak. The lock file sits beside the cache,
    named after the host, so that hosts sharing a cache folder (NFS) still measure in
    parallel. Where it cannot be created (the cache is unwritable, as the result's warning
    will say) the measurement goes ahead unlocked; the load guard still flags it.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    lock_file = path.with_name(f"{path.stem}.measuring.{host}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process of this host measures
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Holds an exclusive flock on `lock_file`: one read-modify-write of the cache at a time.

    The file is left in place; deleting it would let two processes lock different files.
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
