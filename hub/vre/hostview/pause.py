"""Freezing a run whose dataset reads come faster than they are recorded, until they are.

The kernel queues an event for every open through a marked mount, without limit and without fail
(fanotify's unlimited queue: no read goes unrecorded), in kernel memory the host cannot reclaim:
about 72 bytes an event. A run that opens dataset files faster than the observer reads the queue
(a loop over many files, or many processes opening the same ones: about 260,000 opens a second
from one core here, against the observer's 150,000) would grow it until the host runs out of
memory. So the observer freezes the run that keeps it behind, in its own cgroup (cgroup v1's
freezer, which the sandbox joins and container engines and the kubelet create; ``cgroup.freeze``
on v2), and thaws it once the queue is read empty. Its processes notice nothing but lost time.

A run is only frozen through a cgroup of its own: never the root, nor one that holds the observer.
"""

from __future__ import annotations

from pathlib import Path

from ..backends.cgroups import CGROUP_ROOT, cgroup_paths


def freezer_of(pid: int, root: Path = CGROUP_ROOT) -> Path | None:
    """The file that freezes the cgroup of ``pid``'s run (v1 ``freezer.state``, v2
    ``cgroup.freeze``) under the cgroup filesystem at ``root`` (a node observer's view of the
    host's); None where it has none of its own or the file is not there."""
    try:
        theirs, own = cgroup_paths(pid), cgroup_paths("self")
    except (OSError, ValueError):
        return None
    if (root / "freezer" / "cgroup.procs").exists() and "freezer" in theirs:
        controller, state = "freezer", root / "freezer" / theirs["freezer"].lstrip("/") / "freezer.state"
    elif (root / "cgroup.controllers").exists() and "" in theirs:
        controller, state = "", root / theirs[""].lstrip("/") / "cgroup.freeze"
    else:
        return None
    path, mine = theirs[controller].rstrip("/"), own.get(controller, "/").rstrip("/")
    if not path or ".." in path.split("/") or mine == path or mine.startswith(path + "/") or not state.exists():
        return None   # outside this cgroup namespace, the root, ours or above ours, or gone
    return state
