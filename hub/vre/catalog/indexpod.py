"""The indexer of a dataset in the cluster: the program of the index Job's pod (``vre.catalog.cluster``).

Where the hub cannot read a dataset (a ``dataset-<slug>`` claim, an NFS export: it runs in a pod
that mounts neither), a Job mounts the dataset read-only, indexes it with this module's neighbour
``index.py`` (the hub's own ``vre.catalog.index``, passed in the Job's Secret beside this file)
and keeps every file's SHA-256 for the airlock's check for dataset copies. The index stays in the
pod's scratch folder until the hub fetches it; the hub then builds the catalogue record as for a
dataset it indexes itself.

It runs the session image's ``python3 -I`` on files the hub wrote (nothing from a place a
researcher can write), standard library and pydicom only, and answers the hub alone (a bearer
token from ``$VRE_INDEX_TOKEN``; the namespace admits only the hub's pods to its port):

- ``POST /start``: start indexing; the body, if any, is the dataset's previous index, so that
  only new and changed files are read (and hashed) again, as when the hub indexes itself;
- ``GET /progress``: ``{"state": "waiting"|"indexing"|"done"|"failed", "done": n, "total": m,
  "error": ..., "report": {...}}`` (the report is ``IndexReport``'s fields, once done);
- ``GET /index``: the index file, once done.

After ``--idle`` seconds without a request (the hub fetched the index, or went away) the server
exits: 0 when the index was made, else 1.
"""

import argparse
import dataclasses
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20


class State:
    """The indexing's progress, shared by the indexing thread and the server's."""

    def __init__(self):
        self.lock = threading.Lock()
        self.body = {"state": "waiting", "done": 0, "total": 0, "error": None, "report": None}

    def update(self, **kw) -> None:
        with self.lock:
            self.body = {**self.body, **kw}

    def get(self) -> dict:
        with self.lock:
            return dict(self.body)


def index(catalog_index, root: str, out: str, workers: int, state: State) -> None:
    """Index ``root`` into ``out`` with digests; the outcome goes to ``state``."""
    try:
        report = catalog_index.index_dataset(root, out, workers=workers, digests=True,
                                             progress=lambda done, total: state.update(done=done, total=total))
        state.update(state="done", report=dataclasses.asdict(report))
    except catalog_index.CatalogError as e:
        state.update(state="failed", error=str(e))
    except Exception as e:  # reported to the hub, which says so to the admin; the pod's log has the rest
        state.update(state="failed", error=f"indexing failed: {type(e).__name__}: {e}")
        raise


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vre-indexer"

    def log_message(self, format, *args):
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _allowed(self) -> bool:
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            self._json(401, {"error": "a token is required"})
            return False
        self.server.last_request = time.monotonic()
        return True

    def do_POST(self):
        if not self._allowed():
            return
        if self.path != "/start":
            return self._json(404, {"error": f"no such request: {self.path}"})
        with self.server.starting:
            if self.server.state.get()["state"] != "waiting":
                return self._json(409, {"error": "indexing has started already"})
            left = int(self.headers.get("Content-Length") or 0)
            if left:
                with open(self.server.out, "wb") as f:
                    while left > 0:
                        chunk = self.rfile.read(min(CHUNK, left))
                        if not chunk:
                            f.close()
                            os.unlink(self.server.out)   # never a partial one to start from
                            return self._json(400, {"error": "the previous index was cut short"})
                        f.write(chunk)
                        left -= len(chunk)
                        self.server.last_request = time.monotonic()
            self.server.state.update(state="indexing")
            self.server.worker.start()
        self._json(202, {"state": "indexing"})

    def do_GET(self):
        if not self._allowed():
            return
        body = self.server.state.get()
        if self.path == "/progress":
            return self._json(200, body)
        if self.path != "/index":
            return self._json(404, {"error": f"no such question: {self.path}"})
        if body["state"] != "done":
            return self._json(409, {"error": f"the index is not made ({body['state']})"})
        with open(self.server.out, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.sqlite3")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while chunk := f.read(CHUNK):
                self.wfile.write(chunk)
                self.server.last_request = time.monotonic()


def serve(catalog_index, root: str, out: str, workers: int, port: int, token: str, idle: float,
          host: str = "0.0.0.0", ready=None) -> int:
    state = State()
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.state, server.out, server.token, server.last_request = state, out, token, time.monotonic()
    worker = threading.Thread(target=index, args=(catalog_index, root, out, workers, state), daemon=True)
    server.worker, server.starting = worker, threading.Lock()
    if ready is not None:
        ready(server.server_address[1])

    def idle_exit():
        # indexing may take hours; only once it ended does the idle time count
        while worker.is_alive() or time.monotonic() - server.last_request < idle:
            time.sleep(1)
        server.shutdown()

    threading.Thread(target=idle_exit, daemon=True).start()
    server.serve_forever()
    return 0 if state.get()["state"] == "done" else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vre-indexer")
    ap.add_argument("--root", required=True, help="the dataset's folder (mounted read-only)")
    ap.add_argument("--out", required=True, help="where the index is made (a scratch folder)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, default=600)
    ap.add_argument("--host", default="0.0.0.0")
    args = ap.parse_args(argv)
    token = os.environ.pop("VRE_INDEX_TOKEN", "")
    if len(token) < 32:
        print("vre-indexer: VRE_INDEX_TOKEN (32 characters or more) is required", file=sys.stderr)
        return 2
    # index.py lies beside this file (the Secret's folder); -I keeps this folder off the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import index as catalog_index

    def ready(port):
        print(f"vre-indexer: indexing {args.root}; answering on port {port}", flush=True)

    return serve(catalog_index, args.root, args.out, args.workers, args.port, token, args.idle, args.host, ready)


if __name__ == "__main__":
    sys.exit(main())
