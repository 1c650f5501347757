"""Benchmark what recording dataset reads from the host costs a session that reads many files.

    sudo .venv/bin/python bench/hostview.py [--files 10000] [--size 128] [--rounds 6]

A synthetic CT cohort (series of 100 DICOM slices, ``--size`` pixels square) is read file by file
(open, read, close; Python) in a sandbox rendered by ``sandbox_argv`` exactly as a session's
(setpriv, user and pid namespaces, the project's island, the dataset read-only), held at the
launch gate like a session. Rounds alternate: released at once ("bare"), or released after a real
``vre-hostview`` (``python -m vre.hostview``, its own state and SQLite audit store) marked the
sandbox's dataset mount ("marked"); after each marked round hostview must have counted every
open. One uncounted round first warms the page cache. Prints medians of the reader's wall clock
and CPU time, their ratios (target <= 1.1x) and hostview's own CPU time per open; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from vre import db as vdb  # noqa: E402
from vre.audit import open_store  # noqa: E402
from vre.backends import gate  # noqa: E402
from vre.backends.bwrap import _child_pid, sandbox_argv  # noqa: E402
from vre.demo.synth import make_cohort  # noqa: E402
from vre.hostview import client  # noqa: E402
from vre.hostview.service import NICE  # noqa: E402
from vre.plan import Mount, SessionPlan  # noqa: E402
from vre.settings import Settings  # noqa: E402

UID = 277777
TARGET = 1.1
READER = ("import os, time\n"
          "names = sorted(os.path.join(d, f) for d, _, fs in os.walk('/data/ct') for f in fs)\n"
          "t, c = time.perf_counter(), time.process_time()\n"
          "for n in names:\n"
          "    with open(n, 'rb') as f: f.read()\n"
          "print(len(names), (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)\n")


async def read_round(settings: Settings, plan: SessionPlan, marked: bool, n: int) -> tuple[float, float]:
    """Milliseconds the sandbox took to read every file: wall clock, and its own CPU time (on a
    shared machine the steadier figure: other load changes the first, not the second)."""
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    argv = sandbox_argv(settings, plan, gate_fds=(info_w, block_r)) + ["/usr/bin/python3", "-c", READER]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, pass_fds=(info_w, block_r), cwd="/")
    os.close(info_w)
    os.close(block_r)
    try:
        child = await asyncio.to_thread(_child_pid, info_r, proc)
        session = f"bench-{time.monotonic_ns()}"
        if marked:
            await gate.mark_run(settings, plan, child, session)
        else:
            await gate.wait_for_mounts(child, ["/data/ct"])
        os.write(block_w, b"1")
        out, _ = await asyncio.to_thread(proc.communicate, timeout=600)
    finally:
        os.close(info_r)
        os.close(block_w)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files, ms, cpu_ms = out.split()
    if marked:  # every open is in the store (a round may span a minute: two summaries)
        client.unmark(settings, session)
        store, stored = open_store(settings), 0
        for _ in range(50):
            stored = sum(e["details"]["opens"] for e in store.query(action="dataset.read_summary", session=session))
            if stored >= int(files):
                break
            await asyncio.sleep(0.1)
        if stored != int(files):
            print(f"  warning: hostview recorded {stored} opens of {files}", file=sys.stderr)
    return float(ms), float(cpu_ms)


def cpu_ns(pid: int) -> int:
    """CPU time a process has used (ns)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000, help="DICOM files to read (default 10000)")
    parser.add_argument("--size", type=int, default=128, help="image rows/columns (default 128)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per mode, interleaved (default 6)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (sandboxes, fanotify)")
    base = Path(tempfile.mkdtemp(prefix="vre-benchhv-"))
    os.chmod(base, 0o755)
    instance = "bhv" + base.name[-6:].lower().replace("_", "x")
    settings = Settings(state_dir=base / "state", run_dir=base / "run", instance=instance)
    settings.state_dir.mkdir()
    network = f"{instance}-bench"
    hostview = None
    try:
        t = time.perf_counter()
        patients = math.ceil(args.files / 100)
        make_cohort("lung-ct", base / "ct", patients=patients, slices=math.ceil(args.files / patients), size=args.size)
        files = sum(len(fs) for _, _, fs in os.walk(base / "ct"))
        size_kib = sum(p.stat().st_size for p in (base / "ct").rglob("*")) / files / 1024
        print(f"dataset: {files} files in series of ~100, {size_kib:.0f} KiB each "
              f"(made in {time.perf_counter() - t:.0f} s)")
        subprocess.run(["chmod", "-R", "a+rX", str(base / "ct")], check=True)
        home = base / "home"
        home.mkdir()
        os.chown(home, UID, UID)
        subprocess.run(["ip", "netns", "add", network], check=True)
        plan = SessionPlan(user="bench", project="bench", profile="bench", role="session", session_id="bench",
                           uid=UID, gid=UID, cpu=1, mem_mb=1024, gpus=0, network=network, datasets=("ct",),
                           mounts=(Mount(base / "ct", "/data/ct", True, "dataset"),
                                   Mount(home, "/home/jovyan", False, "home")))
        vdb.upgrade(settings.vre_db_url)
        env = {**os.environ, "VRE_STATE_DIR": str(settings.state_dir), "VRE_RUN_DIR": str(settings.run_dir),
               "VRE_INSTANCE": instance}
        hostview = subprocess.Popen([sys.executable, "-m", "vre.hostview"], env=env, stderr=subprocess.DEVNULL)
        times: dict[str, list[float]] = {"bare": [], "marked": []}
        cpu: dict[str, list[float]] = {"bare": [], "marked": []}
        hostview_us: list[float] = []
        asyncio.run(read_round(settings, plan, True, files))  # warm the page cache (and hostview)
        for i in range(args.rounds):
            order = ("bare", "marked") if i % 2 == 0 else ("marked", "bare")  # ABBA
            for mode in order:
                before = cpu_ns(hostview.pid)
                wall, used = asyncio.run(read_round(settings, plan, mode == "marked", files))
                times[mode].append(wall)
                cpu[mode].append(used)
                if mode == "marked":
                    hostview_us.append((cpu_ns(hostview.pid) - before) / 1000 / files)
        figures = {"files": files, "kib": round(size_kib)}
        for what, data in (("wall", times), ("cpu", cpu)):
            for mode, xs in data.items():
                m = statistics.median(xs)
                figures[f"{what}_{mode}_ms"] = round(m, 1)
                print(f"{mode:7s} {what:4s} median {m:7.1f} ms ({m * 1000 / files:.1f} us/file)  "
                      f"runs {[round(x) for x in xs]}")
            ratio = statistics.median(data["marked"]) / statistics.median(data["bare"])
            figures[f"{what}_ratio"] = round(ratio, 3)
            print(f"  marked / bare ({what}): {ratio:.3f}x (target <= {TARGET}x: "
                  f"{'met' if ratio <= TARGET else 'NOT met'})")
        figures["hostview_cpu_us_per_open"] = round(statistics.median(hostview_us), 1)
        print(f"hostview's own CPU per open (nice {NICE}): {figures['hostview_cpu_us_per_open']} us; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(json.dumps(figures))
    finally:
        if hostview is not None:
            hostview.terminate()
            hostview.wait()
        subprocess.run(["ip", "netns", "del", network], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
