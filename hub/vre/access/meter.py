"""Egress: what the access layer sends to the browser, counted per session and day, and capped.

Every byte of every response body and server-to-browser websocket message on a session route is
counted as it is written (after the server's own encoding: what crossed the wire), by class of
route. Counts go to the broker every :data:`FLUSH_SECONDS` and at exit (``egress_daily``); at start
the layer reads the day's totals back, so a restart does not reset a cap. The cap is per project
member and day (the sum over their sessions of that project), from the project's ``egress_cap``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field

log = logging.getLogger("vre.access")
FLUSH_SECONDS = 10
#: Over the cap, responses and kernel messages larger than this are withheld; smaller ones still
#: pass, so the Lab keeps working (saving, listing, small outputs) and says why.
LARGE = 64 * 1024
CAP_MESSAGE = ("The project's daily limit on data sent to the browser is reached ({cap}); large outputs "
               "and files are withheld until tomorrow (UTC). Results leave through the airlock.")
#: Small answers over the cap are still bounded: at the ceiling (the cap plus a quarter, at least
#: this much more) the session sends nothing more to the browser that day, so a loop of small
#: outputs cannot carry the data out piece by piece.
GRACE_MIN = 1 << 20
CEILING_MESSAGE = ("The project's daily limit on data sent to the browser is passed ({ceiling} with the allowance "
                   "for small answers): this session sends nothing more to the browser until tomorrow (UTC). "
                   "Work continues in batch jobs; results leave through the airlock.")


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


def ceiling(cap: int) -> int:
    """The day's hard limit for a cap (0: none)."""
    return cap + max(cap // 4, GRACE_MIN) if cap else 0


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class _Pending:
    user: str
    project: str
    bytes: int = 0
    requests: int = 0
    classes: dict = field(default_factory=lambda: defaultdict(int))


class Meter:
    def __init__(self, flush):
        self._flush_to = flush            # async (rows) -> None
        self.day = today()
        self._pending: dict[str, _Pending] = {}
        self._member: dict[tuple[str, str], int] = defaultdict(int)   # (user, project) -> bytes today
        self._session: dict[str, int] = defaultdict(int)              # session -> bytes today
        self._told: set[tuple[str, str]] = set()                      # (session, limit) recorded today

    def load(self, rows: list[dict]) -> None:
        for r in rows:
            self._member[(r["user"], r["project"])] += int(r["bytes"])
            self._session[r["session"]] += int(r["bytes"])

    def _roll(self) -> None:
        day = today()
        if day != self.day:
            self.day = day
            self._member.clear()
            self._session.clear()
            self._told.clear()

    def add(self, session: str, user: str, project: str, klass: str, n: int, *, request: bool = False) -> None:
        self._roll()
        p = self._pending.get(session)
        if p is None:
            p = self._pending[session] = _Pending(user, project)
        p.bytes += n
        p.requests += int(request)
        p.classes[klass] += n
        self._member[(user, project)] += n
        self._session[session] += n

    def used(self, user: str, project: str) -> int:
        self._roll()
        return self._member.get((user, project), 0)

    def session_total(self, session: str) -> int:
        self._roll()
        return self._session.get(session, 0)

    def over(self, user: str, project: str, cap: int, adding: int = 0) -> bool:
        """Whether the member is at the cap, or would pass it by sending ``adding`` bytes more."""
        return bool(cap) and self.used(user, project) + adding >= cap

    def past_ceiling(self, user: str, project: str, cap: int) -> bool:
        """Whether the member's day has reached the ceiling over the cap: nothing more is sent."""
        return bool(cap) and self.used(user, project) >= ceiling(cap)

    def first_refusal(self, session: str, limit: str = "cap") -> bool:
        """True once per session, limit ("cap" or "ceiling") and day: when to record it."""
        self._roll()
        if (session, limit) in self._told:
            return False
        self._told.add((session, limit))
        return True

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        rows = [{"day": self.day, "session": s, "user": p.user, "project": p.project, "bytes": p.bytes,
                 "requests": p.requests, "classes": dict(p.classes)} for s, p in pending.items()]
        try:
            await self._flush_to(rows)
        except Exception:
            log.exception("egress counters could not be stored; kept for the next flush")
            for s, p in pending.items():  # merge back, nothing is lost
                q = self._pending.setdefault(s, _Pending(p.user, p.project))
                q.bytes += p.bytes
                q.requests += p.requests
                for k, v in p.classes.items():
                    q.classes[k] += v

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
