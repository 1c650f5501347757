"""The GPU allocator: maps a plan's GPU *count* to concrete devices, for every backend.

Leases live in the VRE database (table ``gpu_leases``), so sessions and batch workers, the hub and
the job service, and a restarted hub all see the same assignment. A GPU belongs to one holder at a
time; holders whose profile allows sharing may share a GPU with other sharing holders, never with
an exclusive one.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .db import GpuLease
from .errors import VREError
from .settings import Settings

#: Device nodes every GPU user needs besides its own /dev/nvidiaN.
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


class NoGpuFree(VREError):
    """Not enough GPUs are free right now (a session is refused; a job waits)."""


def host_devices(settings: Settings) -> tuple[int, ...]:
    """The GPU indices this host offers, per ``settings.gpu_devices``."""
    spec = settings.gpu_devices.replace(" ", "")
    if spec == "none":
        return ()
    if spec == "auto":
        found = (re.fullmatch(r"/dev/nvidia(\d+)", p) for p in glob.glob("/dev/nvidia[0-9]*"))
        return tuple(sorted(int(m.group(1)) for m in found if m))
    return tuple(sorted({int(i) for i in spec.split(",")}))


def device_nodes(devices: tuple[int, ...] | list[int]) -> list[str]:
    """Device nodes to give a holder of ``devices`` (those that exist on this host)."""
    if not devices:
        return []
    wanted = [f"/dev/nvidia{i}" for i in devices] + list(CONTROL_NODES)
    return [p for p in wanted if Path(p).exists()]


def gpu_env(devices: tuple[int, ...] | list[int]) -> dict[str, str]:
    """Environment for a holder of ``devices`` whose /dev has only those GPUs' nodes: CUDA then
    enumerates just them, from 0, so ``CUDA_VISIBLE_DEVICES`` counts 0..n-1; the host's indices
    are in ``NVIDIA_VISIBLE_DEVICES`` and ``VRE_GPU_DEVICES`` (what nvidia-smi on the host calls them)."""
    ids = ",".join(str(i) for i in devices)
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(devices))),
            "NVIDIA_VISIBLE_DEVICES": ids or "void", "VRE_GPU_DEVICES": ids}


def acquire(db: Session, settings: Settings, holder: str, count: int, *, shared: bool = False) -> tuple[int, ...]:
    """Lease ``count`` GPUs to ``holder`` (idempotent: a holder keeps what it has).

    Raises NoGpuFree when not enough are free; the caller's transaction decides what happens then.
    """
    if count <= 0:
        return ()
    mine = db.scalars(select(GpuLease.device).where(GpuLease.holder == holder)).all()
    if len(mine) >= count:
        return tuple(sorted(mine)[:count])
    devices = host_devices(settings)
    if count > len(devices):
        raise NoGpuFree(f"{count} GPU(s) asked for, but this host has {len(devices)}")
    leases = db.scalars(select(GpuLease).with_for_update()).all()
    exclusive = {lease.device for lease in leases if not lease.shared}
    holders: dict[int, int] = {}
    for lease in leases:
        holders[lease.device] = holders.get(lease.device, 0) + 1
    if shared:  # shared holders pack onto GPUs already shared, then onto free ones
        free = [d for d in devices if d not in exclusive and d not in mine]
        free.sort(key=lambda d: (-holders.get(d, 0), d))
    else:
        free = [d for d in devices if d not in holders]
    need = count - len(mine)
    if len(free) < need:
        raise NoGpuFree(f"{count} GPU(s) asked for; {len(free) + len(mine)} free of {len(devices)} right now")
    chosen = free[:need]
    for device in chosen:
        db.add(GpuLease(device=device, holder=holder, shared=shared))
    db.flush()
    return tuple(sorted([*mine, *chosen]))


def release(db: Session, holder: str) -> None:
    db.execute(delete(GpuLease).where(GpuLease.holder == holder))


def leases(db: Session) -> dict[str, tuple[int, ...]]:
    """Holder -> devices, for status pages and reconciliation."""
    result: dict[str, list[int]] = {}
    for lease in db.scalars(select(GpuLease).order_by(GpuLease.device)):
        result.setdefault(lease.holder, []).append(lease.device)
    return {h: tuple(d) for h, d in result.items()}


def free_count(db: Session, settings: Settings) -> int:
    """GPUs no one holds (exclusive holders can take them)."""
    held = set(db.scalars(select(GpuLease.device)).all())
    return sum(1 for d in host_devices(settings) if d not in held)
