"""Benchmark the DICOM header index against a bare pydicom loop, on a synthetic dataset.

    .venv/bin/python bench/index.py [--files 2000] [--size 256] [--workers N] [--repeat 3]

Images are 256x256 by default to keep the temp dir small: header read cost barely
depends on pixel size, since neither path reads pixel data. All files are read once
first (after a sync), so every measurement runs on a warm page cache; each one is
repeated and the best time kept, as a shared machine is noisy. Prints timings;
asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from vre.catalog import index_dataset  # noqa: E402
from vre.demo.synth import make_cohort  # noqa: E402

SLICES_PER_SERIES = 100


def best_of(repeat: int, run):
    """(fastest seconds, last result) over ``repeat`` runs."""
    best, result = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="number of DICOM files (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="image rows/columns (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="index workers (default: all CPUs)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept (default 3)")
    args = parser.parse_args()
    if args.files < 1 or args.size < 32 or args.repeat < 1:
        parser.error("--files and --repeat must be >= 1, --size >= 32")

    with tempfile.TemporaryDirectory(prefix="vre-bench-") as tmp:
        data, index = Path(tmp) / "data", Path(tmp) / "index.sqlite"
        patients = math.ceil(args.files / SLICES_PER_SERIES)
        slices = math.ceil(args.files / patients)
        t = time.perf_counter()
        make_cohort("lung-ct", data, patients=patients, slices=slices, size=args.size)
        generated = time.perf_counter() - t
        files = sorted(p for p in data.rglob("*.dcm"))
        n = len(files)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"dataset: {n} CT files, {args.size}x{args.size}, {megabytes:.0f} MB, "
              f"written in {generated:.1f} s ({n / generated:.0f} files/s); CPUs: {os.cpu_count()}")  # fmt: skip

        os.sync()  # flush the freshly written files, so writeback does not compete with the timings
        for p in files:  # warm the page cache for every measurement below
            p.read_bytes()

        def bare_loop() -> None:
            for p in files:
                pydicom.dcmread(p, stop_before_pixels=True)

        def cold_index():
            index.unlink(missing_ok=True)
            return index_dataset(data, index, workers=args.workers)

        bare, _ = best_of(args.repeat, bare_loop)
        cold_s, cold = best_of(args.repeat, cold_index)
        again_s, again = best_of(args.repeat, lambda: index_dataset(data, index, workers=args.workers))

    rows = [
        ("(a) bare dcmread(stop_before_pixels), 1 process", bare, n),
        ("(b) index_dataset, cold", cold_s, cold.files_indexed),
        ("(c) index_dataset, unchanged (incremental)", again_s, again.files_indexed),
    ]
    print(f"\nbest of {args.repeat}; index workers: {args.workers or os.cpu_count()}")
    print(f"{'measurement':<50} {'seconds':>8} {'files read':>10} {'files/s':>9}")
    for name, seconds, read in rows:
        print(f"{name:<50} {seconds:8.3f} {read:10d} {n / seconds:9.0f}")
    print(f"\nratio (b)/(a) throughput: {bare / cold_s:.2f}  (target >= 0.8)")
    print(f"re-index of unchanged dataset: {again_s * 1000:.0f} ms for {n} files (target: well under 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
