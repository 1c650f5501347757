"""What hostview has marked, kept on disk so that a restarted hostview marks the same mounts again.

A fanotify mark lives as long as its group: when hostview dies, every mark goes with it. The
registry (``state_dir/hostview/marks.json``, root-only) names each marked run with the pid and
start time of a process inside it and the mount id of each dataset mount; the mtime of ``alive``
says until when every read had been stored (set after each delivery to the audit store).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class Marked:
    """One marked run (a session, a batch worker): who it is and where its dataset mounts are."""
    session: str
    user: str
    project: str
    pid: int                    # a process inside it (bwrap's child, the container's init)
    pid_start: int              # its start time (clock ticks after boot): a reused pid is not it
    datasets: list[dict] = field(default_factory=list)   # {slug, target, mnt_id}
    role: str = "session"
    job: int | None = None
    marked_at: float = field(default_factory=time.time)
    frozen: bool = False        # frozen by hostview until its reads are recorded (``pause``)
    pod_uid: str = ""           # Kubernetes: the pod's (a successor of the same name is another pod)


def process_start(pid: int) -> int:
    """Start time of ``pid`` in clock ticks after boot (field 22 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(m: Marked) -> bool:
    try:
        return process_start(m.pid) == m.pid_start
    except (OSError, ValueError, IndexError):
        return False


class Registry:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.dir, 0, 0)
        os.chmod(self.dir, 0o700)
        self.path = self.dir / "marks.json"
        self.alive_path = self.dir / "alive"

    def load(self) -> dict[str, Marked]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        known = {f.name for f in fields(Marked)}   # a newer hostview's registry: its fields dropped
        return {m["session"]: Marked(**{k: v for k, v in m.items() if k in known}) for m in raw.get("marks", [])}

    def save(self, marks: dict[str, Marked]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"marks": [asdict(m) for m in marks.values()]}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def touch(self, until: float) -> None:
        """Every read before ``until`` is in the audit store."""
        if not self.alive_path.exists():
            self.alive_path.touch(mode=0o600)
        os.utime(self.alive_path, (until, until))

    def last_alive(self) -> float | None:
        """Until when a previous hostview recorded reads (None: never ran here)."""
        try:
            return self.alive_path.stat().st_mtime
        except FileNotFoundError:
            return None
