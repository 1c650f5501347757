"""Benchmark a reader that opens dataset files faster than hostview records them, with and without
hostview's backpressure (freezing that reader until the queue is read empty).

    sudo .venv/bin/python bench/hostview_flood.py [--files 60000] [--seconds 15]

A reader in a cgroup of its own (as a session's) opens ``--files`` distinct empty files through its
own read-only bind of them, in a loop, for ``--seconds``; the kernel queues an event per open
(fanotify's unlimited queue, as hostview's). The bench's watcher is hostview's (``Watcher``, at
nice 10, reading as hostview's loop does: batches while busy, every 50 ms otherwise). Two modes in
the same run: "unbounded" (freezing off: what the queue costs when the reader outruns the watcher)
and "backpressure" (the default: the reader is frozen after 2 s behind). Prints, per mode, the
reader's opens a second, the watcher's, the peak of the kernel's slab memory above its start
(the queue), the pauses and whether every open was counted; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from vre.backends.cgroups import SessionCgroup  # noqa: E402
from vre.hostview.registry import Marked, Registry  # noqa: E402
from vre.hostview.service import BUSY, NICE, POLL  # noqa: E402
from vre.hostview.watcher import ALL, Watcher  # noqa: E402

READER = """import os, sys, time
names = [os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])]
opens, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for n in names:
        os.close(os.open(n, os.O_RDONLY))
    opens += len(names)
print(opens)
"""


def slab_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(fields["Slab"].split()[0]) / 1024


def run(base: Path, mode: str, seconds: float) -> dict:
    data, target = base / "dataset", base / f"inside-{mode}" / "data" / "ct"
    target.mkdir(parents=True)
    cgroup = SessionCgroup(f"flood-{mode}-{os.getpid()}", parent="vre-bench")
    cgroup.create(cpu=1, mem_mb=1024, pids_max=16)
    reader = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                               f"mount --bind {data} {target} && mount -o remount,bind,ro {target} && "
                               f"exec {sys.executable} {base / 'reader.py'} {target} {seconds}"],
                              preexec_fn=lambda: (cgroup.join(), os.setpriority(os.PRIO_PROCESS, 0, 0)),
                              stdout=subprocess.PIPE, text=True)
    watcher = Watcher(Registry(base / f"reg-{mode}"))
    if mode == "unbounded":
        watcher.behind_s = float("inf")
    try:
        while not Path(f"/proc/{reader.pid}/cmdline").read_bytes().startswith(sys.executable.encode()):
            time.sleep(0.01)
        watcher.mark(Marked(session=mode, user="bench", project="bench", pid=reader.pid, pid_start=0,
                            datasets=[{"slug": "ct", "target": str(target)}]))
        start_slab, peak, counted, t0 = slab_mib(), 0.0, 0, time.monotonic()
        while reader.poll() is None:
            n = watcher.drain()
            counted += n
            peak = max(peak, slab_mib() - start_slab)
            if n < BUSY:
                time.sleep(POLL)
        opens = int(reader.stdout.read())
        t1 = time.monotonic()
        while (n := watcher.drain(ALL)):
            counted += n
        t2 = time.monotonic()
        pauses = [e for e in watcher.outbox if e.action == "dataset.read_pause"]
        return {"mode": mode, "opens": opens, "counted": counted, "reader_per_s": round(opens / (t1 - t0)),
                "watcher_per_s": round(counted / (t2 - t0)), "drain_after_s": round(t2 - t1, 1),
                "peak_queue_mib": round(peak, 1), "pauses": len(pauses),
                "paused_s": round(sum(e.details["seconds"] for e in pauses), 1)}
    finally:
        if reader.poll() is None:
            reader.kill()
        reader.wait()
        watcher.stop()
        watcher.group.close()
        cgroup.kill_all(1)
        cgroup.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60000, help="distinct files the reader cycles through")
    parser.add_argument("--seconds", type=float, default=15, help="how long the reader reads, per mode")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (fanotify, cgroups, mount namespaces)")
    base = Path(tempfile.mkdtemp(prefix="vre-benchflood-"))
    try:
        (base / "dataset").mkdir()
        for i in range(args.files):
            (base / "dataset" / f"{i}.dcm").touch()
        (base / "reader.py").write_text(READER)
        os.setpriority(os.PRIO_PROCESS, 0, NICE)   # as hostview; the reader is started at nice 0 below
        results = []
        for mode in ("unbounded", "backpressure"):
            r = run(base, mode, args.seconds)
            results.append(r)
            print(f"{mode:12s} reader {r['reader_per_s']:>7,} opens/s, watcher {r['watcher_per_s']:>7,}/s; "
                  f"queue peak {r['peak_queue_mib']:6.1f} MiB of kernel memory; {r['pauses']} pauses "
                  f"({r['paused_s']} s); counted {r['counted']:,} of {r['opens']:,} opens; "
                  f"{r['drain_after_s']} s to drain after the reader stopped")
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(json.dumps(results))
    finally:
        subprocess.run(["rm", "-rf", str(base)])
        for d in [*Path("/sys/fs/cgroup").glob("*/vre-bench"), *Path("/sys/fs/cgroup").glob("vre-bench")]:
            d.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
