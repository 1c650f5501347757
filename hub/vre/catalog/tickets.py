"""Tickets for a pod's catalogue files (Kubernetes with claims, ``vre.catalog.fetch``).

The hub writes one into the run's Secret when it starts a session's or a batch worker's pod; only
the pod's first container (the fetcher) gets it, never the container the researcher's code runs
in. It names the project, the role the pod runs as (``session``, ``worker``, ``held``: what a
grant mounts depends on it), the datasets that start mounts and, for a Kubernetes Job's pod, its
job; it expires after its ``ttl`` (by default its role's: ``TTL_S``, ``BATCH_TTL_S``). The VRE
service's catalogue listener serves those datasets' files to it while the project's grants still
mount them in that role (and the job has not ended), and nothing else. A JupyterHub token would
not do: a member can mint one narrowed to any of her servers, from anywhere, for any of her
projects, and batch pods hold none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import NamedTuple

from ..hostfiles import read_or_create_secret
from ..settings import Settings

#: Seconds a session's ticket is good for (the pod placed, its image pulled, the files fetched:
#: the session's start has a timeout well below).
TTL_S = 3600
#: Seconds a batch pod's ticket is good for: the engine lets a worker wait for a node (GPUs) and a
#: Kubernetes Job wait in the cluster's queue as long as they need; a Job's ticket also ends with
#: its job (``Ticket.job``).
BATCH_TTL_S = 7 * 24 * 3600
#: The roles a ticket may name (``SessionPlan.role`` of the pods that fetch).
ROLES = ("session", "worker", "held")
KEY_FILE = "catalogue-tickets.key"


class Ticket(NamedTuple):
    project: str
    role: str
    slugs: tuple[str, ...]
    job: int | None   # a Kubernetes Job's: good only while that job has not ended


def _key(settings: Settings) -> bytes:
    return read_or_create_secret(settings.secrets_dir / KEY_FILE).encode()


def make(settings: Settings, project: str, slugs, *, role: str = "session", job: int | None = None,
         ttl: int | None = None, now: float | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"no catalogue ticket for a {role!r} pod")
    if ttl is None:
        ttl = TTL_S if role == "session" else BATCH_TTL_S
    fields = {"p": project, "r": role, "s": sorted(slugs), "e": int((time.time() if now is None else now) + ttl)}
    if job is not None:
        fields["j"] = int(job)
    part = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{part}.{hmac.new(_key(settings), part.encode(), hashlib.sha256).hexdigest()}"


def check(settings: Settings, ticket: str, now: float | None = None) -> Ticket:
    """What a ticket this hub made and that has not expired names; ValueError otherwise."""
    part, _, mac = ticket.strip().partition(".")
    want = hmac.new(_key(settings), part.encode(), hashlib.sha256).hexdigest()
    if not part or not hmac.compare_digest(mac.encode(), want.encode()):
        raise ValueError("not a ticket of this hub")
    body = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if body["e"] < (time.time() if now is None else now):
        raise ValueError("the ticket has expired")
    role = body.get("r", "session")   # a session's ticket made before roles were named
    if role not in ROLES:
        raise ValueError(f"no catalogue ticket for a {role!r} pod")
    job = body.get("j")
    return Ticket(body["p"], role, tuple(body["s"]), None if job is None else int(job))
