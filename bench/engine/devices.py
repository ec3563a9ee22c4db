"""--device resolution, the facts about the devices a run used, and the mesh a population
is sharded over."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np

from bench.contract.schema import PLATFORMS


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


def usable_cpu_count() -> int | None:
    """Cores this process may run on (a container or a Ray worker may have fewer)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def device_facts(device: jax.Device) -> dict:
    """What a run records about where it ran."""
    same_platform = jax.devices(device.platform)
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": len(same_platform),
        "host_cpu": host_cpu(),
        "host_cpu_count": os.cpu_count(),
        "usable_cpu_count": usable_cpu_count(),
    }


# ---------------------------------------------------------------- populations over devices

MEMBERS = "members"  # the one axis of a population's device mesh


def population_mesh(devices: list[jax.Device], size: int):
    """A one-axis mesh over which `size` members are split, or None for a single device."""
    count = min(len(devices), size)
    if count <= 1:
        return None
    return jax.sharding.Mesh(np.array(devices[:count]), (MEMBERS,))


def padded_size(size: int, mesh) -> int:
    """`size` rounded up to a multiple of the mesh's devices (padding members fill it)."""
    return size if mesh is None else -(-size // mesh.size) * mesh.size


def shard_members(tree, mesh):
    """`tree`'s arrays split along their first (member) axis over the mesh's devices."""
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(MEMBERS)))


def replicate(tree, mesh):
    """`tree`'s arrays copied whole to every device of the mesh (the shared data set)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def platform_devices(device: jax.Device, count: int | None = None) -> list[jax.Device]:
    """The devices of `device`'s platform, `device` first, at most `count` of them."""
    same = [d for d in jax.devices(device.platform) if d != device]
    return [device, *same][: count or None]
