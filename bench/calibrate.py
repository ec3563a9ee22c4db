"""The device's measured fp32 peak: the FLOP/s of a large matrix product.

"% of peak" needs a peak. A datasheet figure is not what this process can get
on this machine (threads, affinity, clocks), so bench measures a large fp32
matrix product on the same device and caches the figure per machine, keyed by
everything that changes it (device, host CPU, usable cores, jaxlib version).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from bench.devices import device_facts
from bench.results import package_versions
from bench.timing import compile_ahead, time_rounds

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
    """Best FLOP/s of `repeats` synchronised (size x size) @ (size x size) fp32 products."""
    n = size or SIZES.get(device.platform, 4096)
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), device)
    matmul, _ = compile_ahead(lambda x, y: x @ y, a, a)
    best = min(time_rounds(lambda: matmul(a, a), repeats=repeats, burn_in=1))
    return {"peak_flops": round(2 * n**3 / best, 1), "matrix_size": n, "seconds": round(best, 6),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def calibration(device: jax.Device, *, use_cache: bool = True) -> dict:
    """The cached calibration for this machine, measuring (and caching) it if absent."""
    key, path = machine_key(device), cache_file()
    cached = _read(path)
    if use_cache and key in cached:
        return {**cached[key], "cached": True, "machine_key": key}
    result = measure_peak(device)
    cached[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=2))
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return {**result, "cached": False, "machine_key": key}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
