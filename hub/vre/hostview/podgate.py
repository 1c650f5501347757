"""What a pod with datasets and the per-node observer agree on (``vre.hostview.node``).

The hub renders pods (``backends.kubernetes``) and the observer watches them on each node; this
module holds their contract alone, so the observer imports nothing of the hub (JupyterHub,
kubespawner, SQLAlchemy) and neither side can drift from the other.
"""

from __future__ import annotations

#: The gate shell's $0: the observer opens only a process that names itself so and catches SIGUSR1.
GATE_NAME = "vre-gate"
#: The gate's exit code when no observer opened it.
GATE_EXIT = 70
#: Label of pods the observer watches; annotations it reads (only the hub writes pods' metadata).
OBSERVED_LABEL = "vre.reads"
AUDIT_SESSION = "vre.audit/session"
AUDIT_DATASETS = "vre.audit/datasets"
AUDIT_JOB = "vre.audit/job"
AUDIT_JOB_USER = "vre.audit/job-user"
#: New with each hand-out of a job to a worker: the observer's word that it counts the worker's
#: reads for the job names it, so that no earlier word about the same job stands for this one.
AUDIT_JOB_SERIAL = "vre.audit/job-serial"
#: The VRE service's route (on its sessions' listener) the observers post their records to.
HOST_EVENTS_ROUTE = r"api/audit/host-events"
#: ... and the route they say there which job they now count a batch worker pod's reads for.
HOST_ASSIGNMENTS_ROUTE = r"api/audit/host-assignments"
#: Assignments one such post may carry.
MAX_ASSIGNMENTS_PER_POST = 500


def gate_script(seconds: int) -> str:
    """The container's first process: wait for the observer's SIGUSR1 (sent only after it marked
    the dataset mounts), or give up after ``seconds`` with the reason. The trap is set before
    anything else, and the observer signals only a process whose caught signals include SIGUSR1."""
    ticks = seconds * 10
    return ("trap 'g=1' USR1; n=0; "
            "while [ -z \"$g\" ]; do n=$((n+1)); "
            f"if [ $n -gt {ticks} ]; then echo \"{GATE_NAME}: dataset reads cannot be recorded: no observer "
            f"marked this pod's dataset mounts within {seconds} s; not starting. An admin checks the "
            f"observer pods (the chart's observer DaemonSet) on this node\" >&2; exit {GATE_EXIT}; fi; "
            "sleep 0.1; done; trap - USR1; ")
