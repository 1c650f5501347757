"""The access layer's cost: a session through the layer against the same session behind a bare proxy.

    sudo .venv/bin/python bench/access.py [--n 200] [--tput 400] [--concurrency 8]
                                          [--workloads static,contents,slice,kernel] [--cell-audit]
                                          [--logs DIR]

Starts one real hub with ``vre up`` (the small demo in a temp dir, free 127.0.0.1 ports, its own
``VRE_INSTANCE``), logs in as alice, takes a token and starts project ``lung-screening``. Every
request to that session then goes two ways, in the same run, to the same server:

- ``layer``: the hub's public address: the access layer (``python -m vre.access``) authenticates the
  token (cached hub check), classifies the path by the project's policy, forwards to the session's
  unix socket and meters the answer;
- ``bare``: a second configurable-http-proxy started by this script (the hub's ``chp_command``, with
  its keep-alive shim) with one route ``/user/alice/lung-screening`` straight to the session's unix
  socket: what the hub's proxy did before the layer existed.

Both send the same ``Authorization: token ...`` header (the session server checks it either way).
Workloads:

1. ``static``: a JupyterLab static file (a ``static/lab/*.js`` named in ``/lab``'s page);
2. ``contents``: contents-API GET of a notebook (``api/contents/bench.ipynb``, written first);
   through the layer this is a ``contents`` read: a broker look-up of the path and the answer
   read whole and checked;
3. ``slice``: a viewer slice (``vre/api/datasets/<slug>/series/<uid>/slices/<i>``, cycling through
   the series);
4. ``kernel``: ``execute_request`` of ``1`` -> its ``execute_reply`` over the kernel websocket (one
   kernel and websocket per path).

For each: p50 and p90 of ``--n`` sequential requests per path (keep-alive, the paths interleaved
request by request, ABBA), and requests/s with ``--concurrency`` requests in flight for ``--tput``
requests per path (aiohttp, keep-alive; kernel: as many websockets on the path's kernel; in two
blocks per path, ABBA). A few uncounted warm-up requests go first. Also the CPU time each path's
proxy spent per request (from /proc: the layer with its broker; the bare proxy's node): each
serves only its own path, so this figure holds up on a busy machine where latencies do not.
Prints a table with the targets "p50 added < 1 ms" and "throughput >= 0.8x" per row; asserts
nothing on timings (a wrong status stops it). ``--cell-audit`` switches the project's cell audit
on first (the layer then records every executed cell through its broker before the kernel sees
it). Load stays on 127.0.0.1 and bounded by the counts.

Everything is removed at the end, also on failure: the bare proxy, the hub, ``vre down`` for its
instance, the temp dir. Needs root (the hub; and the session's socket is 0600, owned by the layer's
uid).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import aiohttp
import requests
import websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "hub"))

from hubclient import HubClient  # noqa: E402
from spawn import BenchHub  # noqa: E402
from vre.settings import load  # noqa: E402

USER = "alice"
PROJECT = "lung-screening"
P50_TARGET_MS = 1.0   # p50 added by the layer
TPUT_TARGET = 0.8     # layer req/s over bare req/s
WORKLOADS = ("static", "contents", "slice", "kernel")
WARMUP = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids) -> float:
    """user + system CPU time of processes (and their children's threads), from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the layer and its broker; node and nothing else)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def pct(values, p: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))]


class BareProxy:
    """configurable-http-proxy of the hub's installation with one route to the session's socket."""

    def __init__(self, chp_command: list[str], log_path: Path, prefix: str, sock: Path):
        self.port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(24)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*chp_command, "--ip", "127.0.0.1", "--port", str(self.port), "--api-ip", "127.0.0.1",
                 "--api-port", str(self.api_port), "--log-level", "warn"],
                env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.token}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        api = f"http://127.0.0.1:{self.api_port}/api/routes"
        headers = {"Authorization": f"token {self.token}"}
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"configurable-http-proxy exited:\n{log_path.read_text()[-2000:]}")
            try:
                requests.get(api, headers=headers, timeout=2).raise_for_status()
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("configurable-http-proxy did not listen within 30 s") from None
                time.sleep(0.2)
        r = requests.post(f"{api}{prefix.rstrip('/')}", headers=headers, timeout=10,
                          json={"target": "http+unix://" + quote(str(sock), safe="")})
        r.raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- HTTP workloads ------------------------------------------------------------------------------
