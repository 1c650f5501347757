"""The host's view of dataset reads: mount marks per run, events attributed by mount, audit records.

One fanotify group; per marked run (session, batch worker, container) one ``FAN_MARK_MOUNT`` mark
with ``FAN_OPEN`` of files and folders (a folder is opened to list it) on each of *its own*
dataset mounts, reached as ``/proc/<pid>/root/data/<slug>``
(the host's mount of a dataset does not see opens made through a sandbox's bind of it). Each event
is attributed by the mount its fd was opened through, never by pid (short-lived readers are gone
when the event is read), and its fd is closed at once. Attribution therefore comes from what the
hub told hostview when it marked the run, never from the session.

A dataset's folder may hold mounts of its own (an NFS export per collection, an automount): each
is a mount of its own id, which a mark of the dataset's mount does not cover. They are marked too,
as the dataset's, when the run is marked and, for mounts that appear later, at every tick.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import Counter
from pathlib import Path

from ..audit.schema import Event
from ..backends.cgroups import freeze
from .aggregate import Aggregator, FirstList, FirstRead, Reader, Summary
from .fanotify import FAN_NOFD, FAN_Q_OVERFLOW, READ_BYTES, Group, mount_and_folder, mount_id
from .pause import CGROUP_ROOT, freezer_of
from .registry import Marked, Registry, alive, process_start

log = logging.getLogger("vre.hostview")


#: batches a drain reads when a run ends or hostview stops: everything queued (within reason)
ALL = 1000
#: batches (about 2,700 events each) read at a time before others are answered: a flood's backlog
#: is read on between requests, never in one go that keeps every other run waiting
STEP = 8
#: the queue not read empty for this long: the observer is behind, and the run that opened the
#: most since is frozen until it is (one more each period while it stays behind; ``pause``)
BEHIND_S = 2.0
#: behind with no run frozen, every run whose opens were read at this rate or more is frozen: many
#: floods at once are stopped together, and a run reading real files (open, read, close) is slower
FAST = 5000


class MarkError(RuntimeError):
    """A run's dataset mounts could not be marked; the message says why."""


class NotMarked(MarkError):
    """A worker to assign a job to is not marked (a new worker is marked as it starts)."""


class Behind(MarkError):
    """The kernel's queue could not be read empty before a worker's job changed: what it still
    holds would be counted as the new job's, so the worker keeps its job for now."""


class Busy(MarkError):
    """An earlier run of the name is still being ended (its queued reads read as its own): the
    new run is not marked yet; its launch is tried again."""


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def host_event(action: str, *, when: float, **fields) -> Event:
    """Every record hostview writes is built here: reported by the host, out of the session's reach."""
    return Event(action=action, time=_utc(when), source="host", **fields)


def _who(reader: Reader | Marked) -> dict:
    """actor and actor_role of a reader (or of a marked run): the session's user; a worker's job submitter (the engine
    tells hostview which job a worker serves); a worker between jobs is the project's."""
    if reader.role == "session" or reader.job is not None:
        return {"actor": reader.user, "actor_role": "researcher"}
    return {"actor": f"{reader.project} worker", "actor_role": "service"}


def _details(reader: Reader) -> dict:
    d = {"via": "vre-hostview", "role": reader.role}
    if reader.job is not None:
        d["job"] = reader.job
    return d


def gap_event(m: Marked, since: float, now: float, *, via: str = "vre-hostview", **details) -> Event:
    """``audit.gap``: reads of run ``m`` between ``since`` and ``now`` went unrecorded (``via``: the
    observer that says so, this host's or a cluster node's)."""
    return host_event("audit.gap", when=now, actor=via, actor_role="service", project=m.project,
                      session=m.session, target=m.session, outcome="error",
                      details={"via": via, "from": _utc(since).isoformat(), "to": _utc(now).isoformat(),
                               "seconds": round(now - since, 3), "user": m.user,
                               "datasets": [d["slug"] for d in m.datasets], "role": m.role, **details})


def pause_event(m: Marked, since: float, now: float, opens: int, *, via: str, **details) -> Event:
    """``dataset.read_pause``: run ``m`` opened dataset files faster than they could be recorded
    and was frozen from ``since`` to ``now``."""
    return host_event("dataset.read_pause", when=now, **_who(m), project=m.project, session=m.session,
                      target=m.session, details={"via": via, "from": _utc(since).isoformat(),
                                                 "to": _utc(now).isoformat(), "seconds": round(now - since, 3),
                                                 "opens_while_behind": opens, "role": m.role, **details})


