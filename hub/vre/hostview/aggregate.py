"""Turning a stream of file opens into a bounded number of audit records (pure; no kernel).

Per reader (a session or worker, one dataset, one attribution): the first open of each series
directory (the file's parent) gives one ``dataset.read``; the first listing of each folder (an
open of the folder itself: ``ls``, ``os.scandir``, the Lab's file browser) gives one
``dataset.list``; per reader and minute one ``dataset.read_summary`` counts the opens, per series,
at most :data:`MAX_SERIES_LISTED` series listed and the rest counted, and the listings. So N opens
give at most (#series + #folders + #minutes) records, whatever N is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_SERIES_LISTED = 1000
#: series names longer than this keep their end in summaries, so 1,000 of them stay well inside
#: the store's 64 KiB of details
MAX_SERIES_NAME = 48


@dataclass(frozen=True)
class Reader:
    """Who read, from the host's records (never from the session): the run, its user and project,
    the dataset (by its mount), and for a batch worker the job it serves."""
    session: str
    user: str
    project: str
    dataset: str
    target: str          # the dataset's mount point inside, e.g. /data/<slug>
    role: str = "session"
    job: int | None = None


@dataclass
class FirstRead:
    reader: Reader
    series: str
    path: str
    when: float


@dataclass
class FirstList:
    reader: Reader
    folder: str          # relative to the dataset root ("." for the root itself)
    path: str
    when: float


@dataclass
class Summary:
    reader: Reader
    minute: int          # unix time of the minute's start
    opens: int
    series: dict[str, int]
    unlisted_series: int
    unlisted_opens: int
    listings: int = 0    # folders opened (listed) that minute


def in_session(reader: Reader, path: str) -> str:
    """The path as the session sees it. ``readlink`` of an event's fd gives it while the run's
    mount namespace lives; once the run is gone its mounts are detached and the kernel gives the
    path from the mount's root instead."""
    return path if path.startswith(reader.target + "/") else reader.target + path


def series_of(reader: Reader, path: str) -> str:
    """The series directory of ``path`` (as the session sees it) relative to the dataset root
    ("." for the root itself). String slicing: this runs for every open."""
    return path[len(reader.target) + 1:].rpartition("/")[0] or "."


@dataclass
class _Bucket:
    opens: int = 0
    series: Counter = field(default_factory=Counter)
    listings: int = 0


class Aggregator:
    """Counts opens per reader and minute; remembers which series each reader has read."""

    def __init__(self):
        self._seen: dict[Reader, set[str]] = {}
        self._listed: dict[Reader, set[str]] = {}
        self._buckets: dict[tuple[Reader, int], _Bucket] = {}

    def record(self, reader: Reader, path: str, when: float) -> FirstRead | None:
        """Count one open at unix time ``when``; a FirstRead when it opens a new series."""
        path = in_session(reader, path)
        series = series_of(reader, path)
        bucket = self._buckets.setdefault((reader, int(when // 60) * 60), _Bucket())
        bucket.opens += 1
        bucket.series[series] += 1
        seen = self._seen.setdefault(reader, set())
        if series in seen:
            return None
        seen.add(series)
        return FirstRead(reader, series, path, when)

    def listed(self, reader: Reader, path: str, when: float) -> FirstList | None:
        """Count one listing (an open of the folder ``path``); a FirstList when it is the
        reader's first of that folder."""
        path = path.rstrip("/")
        if path != reader.target:
            path = in_session(reader, path)
        folder = path[len(reader.target) + 1:] or "."
        self._buckets.setdefault((reader, int(when // 60) * 60), _Bucket()).listings += 1
        seen = self._listed.setdefault(reader, set())
        if folder in seen:
            return None
        seen.add(folder)
        return FirstList(reader, folder, path, when)

    def flush(self, now: float | None = None, *, session: str | None = None) -> list[Summary]:
        """Summaries of the minutes that ended before ``now`` (all when None), or of one session's
        minutes (``session``: it stops); they are forgotten once returned."""
        current = None if now is None else int(now // 60) * 60
        out = []
        for key in sorted(self._buckets, key=lambda k: (k[1], k[0].session, k[0].dataset)):
            reader, minute = key
            if session is not None and reader.session != session:
                continue
            if session is None and current is not None and minute >= current:
                continue
            out.append(_summary(reader, minute, self._buckets.pop(key)))
        if session is not None:
            for seen in (self._seen, self._listed):
                for reader in [r for r in seen if r.session == session]:
                    del seen[reader]
        return out

    def pending(self) -> int:
        return sum(b.opens + b.listings for b in self._buckets.values())

    def oldest(self) -> int | None:
        """Start of the oldest minute still counting (None: nothing pending)."""
        return min((minute for _, minute in self._buckets), default=None)


def _summary(reader: Reader, minute: int, bucket: _Bucket) -> Summary:
    listed = dict(sorted(bucket.series.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_SERIES_LISTED])
    series = {}
    for name, n in listed.items():  # a cut name may meet another: add them up
        short = name if len(name) <= MAX_SERIES_NAME else "…" + name[1 - MAX_SERIES_NAME:]
        series[short] = series.get(short, 0) + n
    listed_opens = sum(listed.values())
    return Summary(reader, minute, bucket.opens, series, len(bucket.series) - len(listed),
                   bucket.opens - listed_opens, bucket.listings)