def check(r: requests.Response, what: str, status: int = 200) -> requests.Response:
    if r.status_code != status:
        raise SystemExit(f"{what}: {r.status_code} {r.text[:300]}")
    return r


def prepare(http: requests.Session, base: str) -> dict:
    """What the workloads ask for: {workload: callable(i) -> path below the session}."""
    page = check(http.get(f"{base}/lab", timeout=60), "GET /lab").text
    m = re.search(r"""static/lab/[^"'?]+\.js""", page)
    if not m:
        raise SystemExit("no static/lab/*.js in /lab's page")
    static = m.group(0)
    cells = [{"cell_type": "code", "execution_count": i + 1, "id": uuid.uuid4().hex[:8], "metadata": {},
              "outputs": [{"output_type": "stream", "name": "stdout", "text": f"line {j}\n" * 10}
                          for j in range(2)],
              "source": f"import numpy as np\nx{i} = np.arange({i * 100}).reshape(-1, 10)\nprint(x{i}.sum())"}
             for i in range(20)]
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3",
                "display_name": "Python 3", "language": "python"}}, "cells": cells}
    check(http.put(f"{base}/api/contents/bench.ipynb", json={"type": "notebook", "content": notebook}, timeout=30),
          "PUT api/contents/bench.ipynb", 201)
    datasets = check(http.get(f"{base}/vre/api/datasets", timeout=30), "GET vre/api/datasets").json()["datasets"]
    slug = next((d["slug"] for d in datasets if d.get("indexed")), None)
    if slug is None:
        raise SystemExit(f"no indexed dataset in {PROJECT}: {[d['slug'] for d in datasets]}")
    series = check(http.get(f"{base}/vre/api/datasets/{slug}/series", params={"limit": 1}, timeout=30),
                   "GET series").json()
    uid = (series.get("series") or series.get("items") or [{}])[0].get("series_uid")
    if not uid:
        raise SystemExit(f"no series in {slug}: {str(series)[:300]}")
    source = f"vre/api/datasets/{slug}/series/{uid}"
    count = check(http.get(f"{base}/{source}", timeout=60), "GET series metadata").json()["num_slices"]
    sizes = {"static": len(check(http.get(f"{base}/{static}", timeout=30), "GET static").content),
             "contents": len(check(http.get(f"{base}/api/contents/bench.ipynb", timeout=30), "GET contents").content),
             "slice": len(check(http.get(f"{base}/{source}/slices/0", timeout=60), "GET slice").content)}
    return {"paths": {"static": lambda i: static, "contents": lambda i: "api/contents/bench.ipynb",
                      "slice": lambda i: f"{source}/slices/{i % count}"},
            "sizes": sizes, "detail": {"static": static, "slice": f"{slug}, {count} slices"}}


def sequential_http(sessions: dict, bases: dict, path_of, n: int) -> dict:
    """Latencies (s) of n requests per path, interleaved ABBA."""
    out = {k: [] for k in bases}
    names = list(bases)
    for i in range(-WARMUP, n):
        for name in (names if i % 2 == 0 else names[::-1]):
            url = f"{bases[name]}/{path_of(max(i, 0))}"
            t = time.perf_counter()
            r = sessions[name].get(url, timeout=60)
            r.content  # noqa: B018 - the whole body
            dt = time.perf_counter() - t
            check(r, f"{name} GET {url}")
            if i >= 0:
                out[name].append(dt)
    return out


