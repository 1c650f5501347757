"""Talking to ``vre-hostview``: one JSON object per line each way over its root-only unix socket.

Requests (``op`` and its fields) and answers (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``,
with ``later: true`` where trying again soon may succeed, ``unmarked: true`` for a run it does not know):

- ``mark {session, user, project, pid, role, job?, datasets: [{slug, target}]}`` -> ``mounts: {slug: id}``
- ``unmark {session}`` -> ``opens`` (summarised at the end)
- ``assign {session, user, job}``: a batch worker now serves this job (its reads are the job's user's)
- ``status`` -> what is marked, counts waiting, records waiting

Used by the launch gate (``backends.bwrap``, ``backends.docker``), the spawners' teardown and the
job engine. Imports nothing of the hub but the settings.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from ..settings import Settings

#: How long a launch waits for hostview (starting, restarting) before it refuses to run.
PATIENCE = 5.0


class HostviewError(RuntimeError):
    """hostview did not mark (not running, refused); the run must not start."""


class HostviewUnavailable(HostviewError):
    """hostview did not answer (not running, restarting), or said to try again soon (``later``:
    an earlier run of the name is still being recorded): worth trying again later."""


def socket_path(settings: Settings) -> Path:
    return settings.run_dir / "hostview" / "hostview.sock"


def request(settings: Settings, message: dict, timeout: float = 10.0) -> dict:
    """One request, one answer. OSError when hostview cannot be reached."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path(settings)))
        s.sendall(json.dumps(message).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    if not raw:
        raise ConnectionError("hostview closed the connection without an answer")
    return json.loads(raw)


async def mark(settings: Settings, *, session: str, user: str, project: str, pid: int, datasets: list[dict],
               role: str = "session", job: int | None = None, patience: float = PATIENCE) -> dict[str, int]:
    """Have hostview mark a run's dataset mounts (slug -> mount id). Retries for ``patience``
    seconds while hostview cannot be reached; raises HostviewError, never returns unmarked."""
    message = {"op": "mark", "session": session, "user": user, "project": project, "pid": pid, "role": role,
               "job": job, "datasets": datasets}
    deadline = time.monotonic() + patience
    while True:
        try:
            answer = await asyncio.to_thread(request, settings, message)
            break
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise HostviewUnavailable(
                    f"dataset reads cannot be recorded: vre-hostview does not answer at {socket_path(settings)} "
                    f"({e}); the run was not started. An admin checks the hub's log for vre-hostview") from None
            await asyncio.sleep(0.2)
    if not answer.get("ok"):
        kind = HostviewUnavailable if answer.get("later") else HostviewError   # later: tried again
        raise kind(f"dataset reads cannot be recorded: vre-hostview refused to mark {session}: "
                   f"{answer.get('error')}; the run was not started")
    return answer["mounts"]


def unmark(settings: Settings, session: str) -> dict | None:
    """The run ended (best effort: a hostview that is away forgets dead runs by itself)."""
    try:
        return request(settings, {"op": "unmark", "session": session}, timeout=5.0)
    except (OSError, ValueError):
        return None


def assign(settings: Settings, session: str, user: str, job: int | None) -> dict | None:
    try:
        return request(settings, {"op": "assign", "session": session, "user": user, "job": job}, timeout=5.0)
    except (OSError, ValueError):
        return None
