"""Benchmark the audit store: durable appends (single, batched), the latency an audited request
pays, and verification speed, on SQLite and on PostgreSQL, side by side.

    .venv/bin/python bench/audit.py [--records 1000000] [--pg-records 1000000] [--skip-pg] [--pg-url URL]

Every append is durable: SQLite in WAL mode with synchronous=FULL (an fsync per commit);
PostgreSQL is a throwaway cluster started here with fsync on and synchronous_commit on (not the
test fixture's fsync=off), or the server given by ``--pg-url`` (its database must be empty; it is
migrated). Verification is timed on a chain of ``--records`` records (built with batched appends,
so the fill rate is a bulk-append measurement too); when that is below 1,000,000 the time for
1,000,000 is extrapolated linearly and labelled so. Prints a table; asserts nothing.

Other benchmarks can call :func:`request_audit_latency` to measure what auditing adds to a request.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from vre import db as vdb  # noqa: E402
from vre.audit import AuditStore, Event  # noqa: E402
from vre.audit.verify import PARALLEL_MIN  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TARGET_BATCHED = 5_000      # durable events/s, batched
TARGET_VERIFY_S = 10.0      # seconds for 1,000,000 records
TARGET_LATENCY_MS = 1.0     # added per audited request


def sample_event(i: int = 0) -> Event:
    """A typical event: a DICOM series view in a project session."""
    return Event("dicom.series_view", actor=f"user{i % 40}", actor_role="researcher", project=f"proj{i % 9}",
                 dataset=f"cohort{i % 13}", session=f"u{i % 40}-s{i % 200}", client=f"10.0.{i % 250}.7",
                 target=f"1.2.826.0.1.3680043.8.498.{1000000 + i}",
                 details={"series_uid": f"1.2.826.0.1.3680043.8.498.{i}", "instances": i % 300, "viewer": "lab"})


def request_audit_latency(store: AuditStore, *, n: int = 2000, concurrency: int = 1, make_event=sample_event) -> dict:
    """What auditing adds to a request: the wall time of building one event and appending it
    durably (``store.append`` returns after the commit), measured ``n`` times, from
    ``concurrency`` threads at once (as the hub's request handlers do via ``asyncio.to_thread``;
    concurrent appends are group-committed). Returns milliseconds: mean, p50, p95, p99, max, and
    the events/s achieved."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = max(1, n // concurrency)

    def worker(offset: int) -> None:
        mine = []
        for i in range(per_thread):
            t = time.perf_counter()
            store.append(make_event(offset + i))
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k * per_thread,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))]

    return {"n": len(ms), "concurrency": concurrency, "mean_ms": statistics.fmean(ms), "p50_ms": pct(50),
            "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": ms[-1], "events_per_s": len(ms) / wall}


def fsync_latency(directory: Path, n: int = 300) -> dict:
    """The floor for any durable write here: append 4 KiB to a file and fsync it, ``n`` times."""
    fd, path = tempfile.mkstemp(dir=directory)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"p50_ms": times[n // 2], "p99_ms": times[int(n * 0.99)]}


# --- PostgreSQL ------------------------------------------------------------------------------
class DurablePostgres:
    """A throwaway cluster on a unix socket, fsync on (durable commits), run as 'postgres'."""

    def __init__(self):
        self.dir = Path(f"/tmp/vre-bpg-{secrets.token_hex(3)}")
        self.dir.mkdir(mode=0o755)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        shutil.chown(self.dir, "postgres", "postgres")
        self._run([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "--auth=trust", "-U", "postgres",
                   "--encoding=UTF8", "--locale=C.UTF-8"])
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                   f"-c listen_addresses='' -k {self.dir} -p {self.port} -c fsync=on -c synchronous_commit=on "
                   f"-c shared_buffers=256MB", "start"])
        self._run([str(PG_BIN / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "bench"])
        self.url = f"postgresql+psycopg://postgres@/bench?host={self.dir}&port={self.port}"

    def _run(self, argv: list[str]) -> None:
        subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv],
                       check=True, capture_output=True, cwd="/")

    def stop(self) -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


