"""Which job the observer on a batch worker pod's node counts that pod's reads for (Kubernetes).

The job engine tells the observer which job a Dask worker pod runs by annotating the pod
(``PodDaskExecutor.serve``); the observer learns it from its watch of the pods, some
milliseconds later. A job handed to the worker before that would have its first reads counted
as the worker's previous job's, another member's perhaps. So the observer, once it counts the
pod's reads for the new job, says so to the VRE service with its pod-bound token
(``api.ingest.HostAssignmentsHandler``), the service keeps it here, and the engine hands the job
out only when it finds it here, said by the observer of the node the pod runs on.

One row per pod (its uid: a worker's successor of the same name is another pod) and node whose
observer spoke of it: the last job it took note of, with the serial of that hand-out (an earlier
word about the same job does not stand for this one, and the engine asks only for the word of
the pod's own node). Rows of pods gone go with their age (``KEEP``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..db import ObservedAssignment, session_scope, utcnow
from ..hostview.podgate import AUDIT_JOB_SERIAL, MAX_ASSIGNMENTS_PER_POST

#: Rows older than this are dropped when observers post (only a hand-out's moment reads them).
KEEP = dt.timedelta(days=1)
#: Pods' words kept per node at most.
PER_NODE = 1000


class AssignmentsRefused(ValueError):
    """An observer's post that is not a list of assignments (the message says what to send)."""


def parse(body) -> list[tuple[str, int, str]]:
    """``[(pod uid, job id, serial)]`` of an observer's post ``{"node": ..., "assignments":
    [{"pod_uid": ..., "job": ..., "serial": ...}]}``, or AssignmentsRefused."""
    items = body.get("assignments") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) > MAX_ASSIGNMENTS_PER_POST:
        raise AssignmentsRefused(f'send {{"node": ..., "assignments": [{{"pod_uid": ..., "job": ..., '
                                 f'"serial": ...}}]}} with at most {MAX_ASSIGNMENTS_PER_POST} assignments')
    out = []
    for i, item in enumerate(items):
        uid, job, serial = (item.get("pod_uid"), item.get("job"), item.get("serial")) if isinstance(item, dict) \
            else (None, None, None)
        if not (isinstance(uid, str) and 0 < len(uid) <= 64 and uid.isascii() and uid.isprintable()):
            raise AssignmentsRefused(f"assignment {i}: pod_uid must be a pod's uid")
        if not (isinstance(job, int) and not isinstance(job, bool) and 0 < job < 2 ** 31):
            raise AssignmentsRefused(f"assignment {i}: job must be a job's id")
        if not (isinstance(serial, str) and len(serial) <= 32 and serial.isascii() and serial.isprintable()):
            raise AssignmentsRefused(f"assignment {i}: serial must be the pod's {AUDIT_JOB_SERIAL} annotation")
        out.append((uid, job, serial))
    return out


def record(url: str, node: str, assignments: list[tuple[str, int, str]]) -> int:
    """Keep what the observer of ``node`` took note of: its last word per pod. Words are kept per
    node, so that one node's observer cannot overwrite what another's said; at most ``PER_NODE``
    pods' a node (a node runs a hundred pods or so), its oldest words going first."""
    now = utcnow()
    with session_scope(url) as db:
        upsert = (sqlite_insert if db.bind.dialect.name == "sqlite" else postgresql_insert)(ObservedAssignment)
        db.execute(delete(ObservedAssignment).where(ObservedAssignment.at < now - KEEP))
        for uid, job, serial in assignments:
            db.execute(upsert.values(pod_uid=uid, node=node, job_id=job, serial=serial, at=now).on_conflict_do_update(
                index_elements=["node", "pod_uid"], set_={"job_id": job, "serial": serial, "at": now}))
        kept = select(ObservedAssignment.pod_uid).where(ObservedAssignment.node == node) \
            .order_by(ObservedAssignment.at.desc()).limit(PER_NODE)
        db.execute(delete(ObservedAssignment).where(ObservedAssignment.node == node,
                                                    ObservedAssignment.pod_uid.not_in(kept.scalar_subquery())))
    return len(assignments)


def noted(url: str, uid: str, node: str) -> tuple[int, str] | None:
    """(job, serial) the observer of ``node`` last said of the pod ``uid``, or None."""
    with session_scope(url) as db:
        row = db.execute(select(ObservedAssignment.job_id, ObservedAssignment.serial)
                         .where(ObservedAssignment.pod_uid == uid, ObservedAssignment.node == node)).first()
    return tuple(row) if row else None
