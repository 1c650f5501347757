"""The ``vre-hostview`` service: ``python -m vre.hostview``, run by the hub as a managed service (root).

It holds the fanotify group (:mod:`.watcher`), answers the hub and the job engine on a root-only
unix socket (protocol in :mod:`.client`), reads the kernel's queue every 50 ms at nice 10 (the
sessions' own work comes first) and once a second writes the records of ended minutes to the
audit store. Reading a flood's backlog takes seconds: it is read in steps with the loop free
between, so a request that waits for it (a worker's next job, a run's end) never keeps the
others (another project's session being marked) waiting. Requests about one run name are
still taken in order: a new run of a name is marked only once its predecessor's queued reads
are counted as the predecessor's. It dies with its hub and is the only one of its instance
(``vre.services``); a restarted one marks the live runs of its registry again and records the
gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

from ..audit.events import emit_many
from ..services import die_with_hub, take_over
from ..settings import Settings, load
from .client import socket_path
from .registry import Marked, Registry
from .watcher import ALL, STEP, Behind, Busy, MarkError, NotMarked, Watcher

log = logging.getLogger("vre.hostview")
TICK = 1.0
NICE = 10
POLL = 0.05
BUSY = 8 * 2000   # opens per drain that say more are waiting
#: How long a worker's next job waits for the queue to be read empty before hostview says
#: ``Behind`` (the engine tries again at its next look): well within the engine's request timeout,
#: and far more than an empty queue takes (a few milliseconds).
ASSIGN_PATIENCE = 1.0
#: How long a new run's mark waits for the end of a predecessor of the same name (its queued
#: reads read as its own) before it says ``Busy`` (the launch is tried again): within the
#: client's 10 s for an answer.
MARK_PATIENCE = 3.0


class Recorder:
    """The loop shared by ``vre-hostview`` and the per-node observer on Kubernetes
    (:mod:`.node`): read the kernel's queue, summarise each minute, store the records (``store``)."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher
        self._stop = asyncio.Event()
        self.ending: dict[str, asyncio.Event] = {}   # runs whose unmark reads their backlog: set when done

    def store(self, events: list) -> None:
        raise NotImplementedError

    async def deliver(self) -> None:
        """Store what is waiting (in a thread; the outbox is only touched here, in the loop);
        note until when everything is stored."""
        w = self.watcher
        until = w.recorded_until(time.time())
        batch, w.outbox = w.outbox, []
        if batch:
            try:
                await asyncio.to_thread(self.store, batch)
            except Exception:  # the store may be briefly away: keep them (ids make retries idempotent)
                log.exception("could not store %d dataset read record(s); retrying", len(batch))
                w.outbox[:0] = batch
                return
        w.registry.touch(until)

    async def read_empty(self, since: int, *, patience: float | None = None) -> bool:
        """Whether the kernel's queue was read empty after ``since`` (a count of
        ``Watcher.emptied``): reads on ``STEP`` batches at a time, the loop free between, for at
        most ``patience`` seconds and ``ALL`` batches (a drain's bound)."""
        w = self.watcher
        deadline = None if patience is None else time.monotonic() + patience
        for _ in range(0, ALL, STEP):
            if w.emptied != since or (deadline is not None and time.monotonic() > deadline):
                break
            w.drain(STEP)
            await asyncio.sleep(0)
        return w.emptied != since

    async def unmark(self, session: str, run: Marked | None = None) -> int:
        """A run ended (``run``, or the one marked as ``session`` now): its reads still queued
        are read first, then summarised, and it is forgotten (with its mount ids); returns how
        many opens. Meanwhile ``ending`` holds its name: a new run of that name is marked only
        after (``ended``). A run that is no longer the one of that name is not forgotten."""
        run = run or self.watcher.marks.get(session)
        if run is None:
            return 0
        await self.ended(session)   # one unmark of a name at a time
        if self.watcher.marks.get(session) is not run:   # ended by the other, or marked again
            return 0
        self.ending[session] = done = asyncio.Event()
        try:
            await self.read_empty(self.watcher.emptied)
            if self.watcher.marks.get(session) is not run:
                return 0
            return self.watcher.unmark(session, reads=0)
        finally:
            del self.ending[session]
            done.set()

    async def ended(self, session: str) -> None:
        """Return once no unmark of ``session`` is under way."""
        while (done := self.ending.get(session)) is not None:
            await done.wait()

    async def tick(self) -> None:
        """Once a second: the watcher's tick, and unmark the runs that ended unannounced."""
        for run in self.watcher.tick():
            log.info("%s ended without being unmarked", run.session)
            await self.unmark(run.session, run)

    async def _reads(self) -> None:
        """Read the kernel's events every POLL seconds rather than on each one: a reader then
        pays no wake-up of hostview per open, and hostview reads full batches."""
        while not self._stop.is_set():
            try:
                busy = self.watcher.drain()
            except Exception:   # never stop reading the kernel's queue
                log.exception("reading the dataset read events failed")
                busy = 0
            try:
                await asyncio.wait_for(self._stop.wait(), 0 if busy >= BUSY else POLL)
            except asyncio.TimeoutError:
                pass

    async def _ticks(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
                await self.deliver()
            except Exception:
                log.exception("hostview tick failed")
            try:
                await asyncio.wait_for(self._stop.wait(), TICK)
            except asyncio.TimeoutError:
                pass


class Service(Recorder):
    def __init__(self, settings: Settings, watcher: Watcher | None = None):
        super().__init__(watcher or Watcher(Registry(settings.state_dir / "hostview")))
        self.settings = settings

    def store(self, events: list) -> None:
        emit_many(self.settings, events)

    # -- requests ---------------------------------------------------------------------------
    async def answer(self, req: dict) -> dict:
        op = req.get("op")
        try:
            if op == "mark":
                m = Marked(session=str(req["session"]), user=str(req["user"]), project=str(req["project"]),
                           pid=int(req["pid"]), pid_start=0, role=str(req.get("role") or "session"),
                           job=req.get("job"),
                           datasets=[{"slug": str(d["slug"]), "target": str(d["target"])} for d in req["datasets"]])
                return {"ok": True, "mounts": await self.mark(m)}
            if op == "unmark":
                return {"ok": True, "opens": await self.unmark(str(req["session"]))}
            if op == "assign":
                await self.assign(str(req["session"]), str(req["user"]), req.get("job"))
                return {"ok": True}
            if op == "status":
                self.watcher.drain()
                return {"ok": True, **self.watcher.status()}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except (KeyError, TypeError, ValueError) as e:
            return {"ok": False, "error": f"bad request: {e!r}"}
        except MarkError as e:   # "unmarked": a worker hostview does not know (the engine replaces it)
            return {"ok": False, "error": str(e), "unmarked": isinstance(e, NotMarked),
                    "later": isinstance(e, (Behind, Busy))}

    async def mark(self, m: Marked) -> dict[str, int]:
        """Mark a new run, after its predecessor of the same name has ended (a batch worker's
        name comes back): what the predecessor read and is still queued stays the predecessor's.
        ``Busy`` if that takes more than ``MARK_PATIENCE``."""
        try:
            await asyncio.wait_for(self._predecessor_ended(m.session), MARK_PATIENCE)
        except asyncio.TimeoutError:
            raise Busy(f"an earlier run named {m.session} is still being recorded (its reads are queued): "
                       "start it again in a moment") from None
        return self.watcher.mark(m)

    async def _predecessor_ended(self, session: str) -> None:
        await self.ended(session)
        while (run := self.watcher.marks.get(session)) is not None:   # its end was not announced
            await self.unmark(session, run)

    async def assign(self, session: str, user: str, job) -> None:
        """A worker's next job: once every read queued before is read (``Watcher.assign``),
        waiting ``ASSIGN_PATIENCE`` at most for a backlog."""
        run = self.watcher.marks.get(session)
        if run is None or session in self.ending:
            raise NotMarked(f"{session} is not marked")
        since = self.watcher.emptied
        await self.read_empty(since, patience=ASSIGN_PATIENCE)
        if self.watcher.marks.get(session) is not run:
            raise NotMarked(f"{session} was unmarked or marked again meanwhile")
        self.watcher.assign(session, user, job, since=since, reads=0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                except ValueError:
                    reply = {"ok": False, "error": "not JSON"}
                else:
                    reply = await self.answer(req) if isinstance(req, dict) else {"ok": False, "error": "not an object"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    # -- life -------------------------------------------------------------------------------
    async def run(self) -> None:
        path = socket_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chown(path.parent, 0, 0)
        os.chmod(path.parent, 0o700)
        lock = take_over(path.parent / "hostview.lock", "hostview", log)  # noqa: F841 (held while we run)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # the hub stops services with SIGINT, then SIGTERM
            loop.add_signal_handler(sig, self._stop.set)
        back = self.watcher.restore()
        if back:
            log.warning("marked %d run(s) again after a restart: %s", len(back), ", ".join(back))
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._client, str(path))
        os.chmod(path, 0o600)
        log.info("vre-hostview listening on %s (instance %s)", path, self.settings.instance)
        tasks = [asyncio.create_task(self._reads()), asyncio.create_task(self._ticks())]
        await self._stop.wait()
        server.close()
        await asyncio.gather(*tasks)
        self.watcher.stop()
        await self.deliver()
        path.unlink(missing_ok=True)
        log.info("vre-hostview stopped; its marks are re-made by the next one")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s vre-hostview] %(message)s")
    die_with_hub()
    if os.geteuid() != 0:
        raise SystemExit("vre-hostview must run as root (fanotify, /proc/<pid>/root of sandboxes)")
    # Recording must not slow the reads it records: on a busy host the researchers' processes
    # get the CPU first; the kernel queues the events (unbounded) until hostview catches up.
    os.nice(NICE)
    asyncio.run(Service(load()).run())


if __name__ == "__main__":
    main()
