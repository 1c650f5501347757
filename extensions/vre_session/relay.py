"""Audit relay: session events reach the hub, or wait on disk until they can.

``record`` writes each event to the spool (one file, written atomically) before anything else,
so an event survives the hub being down or this server dying; a background thread posts spooled
events in batches to the hub over its unix socket and deletes them only once the hub answers that
they are durably stored. Event ids make the hub's storage idempotent, so a batch that is sent
twice (e.g. the answer was lost) is stored once. What the session claims is limited to *what*
happened: the hub attributes who, where and which session from the relay credential.

When the server exits (the hub stops the session; on Kubernetes the pod's spool is an emptyDir that
goes with it), the relay sends what is still spooled once more before the process ends
(``close``, at interpreter exit), so a stop loses nothing the hub could still take.
"""

from __future__ import annotations

import atexit
import datetime as dt
import http.client
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

BATCH = 500
#: Seconds the last delivery at exit may take (the hub's stop waits for the server meanwhile).
EXIT_TIMEOUT = 5.0
_relay: "AuditRelay | None" = None
_lock = threading.Lock()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def connection(url: str, timeout: float = 10) -> tuple[http.client.HTTPConnection, str]:
    """(connection, path) to the VRE service: an ``http+unix://`` URL (sandbox, docker: a socket
    beside the hub's) or ``http://host:port`` (kubernetes: the hub's pod)."""
    parts = urlsplit(url)
    if parts.scheme == "http+unix":
        return _UnixHTTPConnection(unquote(parts.netloc), timeout=timeout), parts.path
    if parts.scheme == "http" and parts.hostname:
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout), parts.path
    raise ValueError(f"not a VRE service URL: {url!r}")


class AuditRelay:
    def __init__(self, url: str | None, token: str | None, spool: Path | None, log: logging.Logger):
        self.url, self.token, self.log = url, token, log
        self.spool = spool
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timeout = 10.0
        if spool is not None:
            spool.mkdir(parents=True, exist_ok=True)

    # -- producing -----------------------------------------------------------------------------
    def record(self, action: str, *, target: str = "", dataset: str | None = None, outcome: str = "ok",
               details: dict | None = None) -> str:
        """Spool one event (durably) and return its id; the flusher sends it to the hub."""
        event = {"id": uuid.uuid4().hex, "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                 "action": action, "target": target, "dataset": dataset, "outcome": outcome,
                 "details": details or {}}
        if self.spool is None or not self.url:
            self.log.info("AUDIT %s", json.dumps(event, sort_keys=True))
            return event["id"]
        name = f"{event['time'].replace(':', '').replace('+', '_')}-{event['id']}"
        tmp = self.spool / f".{name}.tmp"
        with open(tmp, "w") as f:
            json.dump(event, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.spool / f"{name}.json")
        self._wake.set()
        return event["id"]

    # -- delivering ----------------------------------------------------------------------------
    def _post(self, events: list[dict]) -> None:
        conn, path = connection(self.url, timeout=self._timeout)
        try:
            conn.request("POST", path, body=json.dumps({"events": events}),
                         headers={"Authorization": f"vre-relay {self.token}", "Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status == 400:  # the hub refused the batch: keep the evidence, but stop retrying it
            raise ValueError(body.decode(errors="replace"))
        if response.status != 200:
            raise ConnectionError(f"hub answered {response.status}")

    def flush(self) -> int:
        """Send everything spooled; returns how many events the hub acknowledged."""
        sent = 0
        while True:
            files = sorted(self.spool.glob("*.json"))[:BATCH]
            if not files:
                return sent
            events = []
            for path in files:
                try:
                    events.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    path.rename(path.with_suffix(".bad"))
            try:
                self._post(events)
            except ValueError as e:
                self.log.error("Audit relay: hub refused a batch (%s); kept as .rejected", e)
                for path in files:
                    path.rename(path.with_suffix(".rejected"))
                continue
            for path in files:
                path.unlink(missing_ok=True)
            sent += len(events)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(timeout=backoff if backoff > 0.5 else 2.0)
            self._wake.clear()
            try:
                self.flush()
                backoff = 0.5
            except (OSError, ConnectionError, http.client.HTTPException) as e:
                backoff = min(backoff * 2, 10.0)
                self.log.warning("Audit relay: hub not reachable (%s); events stay spooled, retry in %.1fs", e, backoff)

    def start(self) -> None:
        if self.spool is not None and self.url and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vre-audit-relay", daemon=True)
            self._thread.start()
            self._wake.set()  # deliver what a previous server process left behind
            atexit.register(self.close)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and deliver what is still spooled, once, within ``EXIT_TIMEOUT``; what
        the hub does not take stays spooled (kept on the sandbox and docker backends)."""
        atexit.unregister(self.close)  # once
        self.stop()
        if self._thread is not None:
            self._thread.join(EXIT_TIMEOUT)
        self._timeout = EXIT_TIMEOUT
        try:
            sent = self.flush()
        except (OSError, ConnectionError, http.client.HTTPException) as e:
            self.log.warning("Audit relay: could not deliver the spool at exit (%s); it stays spooled", e)
        else:
            if sent:
                self.log.info("Audit relay: delivered %d event(s) at exit", sent)


def get_relay(log: logging.Logger | None = None) -> AuditRelay:
    """The process-wide relay, configured from the environment the sandbox sets."""
    global _relay
    with _lock:
        if _relay is None:
            spool = os.environ.get("VRE_AUDIT_SPOOL")
            # Kernels and terminals inherit the server's environment: keep the credential out of it.
            # (Same uid, so not a secret from the researcher: it only ever speaks for this session.)
            _relay = AuditRelay(os.environ.get("VRE_AUDIT_URL"), os.environ.pop("VRE_AUDIT_TOKEN", None),
                                Path(spool) if spool else None, log or logging.getLogger("vre_session"))
        return _relay


def audit_hook(action: str, **fields) -> str:
    """The one function session-side features call to record what a researcher did."""
    return get_relay().record(action, **fields)
