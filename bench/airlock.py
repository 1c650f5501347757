"""Airlock: submit-to-frozen time and release-download throughput against the floor of copying and
hashing the same files with ``cp`` and ``sha256sum`` in the same run, and the VRE service's memory.

    sudo .venv/bin/python bench/airlock.py [--small 1000] [--small-kb 4] [--big-mb 200]

Starts a real hub (``vre up``, small demo, SQLite, its own temp dir and ports), widens bob's project
rules to fit the request (1 review), and writes ``--small`` files of ``--small-kb`` KiB in a folder
and one ``--big-mb`` MB file into bob's home on the host. Then:

1. **Floor:** ``cp -r`` of the folder and the big file to a scratch directory, then ``sha256sum``
   of every copy (after one warm read, as the airlock gets them from the page cache too).
2. **Submit-to-frozen:** ``POST /services/vre/api/airlock/requests`` naming the folder and the file
   (the folder is expanded), then ``POST .../submit``, which resolves every file in bob's mount
   table, copies it in 1 MiB chunks with SHA-256, fsyncs each copy, compares it with the dataset
   files of equal size and commits: timed from the first POST to the submit's answer.
3. **Download:** a checker approves and releases (CLI), bob downloads the zip
   (``GET .../download``, ZIP_STORED streamed through the service) and reads it to the end.

Throughout, the ``vre`` service's resident memory is sampled every 20 ms: the peak during the
submit and the download against the idle level shows that memory stays flat (nothing is read
whole). Prints a table with the ratios floor/airlock (target: >= 0.5); asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Hub, processes  # noqa: E402

PROJECT = "prostate-ai"


def service_pid(hub: Hub) -> int | None:
    """The hub's ``vre`` service process (its command line and this hub's state directory)."""
    needle = str(hub.state).encode()
    return next((pid for pid, cmd, env in processes() if b"vre.api.service" in cmd and needle in env), None)


class RSS:
    """Peak resident memory of a process, sampled in a thread."""

    def __init__(self, pid: int | None):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def now(self) -> int:
        if not self.pid:
            return 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.peak = self.now()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except OSError:
                return
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def write_inputs(home: Path, n: int, small_kb: int, big_mb: int) -> tuple[Path, Path, int]:
    folder = home / "bench" / "small"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"part-{i:05d}.txt").write_bytes(os.urandom(small_kb * 1024))
    big = home / "bench" / "big.txt"
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(big_mb):
            f.write(block[i % 997:] + block[:i % 997])  # no two blocks equal, cheap
    total = n * small_kb * 1024 + big_mb * (1 << 20)
    return folder, big, total


def floor(folder: Path, big: Path) -> float:
    """cp + sha256sum of the same files (warm page cache)."""
    for p in [*folder.iterdir(), big]:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    scratch = Path(tempfile.mkdtemp(prefix="airlock-floor-", dir=folder.parent))
    try:
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", str(folder), str(big), str(scratch)], check=True)
        files = [str(p) for p in sorted(scratch.rglob("*")) if p.is_file()]
        for i in range(0, len(files), 500):
            subprocess.run(["sha256sum", *files[i:i + 500]], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch)


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=1000, help="small files (default 1000)")
    ap.add_argument("--small-kb", type=int, default=4, help="size of each small file in KiB (default 4)")
    ap.add_argument("--big-mb", type=int, default=200, help="size of the large file in MiB (default 200)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/airlock.py starts a hub: run it as root")
    hub = Hub("bench-airlock", None)
    try:
        hub.start()
        limit = f"{args.big_mb + args.small * args.small_kb // 1024 + 64}M"
        hub.vre("project", "set-airlock-rules", PROJECT, "--reviews", "1", "--max-files", str(args.small + 10),
                "--max-file", limit, "--max-request", limit, "--extensions", "txt")
        pw = "bench-checker-password"
        hub.vre("user", "add", "benchcheck", "--password-stdin", input=pw + "\n")
        hub.vre("user", "set-checker", "benchcheck", "on")
        home = hub.state / "projects" / PROJECT / "homes" / "bob"
        folder, big, total = write_inputs(home, args.small, args.small_kb, args.big_mb)
        base = floor(folder, big)
        bob = hub.client("bob")
        pid = service_pid(hub)
        idle = RSS(pid).now()

        with RSS(pid) as submit_rss:
            t0 = time.perf_counter()
            r = bob.vre_api("POST", "/airlock/requests", timeout=600, json={
                "project": PROJECT, "title": "bench", "files": ["bench/small", "bench/big.txt"]})
            assert r.status_code == 201, r.text
            rid = r.json()["id"]
            r = bob.vre_api("POST", f"/airlock/requests/{rid}/submit", timeout=3600)
            submit_s = time.perf_counter() - t0
            assert r.status_code == 200, r.text
        hub.vre("airlock", "review", str(rid), "--as", "benchcheck", "--decision", "approve")
        hub.vre("airlock", "release", str(rid), "--as", "benchcheck")

        with RSS(pid) as download_rss:
            t0 = time.perf_counter()
            got, h = 0, hashlib.sha256()
            with bob.vre_api("GET", f"/airlock/requests/{rid}/download", stream=True, timeout=3600) as resp:
                assert resp.status_code == 200, resp.text
                for chunk in resp.iter_content(1 << 20):
                    got += len(chunk)
                    h.update(chunk)
            download_s = time.perf_counter() - t0

        files = args.small + 1
        print(f"\nairlock bench: {files} files ({args.small} x {args.small_kb} KiB + 1 x {args.big_mb} MiB), "
              f"{mb(total)} in all\n")
        rows = [
            ("floor: cp + sha256sum", base, total),
            ("submit-to-frozen (create + submit)", submit_s, total),
            ("release download (zip, streamed)", download_s, got),
        ]
        print(f"{'':38s} {'seconds':>9s} {'MiB/s':>9s} {'floor/this':>11s}")
        for name, secs, size in rows:
            print(f"{name:38s} {secs:9.2f} {size / 2**20 / secs:9.1f} {base / secs:11.2f}")
        print(f"\nvre service RSS: idle {mb(idle)}, peak during submit {mb(submit_rss.peak)}, "
              f"peak during download {mb(download_rss.peak)} (files total {mb(total)})")
        print("target: floor/this >= 0.5 for submit and download; RSS flat (independent of the file sizes)")
        return 0
    finally:
        hub.teardown()


if __name__ == "__main__":
    sys.exit(main())
