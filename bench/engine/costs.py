"""What a compiled program costs: FLOPs per step (XLA cost analysis) and memory.

Memory figures are a trial's own: the compiled program's buffer sizes
(program_memory) and what the process and the device held during the trial
(TrialMemory).

XLA's cost analysis counts a while-loop body once. A round of training steps is
a `lax.scan`, so the analysis of the round program gives one step's FLOPs
(plus the batch permutation, which is negligible). Loops *inside* a step are
counted once too, so for this count the recurrent model is lowered with its
time loop unrolled (bench.engine.training.step_flops).
"""

from __future__ import annotations

from pathlib import Path

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


PROC_SELF = Path("/proc/self")  # Linux's view of this process; tests point it elsewhere


class TrialMemory:
    """The memory one trial used: wrap the trial in `with TrialMemory(device) as m:`, then m.figures().

    Process and device high-water marks are process-wide. The resident one is reset at
    entry (Linux), so it describes the trial; the device one cannot be reset (JAX has no
    call for it), so it is reported only when the trial raised it. A figure that cannot
    be attributed to the trial is None, never the process's maximum since it started.
    """

    def __init__(self, device: jax.Device | None = None):
        self.device = device
        self._start: dict | None = None
        self._end: dict | None = None

    def __enter__(self) -> TrialMemory:
        rss_reset = _reset_rss_peak()
        self._start = {"rss_reset": rss_reset, "rss": _status_bytes("VmRSS"),
                       "device": _memory_stats(self.device)}
        return self

    def __exit__(self, *exc_info) -> bool:
        self._end = {"hwm": _status_bytes("VmHWM"), "device": _memory_stats(self.device)}
        return False

    def figures(self) -> dict:
        """Bytes, JSON-able; None where this platform cannot tell (README, "Memory figures").

        peak_rss_bytes: the process's peak resident memory during the trial, including
          what was resident before it (interpreter, JAX, the data set); Linux only.
        rss_at_start_bytes: the process's resident memory as the trial began (Linux only);
          peak_rss_bytes minus this is what the trial added at its peak.
        device_bytes_in_use_at_start / _at_end: the accelerator's allocated bytes as the
          trial began / ended (GPU, TPU; None on CPU).
        device_peak_bytes: the accelerator's peak allocated bytes during the trial, known
          only when the trial set a new high for the process; None otherwise and on CPU.
        Device bytes are what XLA's allocator handed out for buffers, not the pool it
        reserved (on GPU, 75% of the memory by default).
        """
        if self._start is None or self._end is None:
            raise RuntimeError("TrialMemory.figures() before the trial ended")
        start, end = self._start["device"], self._end["device"]
        peak_before, peak_after = _stat(start, "peak_bytes_in_use"), _stat(end, "peak_bytes_in_use")
        raised = peak_before is not None and peak_after is not None and peak_after > peak_before
        return {
            "peak_rss_bytes": self._end["hwm"] if self._start["rss_reset"] else None,
            "rss_at_start_bytes": self._start["rss"],
            "device_bytes_in_use_at_start": _stat(start, "bytes_in_use"),
            "device_bytes_in_use_at_end": _stat(end, "bytes_in_use"),
            # Below the earlier high, the trial's own peak is unknowable: the allocator keeps
            # one high-water mark per process and JAX cannot reset it.
            "device_peak_bytes": peak_after if raised else None,
        }


def _reset_rss_peak() -> bool:
    """Resets the process's resident high-water mark (VmHWM); False where that is impossible."""
    try:
        (PROC_SELF / "clear_refs").write_text("5")  # 5: reset the peak RSS (proc(5))
    except OSError:  # not Linux, a kernel before 4.0, or not permitted
        return False
    return True


def _status_bytes(field: str) -> int | None:
    """A kB figure of /proc/self/status (VmRSS, VmHWM) in bytes; None without /proc."""
    try:
        lines = (PROC_SELF / "status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field and value.split()[1:] == ["kB"]:
            return int(value.split()[0]) * 1024
    return None


def _memory_stats(device) -> dict | None:
    """The device allocator's statistics; None on CPU or where the backend has none."""
    try:
        stats = device.memory_stats() if device is not None else None
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    return stats if isinstance(stats, dict) else None


def _stat(stats: dict | None, name: str) -> int | None:
    value = (stats or {}).get(name)
    return int(value) if isinstance(value, (int, float)) else None


class TooLarge(MemoryError):
    """A compiled program needs more memory than the device has free."""


# Share of the free memory one program may plan to use: XLA's own estimate leaves out
# allocator slack and whatever the process allocates besides.
FITS_FRACTION = 0.8


def check_fits(memory: dict | None, device, what: str) -> None:
    """Raises TooLarge when the program's buffers (XLA's memory analysis) exceed the
    device's free memory; silent when either is unknown."""
    free = free_bytes(device)
    if not memory or free is None:
        return
    needed = (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
              + memory.get("temp_size_in_bytes", 0) - memory.get("alias_size_in_bytes", 0))
    if needed > FITS_FRACTION * free:
        raise TooLarge(f"{what} needs {needed / 2**30:.1f} GiB; {free / 2**30:.1f} GiB is free")


def free_bytes(device) -> int | None:
    """Free memory of an accelerator (its allocator's limit less what is in use), or of the
    host for a CPU device (Linux MemAvailable); None when unknown."""
    stats = _memory_stats(device)
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
