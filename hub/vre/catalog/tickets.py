"""Tickets for a session pod's catalogue files (Kubernetes with claims, ``vre.catalog.fetch``).

The hub writes one into the run's Secret when it starts the pod; only the pod's first container
(the fetcher) gets it, never the server the researcher's code runs in. It names the project and
the datasets that start mounts and expires after ``TTL_S``; the VRE service's sessions listener
serves those datasets' files to it, and nothing else. A JupyterHub token would not do: a member
can mint one narrowed to any of her servers, from anywhere, for any of her projects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from ..hostfiles import read_or_create_secret
from ..settings import Settings

#: Seconds a ticket is good for (the pod placed, its image pulled, the files fetched).
TTL_S = 3600
KEY_FILE = "catalogue-tickets.key"


def _key(settings: Settings) -> bytes:
    return read_or_create_secret(settings.secrets_dir / KEY_FILE).encode()


def make(settings: Settings, project: str, slugs, now: float | None = None) -> str:
    body = json.dumps({"p": project, "s": sorted(slugs), "e": int((time.time() if now is None else now) + TTL_S)},
                      separators=(",", ":"))
    part = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{part}.{hmac.new(_key(settings), part.encode(), hashlib.sha256).hexdigest()}"


def check(settings: Settings, ticket: str, now: float | None = None) -> tuple[str, tuple[str, ...]]:
    """(project, slugs) of a ticket this hub made and that has not expired; ValueError otherwise."""
    part, _, mac = ticket.strip().partition(".")
    want = hmac.new(_key(settings), part.encode(), hashlib.sha256).hexdigest()
    if not part or not hmac.compare_digest(mac.encode(), want.encode()):
        raise ValueError("not a ticket of this hub")
    body = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if body["e"] < (time.time() if now is None else now):
        raise ValueError("the ticket has expired")
    return body["p"], tuple(body["s"])
