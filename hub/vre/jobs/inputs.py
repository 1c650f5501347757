"""A job's inputs where the hub cannot write its folder (Kubernetes with claims).

On the host the job service writes a function job's ``function.pkl`` and a held job's copy of
its code into the job's folder at submission. A workspace or held claim is mounted only in the
project's pods, so there the service keeps those files in its own state until the job starts
(``<state_dir>/job-inputs/<id>/``, root-only like every state file), the engine sends them in
the job's spec (``spec["inputs"]``: path in the folder -> base64) and the worker's task writes
them into the folder it makes (``vre_session.jobs.task``). Each start sends them again (a job
re-queued after a lost worker needs them once more); the engine drops those of ended jobs
(``Engine.drop_inputs``).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

from ..settings import Settings

#: The file that lists a stash's paths (names in the job's folder may hold '/').
INDEX = "index"
#: Seconds the inputs of a job that never started are kept after it ended (its rerun takes them).
KEEP_UNSTARTED_S = 7 * 24 * 3600


def stash_dir(settings: Settings, job_id: int) -> Path:
    return settings.state_dir / "job-inputs" / str(job_id)


def stash(settings: Settings, job_id: int, files: dict[str, bytes]) -> None:
    """Keep ``files`` (path in the job's folder -> bytes) until the job has started for good."""
    folder = stash_dir(settings, job_id)
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)   # a job id is never reused: only a failed submit's leftovers
    folder.mkdir(mode=0o700)
    names = []
    for i, (rel, data) in enumerate(sorted(files.items())):
        fd = os.open(folder / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        names.append(rel)
    (folder / INDEX).write_text("\n".join(names))


def load(settings: Settings, job_id: int) -> dict[str, str]:
    """The job's stashed inputs as the spec carries them (path -> base64); {} when none."""
    folder = stash_dir(settings, job_id)
    try:
        names = (folder / INDEX).read_text().split("\n")
    except FileNotFoundError:
        return {}
    return {rel: base64.b64encode((folder / str(i)).read_bytes()).decode() for i, rel in enumerate(names) if rel}


def age_s(settings: Settings, job_id: int) -> float:
    """Seconds since the job's inputs were kept."""
    try:
        return time.time() - stash_dir(settings, job_id).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def discard(settings: Settings, job_id: int) -> None:
    shutil.rmtree(stash_dir(settings, job_id), ignore_errors=True)


def stashed(settings: Settings) -> set[int]:
    """The ids of the jobs whose inputs are kept."""
    try:
        return {int(p.name) for p in (settings.state_dir / "job-inputs").iterdir() if p.name.isdigit()}
    except FileNotFoundError:
        return set()