# --- measurements ------------------------------------------------------------------------------
def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def bench_backend(name: str, url: str, key_dir: Path, records: int, single: int, workers: int | None,
                  rows: list) -> None:
    vdb.upgrade(url)
    store = AuditStore(url, key_dir / name / "secrets")

    def add(what: str, value: str, target: str = "", ok: bool | None = None):
        verdict = "" if ok is None else ("yes" if ok else "NO")
        rows.append([name, what, value, target, verdict])
        print(f"  {name:<10} {what:<56} {value:<34} {target:<10} {verdict}", flush=True)

    # single durable appends: one transaction (one fsync) each
    t = time.perf_counter()
    for i in range(single):
        store.append(sample_event(i))
    add(f"single durable appends ({single:,})", rate(single, time.perf_counter() - t))

    # batched durable appends: one transaction per batch
    for batch in (100, 1000):
        total = 20_000
        events = [sample_event(i) for i in range(total)]
        t = time.perf_counter()
        for k in range(0, total, batch):
            store.append_many(events[k:k + batch])
        per_s = total / (time.perf_counter() - t)
        add(f"batched durable appends ({batch}/transaction)", f"{per_s:,.0f}/s", f">= {TARGET_BATCHED:,}/s",
            per_s >= TARGET_BATCHED)

    # what a request pays, next to the floor any durable write pays on this disk
    if name == "sqlite":
        f = fsync_latency(Path(url.split("///", 1)[1]).parent)
        add("disk: 4 KiB write + fsync (p50 / p99)", f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms", "(floor)")
    for concurrency in (1, 8):  # 8: requests queue behind each other's commits (group commit)
        r = request_audit_latency(store, n=1000 if name == "sqlite" else 500, concurrency=concurrency)
        add(f"request latency, {concurrency} concurrent (p50 / p99)",
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms ({r['events_per_s']:,.0f}/s)",
            f"< {TARGET_LATENCY_MS:g} ms" if concurrency == 1 else "",
            r["p50_ms"] < TARGET_LATENCY_MS if concurrency == 1 else None)
    if name == "sqlite" and Path("/dev/shm").is_dir():
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:  # fsync is free: the audit code's own cost
            shm_url = f"sqlite:///{shm}/vre.sqlite"
            vdb.upgrade(shm_url)
            r = request_audit_latency(AuditStore(shm_url, Path(shm) / "secrets"), n=2000)
            add("request latency on tmpfs: the code's own cost (p50 / p99)",
                f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms", f"< {TARGET_LATENCY_MS:g} ms",
                r["p50_ms"] < TARGET_LATENCY_MS)

    # fill to `records` with batches of 10,000, then verify
    have = store.length()
    need = max(0, records - have)
    t = time.perf_counter()
    i = have
    while i < records:
        n = min(10_000, records - i)
        store.append_many([sample_event(i + k) for k in range(n)])
        i += n
    if need:
        add(f"bulk fill to {records:,} (10,000/transaction)", rate(need, time.perf_counter() - t))
    store.checkpoint()
    length = store.length()
    parallel = workers or min(4, os.cpu_count() or 1)
    modes = [("1 process", 1)]
    if parallel > 1 and length >= PARALLEL_MIN:  # below that, starting helpers costs more than it saves
        modes.append((f"{parallel} processes", parallel))
    if workers is None:  # what store.verify() and `vre audit verify` do by default
        modes[-1] = (modes[-1][0] + " (the default)", modes[-1][1])
    for label, w in modes:
        t, cpu = time.perf_counter(), cpu_seconds()
        report = store.verify(workers=w)
        s, c = time.perf_counter() - t, cpu_seconds() - cpu
        assert report.ok, report.detail
        scale = 1_000_000 / length
        what = f"verify {length:,} records, {label}"
        value = f"{s:.2f} s wall, {c:.1f} s CPU{' (client)' if name != 'sqlite' else ''}"
        if length >= 1_000_000:
            add(what, value, f"< {TARGET_VERIFY_S:g} s", s * scale < TARGET_VERIFY_S)
        else:
            add(what, value)
            add(f"  -> EXTRAPOLATED to 1,000,000, {label}", f"~{s * scale:.1f} s wall, ~{c * scale:.1f} s CPU",
                f"< {TARGET_VERIFY_S:g} s", s * scale < TARGET_VERIFY_S)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the parallel verify helpers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="SQLite chain length to verify (default 1e6)")
    parser.add_argument("--pg-records", type=int, default=1_000_000, help="PostgreSQL chain length (default 1e6)")
    parser.add_argument("--single", type=int, default=1000, help="single appends to time (default 1000)")
    parser.add_argument("--workers", type=int, default=None, help="verify processes (default: one per CPU, max 4)")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--pg-url", help="use this (empty) PostgreSQL database instead of starting a cluster")
    args = parser.parse_args()
    if min(args.records, args.pg_records, args.single) < 1:
        parser.error("--records, --pg-records and --single must be >= 1")

    load = os.getloadavg()[0]
    print(f"audit store benchmark: {os.cpu_count()} CPUs, load average {load:.1f} at start"
          + ("  (busy machine: timings are pessimistic)" if load > (os.cpu_count() or 1) * 0.5 else ""))
    print(f"  {'backend':<10} {'measurement':<56} {'value':<34} {'target':<10} met")
    rows: list = []
    with tempfile.TemporaryDirectory(prefix="vre-bench-audit-", dir="/var/tmp") as tmp:
        tmp = Path(tmp)
        bench_backend("sqlite", f"sqlite:///{tmp / 'vre.sqlite'}", tmp / "keys", args.records, args.single,
                      args.workers, rows)
        size = (tmp / "vre.sqlite").stat().st_size
        n = AuditStore(f"sqlite:///{tmp / 'vre.sqlite'}", tmp / "keys" / "sqlite" / "secrets").length()
        print(f"  sqlite database: {size / 1e6:,.0f} MB for {n:,} records ({size / n:,.0f} bytes/record with indexes)")
        if not args.skip_pg:
            pg = None
            if args.pg_url:
                url = args.pg_url
            elif (PG_BIN / "initdb").exists():
                pg = DurablePostgres()
                url = pg.url
            else:
                print("  postgresql: server binaries not installed; skipped (or pass --pg-url)")
                url = None
            try:
                if url:
                    bench_backend("postgresql", url, tmp / "keys", args.pg_records, max(1, args.single // 2),
                                  args.workers, rows)
            finally:
                if pg:
                    pg.stop()
    missed = [r for r in rows if r[4] == "NO"]
    print(f"load average at end {os.getloadavg()[0]:.1f}; targets missed: {len(missed)} "
          f"(judged on wall time; on a busy machine compare the CPU seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
