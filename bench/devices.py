"""--device resolution and the facts about the device a run used."""

from __future__ import annotations

import os
import platform

import jax

from bench.schema import PLATFORMS


class DeviceError(RuntimeError):
    """The requested platform is not present; the message names those that are."""


def present_platforms() -> list[str]:
    """Platforms JAX can use here, e.g. ['cpu'] or ['gpu', 'cpu']."""
    found = []
    for name in ("gpu", "tpu", "cpu"):
        try:
            if jax.devices(name):
                found.append(name)
        except RuntimeError:
            pass
    return found


def resolve_device(name: str) -> jax.Device:
    """The first device of platform `name` ('auto': JAX's default backend)."""
    if name not in PLATFORMS:
        raise DeviceError(f"unknown device {name!r}; valid: {', '.join(PLATFORMS)}")
    if name == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        present = ", ".join(present_platforms()) or "none"
        hint = " (install the 'gpu' extra: pip install -e '.[gpu]')" if name == "gpu" else ""
        raise DeviceError(f"no {name} device is present{hint}; platforms present: {present}") from None


def host_cpu() -> str:
    """The host processor's model name (Linux /proc/cpuinfo), else platform's answer."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: jax.Device) -> dict:
    """What a run records about where it ran."""
    same_platform = jax.devices(device.platform)
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": len(same_platform),
        "host_cpu": host_cpu(),
        "host_cpu_count": os.cpu_count(),
        "usable_cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
