"""What a compiled program costs: FLOPs per step (XLA cost analysis) and memory.

XLA's cost analysis counts a while-loop body once. A round of training steps is
a `lax.scan`, so the analysis of the round program gives one step's FLOPs
(plus the batch permutation, which is negligible). Loops *inside* a step are
counted once too, so for this count the recurrent model is lowered with its
time loop unrolled (bench.trial._step_flops).
"""

from __future__ import annotations

import resource

import jax


def flops(program) -> float | None:
    """FLOPs of one execution of a lowered or compiled program as XLA counts them."""
    try:
        analysis = program.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends have no cost model
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return float(value) if value and value > 0 else None


def program_memory(compiled) -> dict | None:
    """The compiled program's buffer sizes in bytes (arguments, outputs, temporaries)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if stats is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
             "generated_code_size_in_bytes", "alias_size_in_bytes")
    return {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}


def device_peak_bytes(device: jax.Device) -> int | None:
    """Peak bytes in use on an accelerator since the process started (None on CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def process_peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
