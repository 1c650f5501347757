"""The launch gate: no run with datasets executes anything before hostview marks its dataset mounts.

A backend holds the run after its mounts exist and before its program starts (bwrap's
``--block-fd``; a container's ``vre-gate`` step), hands a process inside it to :func:`mark_run`
and lets it go only when that returns. If hostview cannot mark, the run is removed and the start
fails with the reason: dataset reads never go unrecorded silently.
"""

from __future__ import annotations

import asyncio
import time

from ..hostview import client as hostview
from ..plan import SessionPlan
from ..settings import Settings

#: How long a run may take to show its mounts (bwrap: 2-3 ms after its info arrives).
MOUNT_TIMEOUT = 10.0


def dataset_mounts(plan: SessionPlan) -> list[dict]:
    """The run's dataset mounts as hostview marks them: [{slug, target}]."""
    return [{"slug": m.target.rsplit("/", 1)[1], "target": m.target} for m in plan.mounts if m.kind == "dataset"]


async def wait_for_mounts(pid: int, targets: list[str], timeout: float = MOUNT_TIMEOUT) -> None:
    """Until the mount namespace of ``pid`` lists every target at its final place (bwrap lists
    them under its temporary root until it pivots)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                points = {line.split()[4] for line in f}
        except OSError as e:
            raise hostview.HostviewError(f"the run ended before its datasets were marked ({e})") from None
        if all(t in points for t in targets):
            return
        if time.monotonic() > deadline:
            raise hostview.HostviewError(f"the run's dataset mounts did not appear within {timeout:g} s")
        await asyncio.sleep(0.002)


async def mark_run(settings: Settings, plan: SessionPlan, pid: int, session: str) -> dict[str, int]:
    """Mark the dataset mounts of the run whose process ``pid`` is held at the gate, as
    ``session`` (what its records will say); HostviewError when that cannot be done."""
    datasets = dataset_mounts(plan)
    await wait_for_mounts(pid, [d["target"] for d in datasets])
    job, user = plan.job or (None, plan.user)   # a worker started for a job reads as that job's from its first
    return await hostview.mark(settings, session=session, user=user, project=plan.project, pid=pid,
                               datasets=datasets, role=plan.role, job=job)