def first_read_event(r: FirstRead) -> Event:
    return host_event("dataset.read", when=r.when, **_who(r.reader), project=r.reader.project,
                      dataset=r.reader.dataset, session=r.reader.session, target=r.path[:4000],
                      details={**_details(r.reader), "series": r.series})


def first_list_event(r: FirstList) -> Event:
    return host_event("dataset.list", when=r.when, **_who(r.reader), project=r.reader.project,
                      dataset=r.reader.dataset, session=r.reader.session, target=r.path[:4000],
                      details={**_details(r.reader), "folder": r.folder})


def summary_event(s: Summary, when: float) -> Event:
    return host_event("dataset.read_summary", when=when, **_who(s.reader), project=s.reader.project,
                      dataset=s.reader.dataset, session=s.reader.session, target=s.reader.target,
                      details={**_details(s.reader), "minute": _utc(s.minute).strftime("%Y-%m-%dT%H:%MZ"),
                               "opens": s.opens, "series": s.series, "unlisted_series": s.unlisted_series,
                               "unlisted_opens": s.unlisted_opens, "listings": s.listings})


def mount_point_ids(pid: int) -> dict[str, int]:
    """Mount point -> id of the topmost mount there, in the mount namespace of ``pid``."""
    ids = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            ids[fields[4]] = int(fields[0])
    return ids


