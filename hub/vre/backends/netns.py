"""Project islands on one host: one network namespace per project, with only loopback.

Every session and worker of a project runs inside its island, so they reach each other on
127.0.0.1 and nothing else: no interface but ``lo``, no route. The hub talks to sessions over
unix sockets, which do not depend on the network namespace.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

NETNS_DIR = Path("/run/netns")
_locks: dict[str, asyncio.Lock] = {}


class NetnsError(RuntimeError):
    pass


def lock(name: str) -> asyncio.Lock:
    """Serialises creating and deleting one island within the hub process."""
    return _locks.setdefault(name, asyncio.Lock())


async def _ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode:
        raise NetnsError(f"ip {' '.join(args)} failed: {err.decode().strip()}")
    return out.decode()


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


async def ensure(name: str) -> None:
    """Create the island if missing, with loopback up and nothing else."""
    if not exists(name):
        await _ip("netns", "add", name)
    await _ip("-n", name, "link", "set", "lo", "up")


async def pids(name: str) -> list[int]:
    if not exists(name):
        return []
    out = await _ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split()]


async def delete_if_unused(name: str) -> bool:
    """Delete the island when no process is left in it. Returns whether it was deleted."""
    if exists(name) and not await pids(name):
        await _ip("netns", "delete", name, check=False)
        return True
    return False
