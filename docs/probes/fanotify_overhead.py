"""Probe: what observing dataset opens from the host costs a session reading many files.

Run as root: ``python3 docs/probes/fanotify_overhead.py [files] [KiB per file]`` (default 5,000 of 4 KiB;
a CT slice is about 512 KiB).
A sandbox (as in fanotify_probe.py) reads every file (open, read, close) with Python; the host
watches the sandbox's own dataset mount with FAN_OPEN in fd mode (readlink + fdinfo per event)
or in FID mode (FAN_REPORT_DFID_NAME), draining and aggregating per directory in a thread, as
the watcher would. Rounds alternate between no watch, fd mode and FID mode; medians printed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanotify_probe import (FAN_MARK_MOUNT, FAN_OPEN, FAN_REPORT_DIR_FID, FAN_REPORT_NAME, META, UID,  # noqa: E402
                            fdinfo_mnt_id, init, mark)

READER = ("import os, time, sys\n"
          "root = '/data/ds'\n"
          "names = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]\n"
          "sys.stdin.read(1)\n"  # released by the host once its mark (if any) is in place
          "t = time.perf_counter()\n"
          "for n in names:\n"
          "    with open(n, 'rb') as f: f.read()\n"
          "print(len(names), (time.perf_counter() - t) * 1000)\n")


def drainer(fd: int, mode: str, stop: threading.Event, seen: Counter) -> None:
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    while not stop.is_set():
        if not poll.poll(50):
            continue
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            off = 0
            while off + META.size <= len(data):
                event_len, _v, _r, meta_len, _mask, efd, _pid = META.unpack_from(data, off)
                if mode == "fd":
                    path = os.readlink(f"/proc/self/fd/{efd}")
                    fdinfo_mnt_id(efd)
                    os.close(efd)
                    seen[os.path.dirname(path)] += 1
                else:  # one directory handle + name per event: aggregate by the handle's bytes
                    seen[bytes(data[off + meta_len + 4: off + meta_len + 32])] += 1
                off += event_len


def run_once(ds: str, mode: str) -> tuple[float, int]:
    argv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--",
            "bwrap", "--unshare-user", "--uid", "1000", "--gid", "100", "--unshare-pid", "--unshare-ipc",
            "--new-session", "--cap-drop", "ALL", "--die-with-parent",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--ro-bind", ds, "/data/ds", "--remount-ro", "/", "--", "/usr/bin/python3", "-c", READER]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stop, seen, thread, fd = threading.Event(), Counter(), None, None
    try:
        if mode != "none":
            child = None
            for _ in range(200):  # the sandbox's pid 1, once it has its mounts
                kids = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
                if kids:
                    child = int(kids[0])
                    try:
                        if any(l.split()[4] == "/data/ds" for l in open(f"/proc/{child}/mountinfo")):
                            break
                    except (OSError, IndexError):
                        pass
                time.sleep(0.01)
            fd = init(0 if mode == "fd" else FAN_REPORT_DIR_FID | FAN_REPORT_NAME)
            mark(fd, FAN_MARK_MOUNT, FAN_OPEN, f"/proc/{child}/root/data/ds")
            thread = threading.Thread(target=drainer, args=(fd, mode, stop, seen), daemon=True)
            thread.start()
        out, _ = proc.communicate("x", timeout=120)
        n, ms = out.split()
        time.sleep(0.2)
    finally:
        stop.set()
        if thread:
            thread.join()
        if fd is not None:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return float(ms), sum(seen.values())


def main() -> None:
    nfiles = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    kib = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    base = tempfile.mkdtemp(prefix="vre-fanover-")
    os.chmod(base, 0o755)
    ds = os.path.join(base, "ds")
    try:
        for s in range(nfiles // 100):
            d = os.path.join(ds, f"series{s:03}")
            os.makedirs(d)
            for i in range(100):
                with open(os.path.join(d, f"{i:03}.dcm"), "wb") as f:
                    f.write(os.urandom(kib * 1024))
        subprocess.run(["chmod", "-R", "a+rX", ds], check=True)
        results = {"none": [], "fd": [], "fid": []}
        events = {}
        for _ in range(4):
            for mode in results:
                ms, n = run_once(ds, mode)
                results[mode].append(ms)
                events[mode] = n
        base_ms = statistics.median(results["none"])
        for mode, xs in results.items():
            m = statistics.median(xs)
            print(f"{mode:5s} read {nfiles} files of {kib} KiB: median {m:.0f} ms ({m / base_ms:.2f}x), runs "
                  f"{[round(x) for x in xs]}, events seen {events[mode]}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