class Watcher:
    """Marks, the event loop's body (``drain``, ``tick``) and the records waiting to be stored."""

    def __init__(self, registry: Registry, group: Group | None = None, *, via: str = "vre-hostview",
                 where: dict | None = None, cgroups: Path = CGROUP_ROOT):
        self.registry = registry
        self.group = group or Group()
        self.via, self.where = via, where or {}   # who records this host's gaps, and where it runs
        self.cgroups = cgroups                    # the host's cgroup filesystem, to freeze runs in
        self.agg = Aggregator()
        self.marks: dict[str, Marked] = {}
        self.by_mount: dict[int, tuple[Reader, str]] = {}   # mount id -> (reader, its mount point)
        self.outbox: list[Event] = []
        self.unattributed = 0
        self.scanned_at = time.time()   # the last rescan for mounts below datasets
        self.unmarkable: set[tuple[str, int]] = set()   # (session, mount id) below datasets, said once
        self.empty_at = time.time()   # the kernel's queue was last read empty: every earlier open is here
        self.emptied = 0              # how often it was read empty (a clock may step back)
        self.behind_s = BEHIND_S
        self.behind: Counter[str] = Counter()   # session -> opens read since the queue was empty or a freeze
        self.held_at = 0.0                       # when the last run was frozen
        self.queued_at_hold = 0                  # bytes queued then, after its freezes
        self.paused: dict[str, tuple] = {}       # session -> (its freezer file, since, opens behind)
        self.unpausable: set[str] = set()        # runs without a cgroup of their own, said once

    # -- marks ------------------------------------------------------------------------------
    def mark(self, m: Marked) -> dict[str, int]:
        """Mark each dataset mount of the run and the mounts below it; returns slug -> mount id.
        All or nothing for the datasets' own mounts."""
        self.drain()  # events of a mount id about to be reused are attributed to its old owner
        try:
            m.pid_start = process_start(m.pid)
            ids = mount_point_ids(m.pid)
        except (OSError, ValueError, IndexError) as e:
            raise MarkError(f"process {m.pid} of {m.session} is not there: {e}") from None
        fds = []
        try:
            for d in m.datasets:
                want = ids.get(d["target"])
                if want is None:
                    raise MarkError(f"{d['target']} is not a mount in {m.session} (pid {m.pid})")
                fd = os.open(f"/proc/{m.pid}/root{d['target']}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                fds.append(fd)
                if mount_id(fd) != want:
                    raise MarkError(f"{d['target']} in {m.session} is not the mount its mountinfo lists")
                if d.get("mnt_id") not in (None, want):
                    raise MarkError(f"{d['target']} in {m.session} is mount {want}, not {d['mnt_id']} as marked before")
                d["mnt_id"] = want
            for fd in fds:
                self.group.mark_mount(fd)
        except OSError as e:
            raise MarkError(f"marking the datasets of {m.session}: {e}") from None
        finally:
            for fd in fds:
                os.close(fd)
        self._forget(m.session)
        self.marks[m.session] = m
        for d in m.datasets:
            d["nested"] = {}
        self._attribute(m)
        self._mark_nested(m, ids)
        self.registry.save(self.marks)
        log.info("marked %s (pid %s): %s", m.session, m.pid,
                 ", ".join(f"{d['slug']}=mount {d['mnt_id']}" for d in m.datasets))
        return {d["slug"]: d["mnt_id"] for d in m.datasets}

    def _mark_nested(self, m: Marked, ids: dict[str, int]) -> list[str]:
        """Mark the mounts below each dataset mount of ``m`` that are not marked yet (``ids``:
        its mount table). One hidden under a later mount is unreachable and left alone. Returns
        the mount points marked."""
        added = []
        for d in m.datasets:
            nested = d.setdefault("nested", {})
            for point in [p for p, mnt in nested.items() if ids.get(p) != mnt]:   # unmounted, or replaced
                self._drop(m, nested.pop(point))
            for point, mnt in ids.items():
                if not point.startswith(d["target"] + "/") or nested.get(point) == mnt:
                    continue
                try:
                    fd = os.open(f"/proc/{m.pid}/root{point}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                except OSError as e:   # a file mount, or gone meanwhile: said once, not every second
                    if (m.session, mnt) not in self.unmarkable:
                        self.unmarkable.add((m.session, mnt))
                        log.error("%s in %s (mount %s) cannot be marked, reads through it are not recorded: %s",
                                  point, m.session, mnt, e)
                    continue
                try:
                    if mount_id(fd) != mnt:
                        continue
                    self.group.mark_mount(fd)
                finally:
                    os.close(fd)
                nested[point] = mnt
                self.by_mount[mnt] = (self._reader(m, d), point)
                log.info("marked %s in %s: mount %s below dataset %s", point, m.session, mnt, d["slug"])
                added.append(point)
        return added

    def _drop(self, m: Marked, mnt: int) -> None:
        """Forget mount id ``mnt`` as ``m``'s (the kernel reuses ids: another run's stays)."""
        held = self.by_mount.get(mnt)
        if held is not None and held[0].session == m.session:
            del self.by_mount[mnt]

    def _attribute(self, m: Marked) -> None:
        """Point each dataset mount of ``m`` (its own and those below) at its current reader."""
        for d in m.datasets:
            reader = self._reader(m, d)
            self.by_mount[d["mnt_id"]] = (reader, d["target"])
            for point, mnt in d.get("nested", {}).items():
                self.by_mount[mnt] = (reader, point)

    def rescan(self, now: float) -> None:
        """Mark mounts that appeared below a marked run's datasets since the last rescan (a
        collection mounted later, an automount). Reads through such a mount before its mark
        raise no event: that interval is recorded as an ``audit.gap`` of the run."""
        since, self.scanned_at = self.scanned_at, now
        changed = False
        for m in list(self.marks.values()):
            try:
                ids = mount_point_ids(m.pid)
            except (OSError, ValueError, IndexError):
                continue   # ended: tick forgets it
            points = self._mark_nested(m, ids) if alive(m) else []
            if points:
                changed = True
                self.outbox.append(self.gap(m, max(since, m.marked_at), now, mounts=points,
                                            what="dataset reads through mounts that appeared below its datasets"))
        if changed:
            self.registry.save(self.marks)

    @staticmethod
    def _reader(m: Marked, d: dict) -> Reader:
        return Reader(session=m.session, user=m.user, project=m.project, dataset=d["slug"], target=d["target"],
                      role=m.role, job=m.job)

    def assign(self, session: str, user: str, job: int | None, *, since: int | None = None,
               reads: int = ALL) -> None:
        """A batch worker now serves ``job`` of ``user``: its next reads are theirs. Only once
        the kernel's queue was read empty after the hand-out was asked (``since``: ``emptied``
        then; now by default), when every read queued before it is counted for its previous job;
        else ``Behind``. Reads up to ``reads`` batches towards that (the services read on in
        their own loop meanwhile, ``Recorder.read_empty``, and pass 0)."""
        m = self.marks.get(session)
        if m is None:
            raise NotMarked(f"{session} is not marked")
        since = self.emptied if since is None else since
        if reads and self.emptied == since:
            self.drain(reads)   # every read before this one is the previous job's
        if self.emptied == since:
            raise Behind(f"the queue of dataset reads was not read empty ({session} keeps counting for job "
                         f"{m.job} until it is: a run opens files faster than they are recorded)")
        self._flush(session=session)  # the previous job's counts stay the previous job's
        m.user, m.job = user, job
        self._attribute(m)
        self.registry.save(self.marks)

    def unmark(self, session: str, reads: int = ALL) -> int:
        """The run ended: record what it read (its summaries now, after reading up to ``reads``
        batches of the queue) and forget it. Its marks went with its mounts. Returns the number
        of opens summarised."""
        if reads:
            self.drain(reads)
        opens = self._flush(session=session)
        if self._forget(session):
            self.registry.save(self.marks)
            log.info("unmarked %s", session)
        return opens

    def _forget(self, session: str) -> bool:
        if session in self.paused:   # a run being stopped: a frozen process on cgroup v1 dies only thawed
            self._thaw(session, time.time())
        self.unpausable.discard(session)
        m = self.marks.pop(session, None)
        if m is None:
            return False
        for d in m.datasets:
            for mnt in (d.get("mnt_id"), *d.get("nested", {}).values()):
                self._drop(m, mnt)
        self.unmarkable = {k for k in self.unmarkable if k[0] != session}
        return True

    def restore(self, now: float | None = None) -> list[str]:
        """After a restart: mark the live runs of the registry again and record the interval in
        which their reads went unrecorded (``audit.gap``). Returns the sessions re-marked."""
        now = now or time.time()
        since = self.registry.last_alive() or now
        back = []
        for m in self.registry.load().values():
            if not alive(m):
                continue
            if m.frozen:   # frozen by the hostview before this one, which could not thaw it
                try:
                    state = freezer_of(m.pid, self.cgroups)
                    if state is None:
                        raise OSError("its cgroup's freezer is not to be found")
                    freeze(state, False)
                except OSError as e:
                    log.error("%s may still be frozen: cannot thaw it (%s); an admin thaws its cgroup", m.session, e)
                m.frozen = False
            try:
                self.mark(m)
            except MarkError as e:
                log.error("could not mark %s again: %s", m.session, e)
                continue
            back.append(m.session)
            self.outbox.append(self.gap(m, since, now, what="dataset reads"))
        self.registry.save(self.marks)
        return back

    def gap(self, m: Marked, since: float, now: float, **details) -> Event:
        """``audit.gap`` of run ``m``, recorded by this watcher's observer."""
        return gap_event(m, since, now, via=self.via, **self.where, **details)

    # -- events -----------------------------------------------------------------------------
    def drain(self, reads: int = STEP) -> int:
        """Read what the kernel queued, at most ``reads`` batches of about 2,700 events (a
        reader that never pauses must not keep the service from answering); returns how many
        opens were attributed."""
        n = 0
        for _ in range(reads):
            events = self.group.read()
            if not events:   # not FIONREAD: the kernel counts the queue entry by entry, under its lock
                self._caught_up(time.time())
                break
            n += self._count(events, time.time())
        else:
            self._hold_back(time.time())
        return n

    def _hold_back(self, now: float) -> None:
        """Behind for ``behind_s``. With no run frozen: freeze every run whose opens were read at
        ``FAST`` a second or more since the queue was last empty, or else the one that opened
        the most. With runs frozen, what is read is mostly their backlog, old news: if the queue
        still grew since the last freezes, someone whose opens are not read yet outruns hostview,
        and every other run is frozen until the queue is read empty; if not, nobody is."""
        since = max(self.empty_at, self.held_at)
        if now - since < self.behind_s:
            return
        self.held_at = now
        counts, self.behind = self.behind, Counter()
        if not self.paused:
            live = {s: n for s, n in counts.items() if self._freezable(s)}
            fast = [s for s, n in live.items() if n >= FAST * (now - since)]
            if not fast and live:
                fast = [max(live, key=live.get)]
        elif self.group.queued() > self.queued_at_hold + READ_BYTES:
            fast = [s for s in self.marks if self._freezable(s)]
            if fast:
                log.warning("the queue still grows with %d runs frozen: freezing the %d others until it is "
                            "read", len(self.paused), len(fast))
        else:
            fast = []
        for session in fast:
            self._freeze(session, counts.get(session, 0), now, since)
        self.queued_at_hold = self.group.queued() if self.paused else 0

    def _freezable(self, session: str) -> bool:
        return (session in self.marks and session not in self.paused and session not in self.unpausable
                and alive(self.marks[session]))

    def _freeze(self, session: str, opens: int, now: float, since: float) -> None:
        m = self.marks[session]
        try:
            state = freezer_of(m.pid, self.cgroups)
            if state is None:
                raise OSError("it has no cgroup of its own to freeze")
            m.frozen = True
            self.registry.save(self.marks)   # first: a successor of a killed hostview thaws it
            freeze(state, True)
        except OSError as e:
            m.frozen = False
            self.unpausable.add(session)
            log.error("%s opens dataset files faster than they are recorded and cannot be frozen (%s): "
                      "the kernel's queue grows", session, e)
            return
        self.paused[session] = (state, now, opens)
        log.warning("%s opened %d dataset files in %.1f s, faster than they are recorded: frozen until "
                    "they are", session, opens, now - since)

    def _caught_up(self, now: float) -> None:
        """The queue was read empty: every open so far is counted; thaw what was frozen, and
        try again to freeze runs that could not be."""
        self.empty_at = now
        self.emptied += 1
        self.behind.clear()
        self.unpausable.clear()
        self.queued_at_hold = 0
        if self.paused:
            for session in list(self.paused):
                self._thaw(session, now, save=False)
            self.registry.save(self.marks)

    def _thaw(self, session: str, now: float, *, save: bool = True) -> None:
        state, since, opens = self.paused.pop(session)
        try:
            freeze(state, False)
        except OSError:
            pass   # its cgroup is gone: so is the run
        m = self.marks.get(session)
        if m is not None:
            m.frozen = False
            if save:
                self.registry.save(self.marks)
            self.outbox.append(pause_event(m, since, now, opens, via=self.via, **self.where))
            log.info("%s thawed after %.1f s: its reads are recorded", session, now - since)

    def _count(self, events: list[tuple[int, int, int]], now: float) -> int:
        n = 0
        own = os.getpid()
        for mask, fd, pid in events:
            if fd == FAN_NOFD:
                if mask & FAN_Q_OVERFLOW:
                    self._overflowed(now)
                continue
            try:
                mnt, folder = mount_and_folder(fd)
                # a name that is not UTF-8 (imported trees have them) is kept readable, escaped
                path = os.readlink(f"/proc/self/fd/{fd}").encode("utf-8", "surrogateescape").decode(
                    "utf-8", "backslashreplace")
            except OSError:
                continue
            finally:
                os.close(fd)
            held = self.by_mount.get(mnt)
            if held is None:
                self.unattributed += 1
                continue
            reader, point = held
            self.behind[reader.session] += 1
            if path != point and not path.startswith(point + "/"):   # the run is gone: from the mount's root
                path = point + path
            n += 1
            if folder:
                if pid == own:   # marking a run opens its folders: not the run's listing
                    continue
                listed = self.agg.listed(reader, path, now)
                if listed is not None:
                    self.outbox.append(first_list_event(listed))
                continue
            first = self.agg.record(reader, path, now)
            if first is not None:
                self.outbox.append(first_read_event(first))
        return n

    def _overflowed(self, now: float) -> None:
        """The kernel dropped opens. Not expected with the unlimited queue (the kernel allocates
        its events without fail), but a bounded queue, or a kernel that drops anyway, must not go
        unnoticed in the trail: which runs lost reads is unknown, so every marked run gets an
        ``audit.gap`` from when the queue was last read empty."""
        log.error("the kernel's queue of open events overflowed: reads since %s are not all recorded; "
                  "an audit.gap for each of %d marked runs", _utc(self.empty_at).isoformat(), len(self.marks))
        for m in self.marks.values():
            self.outbox.append(self.gap(m, max(self.empty_at, m.marked_at), now, cause="queue overflow",
                                        what="dataset reads the kernel dropped"))

    def tick(self, now: float | None = None) -> list[Marked]:
        """Once a second: summaries of ended minutes and marks of mounts new below datasets.
        Returns the runs that ended without an unmark (the hub was away), for the caller to
        unmark once their reads are read (``Recorder.tick``)."""
        now = now or time.time()
        self.drain()
        self._flush(now=now)
        self.rescan(now)
        return [m for m in self.marks.values() if not alive(m)]

    def stop(self) -> None:
        """Summarise everything counted so far and thaw what is frozen; the registry keeps the
        marks for the next hostview."""
        self.drain(ALL)
        for session in list(self.paused):
            self._thaw(session, time.time())
        self._flush()

    def recorded_until(self, now: float) -> float:
        """Until when every read is in a record (stored once the outbox is delivered)."""
        pending = [self.agg.oldest(), self.empty_at] + [e.time.timestamp() for e in self.outbox[:1]]
        return min([now] + [t for t in pending if t is not None])

    def _flush(self, now: float | None = None, *, session: str | None = None) -> int:
        when = now or time.time()
        summaries = self.agg.flush(now, session=session)
        self.outbox.extend(summary_event(s, min(when, s.minute + 60)) for s in summaries)
        return sum(s.opens for s in summaries)

    def status(self) -> dict:
        return {"marks": {s: {"pid": m.pid, "user": m.user, "job": m.job, "role": m.role,
                              "datasets": {d["slug"]: d["mnt_id"] for d in m.datasets}}
                          for s, m in self.marks.items()},
                "pending_opens": self.agg.pending(), "outbox": len(self.outbox), "unattributed": self.unattributed}
