"""The session's audit relay (``vre_session.relay``): events wait in the spool while the hub is away,
and what is still spooled when the server exits is delivered once more (``close``: on Kubernetes
the spool is an emptyDir that goes with the pod)."""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import quote

from vre_session.relay import AuditRelay


class _Ingest(BaseHTTPRequestHandler):
    """The hub's ingest, as far as the relay sees it: 200 for a batch, kept in ``server.batches``."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.batches.append((self.headers["Authorization"], body["events"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def relay(tmp_path, socket_path) -> AuditRelay:
    url = f"http+unix://{quote(str(socket_path), safe='')}/services/vre/api/audit/events"
    return AuditRelay(url, "credential", tmp_path / "spool", logging.getLogger("test-relay"))


def test_what_is_spooled_while_the_hub_is_away_is_delivered_at_exit(tmp_path):
    sock = tmp_path / "vre.sock"
    r = relay(tmp_path, sock)
    r.start()  # no hub listening: the thread retries in the background, the events stay spooled
    for i in range(3):
        r.record("contents.get", target=f"notes-{i}.txt")
    assert len(list((tmp_path / "spool").glob("*.json"))) == 3
    server = _UnixHTTPServer(str(sock), _Ingest)
    server.batches = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r.close()  # what the interpreter runs at exit
    finally:
        server.shutdown()
        server.server_close()
    delivered = [e["target"] for _, events in server.batches for e in events]
    assert sorted(delivered) == ["notes-0.txt", "notes-1.txt", "notes-2.txt"]
    assert {auth for auth, _ in server.batches} == {"vre-relay credential"}
    assert list((tmp_path / "spool").glob("*.json")) == []


def test_at_exit_without_a_hub_the_spool_is_kept(tmp_path, caplog):
    r = relay(tmp_path, tmp_path / "nobody.sock")
    r.start()
    r.record("kernel.start", target="k1")
    with caplog.at_level(logging.WARNING, logger="test-relay"):
        r.close()
    assert len(list((tmp_path / "spool").glob("*.json"))) == 1
    assert "stays spooled" in caplog.text