async def throughput_http(base: str, headers: dict, path_of, total: int, concurrency: int) -> float:
    """Requests/s for ``total`` GETs with ``concurrency`` in flight over keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        todo = iter(())

        async def worker():
            for i in todo:
                async with http.get(f"{base}/{path_of(i)}") as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"GET {path_of(i)}: {r.status}")

        todo = iter(range(2 * concurrency))
        await asyncio.gather(*(worker() for _ in range(concurrency)))  # opens the connections
        todo = iter(range(total))
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - t)


# -- kernel workload -----------------------------------------------------------------------------
def execute_request(session: str, code: str = "1") -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    return msg_id, json.dumps({
        "header": {"msg_id": msg_id, "username": USER, "session": session, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}})


def is_reply(frame, msg_id: str) -> bool:
    msg = json.loads(frame)
    return msg.get("parent_header", {}).get("msg_id") == msg_id and msg["header"]["msg_type"] == "execute_reply"


def sequential_kernel(sockets: dict, n: int) -> dict:
    out = {k: [] for k in sockets}
    names = list(sockets)
    session = uuid.uuid4().hex
    for i in range(-WARMUP, n):
        for name in (names if i % 2 == 0 else names[::-1]):
            ws = sockets[name]
            msg_id, frame = execute_request(session)
            t = time.perf_counter()
            ws.send(frame)
            while not is_reply(ws.recv(), msg_id):
                pass
            dt = time.perf_counter() - t
            if i >= 0:
                out[name].append(dt)
    return out


async def throughput_kernel(url: str, headers: dict, total: int, concurrency: int) -> float:
    """Executions/s with ``concurrency`` websockets on the kernel, each one request in flight."""
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as http:
        sockets = [await http.ws_connect(url, max_msg_size=0) for _ in range(concurrency)]
        todo = iter(range(total))

        async def worker(ws):
            session = uuid.uuid4().hex
            for _ in todo:
                msg_id, frame = execute_request(session)
                await ws.send_str(frame)
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise SystemExit(f"kernel websocket: {msg.type} {msg.data!r}")
                    if is_reply(msg.data, msg_id):
                        break

        try:
            t = time.perf_counter()
            await asyncio.gather(*(worker(ws) for ws in sockets))
            return total / (time.perf_counter() - t)
        finally:
            for ws in sockets:
                await ws.close()


# -- the run -------------------------------------------------------------------------------------
def throughput(run_one, names: list[str], total: int) -> dict:
    """Requests/s per path: ``total`` per path in two blocks each, ABBA."""
    block = max(1, total // 2)
    spent = {k: 0.0 for k in names}
    for name in names + names[::-1]:
        spent[name] += block / run_one(name, block)
    return {k: 2 * block / spent[k] for k in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="sequential requests per path and workload (default 200)")
    ap.add_argument("--tput", type=int, default=400, help="requests per path and workload for req/s (default 400)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight for req/s (default 8)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    ap.add_argument("--cell-audit", action="store_true", help="switch the project's cell audit on first")
    ap.add_argument("--logs", type=Path, help="keep the hub's and the bare proxy's logs here")
    args = ap.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    if unknown := set(workloads) - set(WORKLOADS):
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        raise SystemExit("run as root (sudo): vre up, and the session's socket is the layer's, mode 0600")

    hub = BenchHub("sandbox")
    bare = client = None
    kernels: list = []
    started = time.monotonic()
    try:
        print(f"starting the hub ({hub.base_dir}) ...", flush=True)
        hub.start()
        if args.cell_audit:
            hub.vre("project", "set-cell-audit", PROJECT, "on")
        client = HubClient(hub.url, USER)
        client.get_token(hub.passwords[USER])
        client.start(PROJECT, timeout=180)
        settings = load(environ=hub.env)
        prefix = f"/user/{USER}/{PROJECT}/"
        sock = settings.sessions_run_dir / f"{USER}-{PROJECT}" / "sock" / "jupyter.sock"
        if not sock.exists():
            raise SystemExit(f"no session socket at {sock}")
        bare = BareProxy(settings.chp_command, hub.base_dir / "bare-chp.log", prefix, sock)
        bases = {"bare": bare.url + prefix.rstrip("/"), "layer": client.server_url(PROJECT)}
        headers = {"Authorization": f"token {client.token}"}
        sessions = {}
        for name in bases:
            sessions[name] = requests.Session()
            sessions[name].headers.update(headers)
            check(sessions[name].get(f"{bases[name]}/api/status", timeout=30), f"{name} api/status")
        spec = prepare(sessions["layer"], bases["layer"])
        names = list(bases)
        for w in (w for w in workloads if w != "kernel"):  # both paths must carry the same answer
            got = {}
            for name in names:
                r = check(sessions[name].get(f"{bases[name]}/{spec['paths'][w](0)}", timeout=60), f"{name} {w}")
                got[name] = (len(r.content), r.headers.get("Content-Encoding", ""), r.headers.get("Content-Type", ""))
            if len(set(got.values())) != 1:
                print(f"warning: {w} differs between the paths: {got}", file=sys.stderr)
        # CPU of each path's proxy (the layer with its broker; the bare proxy's node), per request:
        # each serves only its own path here, so this holds up on a busy machine where latency does not
        pids = {"bare": process_tree(bare.proc.pid),
                "layer": process_tree(int((settings.state_dir / "access.pid").read_text()))}
        block = max(1, args.tput // 2)
        rows = {}
        for w in workloads:
            print(f"{w} ...", flush=True)
            cpu0 = {name: cpu_seconds(pids[name]) for name in names}
            if w == "kernel":
                for name in names:
                    r = check(sessions[name].post(f"{bases[name]}/api/kernels", json={"name": "python3"}, timeout=60),
                              "start kernel", 201)
                    kernels.append((name, r.json()["id"]))
                urls = {name: bases[name].replace("http://", "ws://") + f"/api/kernels/{kid}/channels"
                        for name, kid in kernels}
                cpu0 = {name: cpu_seconds(pids[name]) for name in names}
                auth = [f"Authorization: token {client.token}"]
                sockets = {name: websocket.create_connection(urls[name], header=auth, timeout=60) for name in names}
                try:
                    lat = sequential_kernel(sockets, args.n)
                finally:
                    for ws in sockets.values():
                        ws.close()
                rate = throughput(lambda name, count: asyncio.run(
                    throughput_kernel(urls[name], headers, count, args.concurrency)), names, args.tput)
                count = args.n + WARMUP + 2 * block
            else:
                path_of = spec["paths"][w]
                lat = sequential_http(sessions, bases, path_of, args.n)
                rate = throughput(lambda name, count: asyncio.run(
                    throughput_http(bases[name], headers, path_of, count, args.concurrency)), names, args.tput)
                count = args.n + WARMUP + 2 * (block + 2 * args.concurrency)
            cpu = {name: (cpu_seconds(pids[name]) - cpu0[name]) / count for name in names}
            rows[w] = (lat, rate, cpu)
        report(rows, spec, args, time.monotonic() - started)
    finally:
        if bare is not None:
            bare.stop()
        for _name, kid in kernels if client is not None else ():
            try:
                requests.delete(f"{client.server_url(PROJECT)}/api/kernels/{kid}", timeout=10,
                                headers={"Authorization": f"token {client.token}"})
            except requests.RequestException:
                pass
        if args.logs is not None and bare is not None and bare.log_path.exists():
            args.logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(bare.log_path, args.logs / "bare-chp.log")
        hub.teardown(args.logs)
        shutil.rmtree(hub.base_dir, ignore_errors=True)


def report(rows: dict, spec: dict, args, elapsed: float) -> None:
    ms = 1000
    print()
    print(f"access layer vs bare configurable-http-proxy, same session ({USER}/{PROJECT}), {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; n={args.n} sequential per path, {args.tput} at concurrency "
          f"{args.concurrency}; cell audit {'on' if args.cell_audit else 'off'}; {elapsed:.0f} s")
    for w, size in spec["sizes"].items():
        print(f"  {w}: {size:,} bytes" + (f" ({spec['detail'][w]})" if w in spec["detail"] else ""))
    head = ("workload", "bare p50/p90 ms", "layer p50/p90 ms", "added p50 ms", "bare req/s", "layer req/s",
            "ratio", "CPU ms/req bare / layer", f"p50 added < {P50_TARGET_MS:g} ms", f"req/s >= {TPUT_TARGET}x")
    table = []
    for w, (lat, rate, cpu) in rows.items():
        b50, b90 = pct(lat["bare"], 50) * ms, pct(lat["bare"], 90) * ms
        l50, l90 = pct(lat["layer"], 50) * ms, pct(lat["layer"], 90) * ms
        ratio = rate["layer"] / rate["bare"]
        table.append((w, f"{b50:.2f} / {b90:.2f}", f"{l50:.2f} / {l90:.2f}", f"{l50 - b50:+.2f}",
                      f"{rate['bare']:.0f}", f"{rate['layer']:.0f}", f"{ratio:.2f}x",
                      f"{cpu['bare'] * ms:.2f} / {cpu['layer'] * ms:.2f}",
                      "met" if l50 - b50 < P50_TARGET_MS else "not met", "met" if ratio >= TPUT_TARGET else "not met"))
    widths = [max(len(str(r[i])) for r in (head, *table)) for i in range(len(head))]
    for r in (head, tuple("-" * wd for wd in widths), *table):
        print("  ".join(str(c).ljust(wd) for c, wd in zip(r, widths)))


if __name__ == "__main__":
    main()
