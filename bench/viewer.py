"""DICOM viewer throughput: the session's viewer API and the Lab viewer in Chromium, on a big CT series.

    .venv/bin/python bench/viewer.py [--slices 300] [--size 512] [--no-browser] [--keep]

Writes a synthetic 512x512x300 CT series (vre.demo.synth) into a temp dir, indexes it, and starts a
real ``jupyter lab`` on 127.0.0.1 with the vre_session server extension (the working copy) and a
fake session manifest, as the unit tests do. Then, in the same run:

(a) server: time to first slice (metadata + slice 0, what the viewer asks first) and slices/s
    through ``vre/api/.../slices/<i>`` (one at a time, and 3 in flight as the viewer's loader
    does), the first MPR plane (decodes the volume) and MPR planes/s after it; against a bare
    single-process ``pydicom.dcmread`` + ``pixel_array`` + rescale loop over the same files;
(b) browser (Debian's Chromium, headless, as the browser tests): time from "Open" in the dataset
    browser to the first painted slice, then the frame time while stepping through every slice
    (one key press per frame: input -> painted, and the render part of it: LUT + putImageData +
    drawImage), cold (right after opening, the prefetch still running) and warm (all cached).

Prints a table; asserts nothing. Needs the lab extension built: bash extensions/build-labextension.sh
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hub"))

from vre.catalog.index import index_dataset  # noqa: E402
from vre.catalog.metadata import build_record, summarize  # noqa: E402
from vre.demo import synth  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "bench-token"
SLUG = "bench-ct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))]


class Lab:
    """``jupyter lab`` with the vre_session extension, a temp root and a fake manifest."""

    def __init__(self, base: Path, data: Path, catalog: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base.mkdir(parents=True, exist_ok=True)
        home = base / "home"
        home.mkdir(exist_ok=True)
        manifest = {"user": "bench", "project": "bench",
                    "datasets": [{"slug": SLUG, "path": str(data), "catalog": str(catalog)}]}
        (base / "session.json").write_text(json.dumps(manifest))
        env = {**os.environ, "VRE_SESSION": str(base / "session.json"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "extensions"), os.environ.get("PYTHONPATH", "")]),
               "JUPYTER_CONFIG_DIR": str(base / "jconfig"), "JUPYTER_RUNTIME_DIR": str(base / "jruntime")}
        for var in ("VRE_AUDIT_URL", "VRE_AUDIT_SPOOL", "VRE_AUDIT_TOKEN"):
            env.pop(var, None)
        self.log_path = base / "lab.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={home}", f"--ServerApp.port={self.port}",
                 "--ServerApp.ip=127.0.0.1", "--ServerApp.open_browser=False", f"--IdentityProvider.token={TOKEN}",
                 "--allow-root", '--ServerApp.jpserver_extensions={"vre_session": True}'],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(base), start_new_session=True)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {TOKEN}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"jupyter lab exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self.http.get(f"{self.url}/vre/api/", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"jupyter lab did not start:\n{self.log_path.read_text()[-3000:]}")

    def get(self, path: str, **kw) -> requests.Response:
        r = self.http.get(f"{self.url}/vre/api{path}", timeout=120, **kw)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
        return r

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_lab(base: Path, data: Path, catalog: Path) -> Lab:
    lab = Lab(base, data, catalog)
    # the decoder workers start in the background with the server: let them (not a slice's time)
    warm = synth.make_ct_series(base / "home" / "warmup", patient_id="WARM", patient_name="WARM", sex="O", age=50,
                                rows=32, cols=32, slices=1)
    lab.get("/file/slices/0", params={"path": str(next(warm.glob("*.dcm")))})
    return lab


def compressed_variants(files: list[Path], root: Path, count: int) -> dict[str, tuple[str, list[Path]]]:
    """The first ``count`` slices re-encoded, each as its own series: RLE, JPEG 2000 lossless and
    HTJ2K (the same Part 1 codestream under the HTJ2K transfer syntax: no HTJ2K encoder is
    installed, HTJ2K decoders read it), and a JPEG-LS series made of pydicom's JPEG-LS sample
    (64x64 MR; no JPEG-LS encoder is installed) at ``count`` positions. By transfer syntax keyword:
    (its name, the files)."""
    from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

    out = {}
    for ts in (RLELossless, JPEG2000Lossless, HTJ2KLossless):
        series_uid, made = generate_uid(), []
        folder = root / ts.keyword
        folder.mkdir(parents=True)
        for f in files[:count]:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
            ds.SeriesDescription = f"bench {ts.keyword}"
            ds.compress(JPEG2000Lossless if ts == HTJ2KLossless else ts)
            if ts == HTJ2KLossless:
                ds.file_meta.TransferSyntaxUID = HTJ2KLossless
            ds.save_as(folder / f.name)
            made.append(folder / f.name)
        out[ts.keyword] = (ts.name, made)
    sample = Path(pydicom.data.__file__).parent / "test_files" / "MR_small_jpeg_ls_lossless.dcm"
    main = pydicom.dcmread(files[0], stop_before_pixels=True)
    series_uid, made = generate_uid(), []
    folder = root / JPEGLSLossless.keyword
    folder.mkdir(parents=True)
    for k in range(count):
        ds = pydicom.dcmread(sample)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series_uid, generate_uid(), k + 1
        ds.PatientID, ds.SeriesDescription = main.PatientID, f"bench {JPEGLSLossless.keyword}"
        ds.StudyInstanceUID, ds.StudyDate = main.StudyInstanceUID, main.StudyDate  # one study: the CT first
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, float(k)]
        ds.save_as(folder / f"IMG{k:04d}.dcm")
        made.append(folder / f"IMG{k:04d}.dcm")
    out[JPEGLSLossless.keyword] = (f"{JPEGLSLossless.name} (64x64 MR)", made)
    return out


def bare_decode_rate(files: list[Path]) -> float:
    """Slices/s of pydicom's own decode (the same plugins the viewer's workers call), one process."""
    t = time.perf_counter()
    for f in files:
        ds = pydicom.dcmread(f)
        values = ds.pixel_array
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        (values * slope + intercept).astype(np.int16)
    return len(files) / (time.perf_counter() - t)


def bare_pydicom(files: list[Path]) -> dict:
    """A single-process pydicom loop over the same files: dcmread + pixel_array + rescale."""
    def one(path: Path) -> np.ndarray:
        ds = pydicom.dcmread(path)
        values = ds.pixel_array
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        return (values * slope + intercept).astype(np.int16)

    out = {}
    t = time.perf_counter()  # what the viewer's first slice needs: every header, the order, one image
    headers = [(pydicom.dcmread(f, stop_before_pixels=True), f) for f in files]
    headers.sort(key=lambda h: float(h[0].ImagePositionPatient[2]))
    one(headers[0][1])
    out["first_sorted_s"] = time.perf_counter() - t
    t = time.perf_counter()
    one(files[0])
    out["first_file_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for f in files:
        one(f)
    out["per_s"] = len(files) / (time.perf_counter() - t)
    return out


def server_side(lab: Lab, uid: str, n: int) -> dict:
    base = f"/datasets/{SLUG}/series/{uid}"
    out = {}
    t = time.perf_counter()
    meta = lab.get(base).json()
    out["meta_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lab.get(f"{base}/slices/0")
    out["slice0_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(1, n):
        lab.get(f"{base}/slices/{i}")
    out["seq_per_s"] = (n - 1) / (time.perf_counter() - t)

    def fetch(i: int) -> int:
        return len(requests.get(f"{lab.url}/vre/api{base}/slices/{i}", headers=lab.http.headers, timeout=120).content)

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(fetch, range(n)))
    out["par3_per_s"] = n / (time.perf_counter() - t)
    # the stream decodes afresh only in a fresh server (the slices above are cached now): see stream_side
    planes = meta["mpr"]["planes"] if meta["mpr"]["available"] else None
    if planes:
        t = time.perf_counter()
        lab.get(f"{base}/mpr/coronal/{planes['coronal']['count'] // 2}")
        out["mpr_first_s"] = time.perf_counter() - t
        count = 40
        t = time.perf_counter()
        for i in range(count):
            lab.get(f"{base}/mpr/{('coronal', 'sagittal')[i % 2]}/{(i * 11) % planes['coronal']['count']}")
        out["mpr_per_s"] = count / (time.perf_counter() - t)
    out["meta"] = meta
    return out


def read_stream(response, want: int, t: float) -> tuple[int, float]:
    """Records of a ``stream`` response read as they arrive: (records, seconds from ``t`` to the first)."""
    first, got, buf = None, 0, bytearray()
    for chunk in response.iter_content(1 << 20):
        buf += chunk
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "little")
            if len(buf) < 4 + n:
                break
            size = 4 + n + json.loads(bytes(buf[4:4 + n])).get("nbytes", 0)
            if len(buf) < size:
                break
            del buf[:size]
            got += 1
            first = first if first is not None else time.perf_counter() - t
    if got != want:
        raise SystemExit(f"the stream gave {got} slices, not {want}")
    return got, first


def stream_side(lab: Lab, uid: str, n: int) -> dict:
    """A fresh server: metadata, then the whole series as one stream, middle slice first (what the
    Lab viewer asks at open), then the first MPR plane (cut from the slices the stream decoded)."""
    base = f"/datasets/{SLUG}/series/{uid}"
    out = {}
    t = time.perf_counter()
    meta = lab.get(base).json()
    out["meta_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with lab.http.get(f"{lab.url}/vre/api{base}/stream", params={"start": n // 2}, stream=True, timeout=300) as r:
        if r.status_code != 200:
            raise SystemExit(f"stream: {r.status_code} {r.text[:300]}")
        _, first = read_stream(r, n, t)
    out["stream_s"] = time.perf_counter() - t
    out["first_s"] = out["meta_s"] + first
    out["stream_per_s"] = n / out["stream_s"]
    if meta["mpr"]["available"]:
        t = time.perf_counter()
        lab.get(f"{base}/mpr/coronal/{meta['mpr']['planes']['coronal']['count'] // 2}")
        out["mpr_first_s"] = time.perf_counter() - t
    return out


STEP_JS = """async (n) => {
  const v = document.querySelector('.vre-Viewer').__vreViewer;
  const vp = v.viewports[0];
  const frames = v.stats.frames;
  const waitFor = async (target) => {
    const t0 = performance.now();
    while (!(vp.image && vp.image.index === target && frames.length && frames[frames.length - 1].index === target)) {
      await new Promise(r => requestAnimationFrame(r));
      if (performance.now() - t0 > 20000) { return false; }
    }
    return true;
  };
  v.node.focus();
  v.node.dispatchEvent(new KeyboardEvent('keydown', {key: 'Home', bubbles: true, cancelable: true}));
  await waitFor(0);
  const out = [];
  const t0 = performance.now();
  for (let i = 1; i < n; i++) {
    v.node.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowDown', bubbles: true, cancelable: true}));
    if (!await waitFor(i)) { break; }
    const f = frames[frames.length - 1];
    out.push([f.painted - f.requested, f.renderMs]);
  }
  return {steps: out, seconds: (performance.now() - t0) / 1000};
}"""


def browser_side(lab: Lab, n: int) -> dict:
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else route.abort())
            page.goto(f"{lab.url}/lab?token={TOKEN}&reset")
            page.wait_for_selector('.jp-SideBar [data-id="vre-datasets"]', timeout=120_000)
            if not page.locator(".vre-Browser").is_visible():
                page.locator('.jp-SideBar [data-id="vre-datasets"]').first.click()
            page.wait_for_selector(".vre-SeriesRow[data-series-uid] .vre-act-open", timeout=60_000)
            page.evaluate("() => { window.__vreClick = performance.now(); document.querySelector('.vre-act-open').click(); }")
            page.wait_for_selector('.vre-Viewer[data-painted="true"]', timeout=120_000)
            times = page.evaluate("""() => { const s = document.querySelector('.vre-Viewer').__vreViewer.stats;
                return {meta: s.metaLoaded - window.__vreClick, paint: s.firstPaint - window.__vreClick}; }""")
            out["open_meta_ms"], out["first_paint_ms"] = times["meta"], times["paint"]
            cold = page.evaluate(STEP_JS, n)
            # warm: wait until the prefetch has everything, then again
            page.wait_for_function(f"() => document.querySelector('.vre-Viewer').__vreViewer.loader.cachedCount >= {n}",
                                   timeout=300_000)
            warm = page.evaluate(STEP_JS, n)
            out["cold"], out["warm"] = cold, warm
        finally:
            browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--no-browser", action="store_true", help="server side only")
    ap.add_argument("--compressed", type=int, default=100, metavar="N",
                    help="slices of each compressed series (RLE, JPEG 2000, HTJ2K, JPEG-LS); 0: none")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (series, index, lab log)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vre-bench-viewer-"))
    lab = None
    try:
        data, catalog = base / "data" / SLUG, base / "catalog" / SLUG
        t = time.perf_counter()
        series = synth.make_ct_series(data / "BENCH-0001" / "CT", patient_id="BENCH-0001", patient_name="BENCH",
                                      sex="F", age=64, rows=args.size, cols=args.size, slices=args.slices,
                                      thickness=1.0, seed=7)
        made = time.perf_counter() - t
        files = sorted(series.glob("*.dcm"))
        t = time.perf_counter()
        variants = compressed_variants(files, data / "BENCH-0001" / "compressed", args.compressed) \
            if args.compressed else {}
        if variants:
            print(f"compressed series ({args.compressed} slices each) written in {time.perf_counter() - t:.1f} s",
                  flush=True)
        catalog.mkdir(parents=True)
        index_dataset(data, catalog / "index.sqlite")
        (catalog / "record.json").write_text(json.dumps(build_record({"title": "bench CT"}, summarize(catalog / "index.sqlite"))))
        files = sorted(series.glob("*.dcm"))
        print(f"series: {len(files)} x {args.size}x{args.size} CT written in {made:.1f} s ({base})", flush=True)

        bare = bare_pydicom(files)
        rate_bare = bare["per_s"]
        lab = start_lab(base / "lab-a", data, catalog)
        items = lab.get(f"/datasets/{SLUG}/series", params={"limit": 100}).json()["items"]
        uid = next(i["series_uid"] for i in items if not (i["description"] or "").startswith("bench "))
        by_description = {i["description"]: i["series_uid"] for i in items}
        srv = server_side(lab, uid, len(files))
        n = len(files)
        lab.stop()  # a fresh server: nothing decoded yet
        lab = start_lab(base / "lab-s", data, catalog)
        st = stream_side(lab, uid, n)
        rows = [
            ("time to first slice (metadata + slice 0)", f"{(srv['meta_s'] + srv['slice0_s']) * 1000:.0f} ms",
             f"{bare['first_sorted_s'] * 1000:.0f} ms (all headers, sort, 1 image)"),
            ("  (bare: one file read + decoded)", "-", f"{bare['first_file_s'] * 1000:.0f} ms"),
            ("  of which: metadata (headers of all files)", f"{srv['meta_s'] * 1000:.0f} ms", "-"),
            ("  of which: slice 0", f"{srv['slice0_s'] * 1000:.0f} ms", "-"),
            ("slices/s, one request at a time", f"{srv['seq_per_s']:.0f}", f"{rate_bare:.0f}"),
            ("slices/s, 3 in flight (the viewer's loader)", f"{srv['par3_per_s']:.0f}", f"{rate_bare:.0f}"),
        ]
        if "mpr_first_s" in srv:
            rows += [("first MPR plane (decodes the volume)", f"{srv['mpr_first_s'] * 1000:.0f} ms", "-"),
                     ("MPR planes/s after that", f"{srv['mpr_per_s']:.0f}", "-")]
        rows += [("fresh server: metadata (from the index)", f"{st['meta_s'] * 1000:.0f} ms", "-"),
                 ("  metadata + first slice of the stream", f"{st['first_s'] * 1000:.0f} ms",
                  f"{bare['first_sorted_s'] * 1000:.0f} ms"),
                 ("  slices/s, the series as one stream", f"{st['stream_per_s']:.0f}", f"{rate_bare:.0f}")]
        if "mpr_first_s" in st:
            rows += [("  first MPR plane after the stream", f"{st['mpr_first_s'] * 1000:.0f} ms", "-")]
        compressed = []
        for keyword, (name, paths) in variants.items():
            got = stream_side(lab, by_description[f"bench {keyword}"], len(paths))
            compressed.append((name, got["stream_per_s"], bare_decode_rate(paths)))
        print(f"\n(a) server: viewer API vs bare pydicom loop ({n} slices, {args.size}x{args.size}, int16 HU)")
        print(f"{'':48s} {'viewer API':>14s}   {'bare pydicom':>28s}")
        for name, a, b in rows:
            print(f"{name:48s} {a:>14s}   {b:>28s}")
        print(f"ratio slices/s API(3 in flight) / bare: {srv['par3_per_s'] / rate_bare:.2f}x; "
              f"stream / bare: {st['stream_per_s'] / rate_bare:.2f}x")

        if compressed:
            print(f"\n(c) compressed series, {args.compressed} slices each: the series as one stream vs pydicom's "
                  "decode of the same files (the same plugin), one process")
            print(f"{'transfer syntax':40s} {'stream slices/s':>16s} {'bare slices/s':>14s} {'ratio':>7s}")
            for name, rate, bare_rate in compressed:
                print(f"{name:40s} {rate:16.0f} {bare_rate:14.0f} {rate / bare_rate:6.2f}x")

        if not args.no_browser:
            if not Path(CHROMIUM).exists():
                print("\n(b) browser: skipped (no Chromium at /usr/bin/chromium)")
            else:
                lab.stop()  # a fresh server: nothing cached from (a)
                lab = start_lab(base / "lab-b", data, catalog)
                b = browser_side(lab, n)
                print(f"\n(b) browser: Chromium headless (software canvas), 1400x900, {n} slices")
                print(f"open -> metadata          {b['open_meta_ms']:8.0f} ms")
                print(f"open -> first paint       {b['first_paint_ms']:8.0f} ms")
                print(f"{'scroll through all slices':26s} {'input->paint p50':>17s} {'p95':>8s} {'max':>8s} "
                      f"{'render p50':>11s} {'p95':>7s} {'slices/s':>9s}")
                for name in ("cold", "warm"):
                    steps = b[name]["steps"]
                    lat = [s[0] for s in steps]
                    ren = [s[1] for s in steps]
                    label = "cold (prefetch running)" if name == "cold" else "warm (all cached)"
                    print(f"{label:26s} {pct(lat, 50):14.1f} ms {pct(lat, 95):5.1f} ms {max(lat):5.0f} ms "
                          f"{pct(ren, 50):8.2f} ms {pct(ren, 95):4.2f} ms {len(steps) / b[name]['seconds']:9.0f}")
                print("input->paint includes waiting for the next animation frame (16.7 ms at 60 Hz) and, when "
                      "cold, for the slice to arrive; render = LUT + putImageData + drawImage.")
    finally:
        if lab:
            lab.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
