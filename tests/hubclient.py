"""A small client for a running hub, used by the tests the way a researcher's browser is:
log in with the form, take a token, start a project session, run code in a real kernel."""

from __future__ import annotations

import json
import time
import uuid

import requests
import websocket


#: The VRE service (a hub-managed JupyterHub service): its pages and its REST API.
VRE_PREFIX = "/services/vre/"
VRE_API = "/services/vre/api"
VRE_AUDIT_PAGE = "/services/vre/audit"


class HubError(AssertionError):
    pass


class NotReady(HubError):
    """A session still starting when the wait ran out."""


class KernelDied(HubError):
    """The kernel was killed (e.g. by the OOM killer) while running the code."""


class HubClient:
    def __init__(self, base_url: str, username: str):
        self.base = base_url.rstrip("/")
        self.username = username
        self.http = requests.Session()
        self.token: str | None = None

    # -- login ------------------------------------------------------------------------------
    def login(self, password: str) -> requests.Response:
        """POST the login form as a browser does; returns the final response."""
        self.http.get(f"{self.base}/hub/login", timeout=10)
        xsrf = next((c.value for c in self.http.cookies if c.name == "_xsrf" and c.path == "/hub/"), "")
        return self.http.post(f"{self.base}/hub/login", timeout=20,
                              data={"username": self.username, "password": password, "_xsrf": xsrf})

    def logged_in(self) -> bool:
        return self.http.get(f"{self.base}/hub/api/user", headers=self._xsrf(), timeout=10).status_code == 200

    def _xsrf(self) -> dict:
        xsrf = next((c.value for c in self.http.cookies if c.name == "_xsrf" and c.path == "/hub/"), "")
        return {"X-XSRFToken": xsrf, "Referer": f"{self.base}/hub/"}

    def get_token(self, password: str) -> str:
        r = self.login(password)
        if not self.logged_in():
            raise HubError(f"login as {self.username} failed: {r.status_code}")
        r = self.http.post(f"{self.base}/hub/api/users/{self.username}/tokens", headers=self._xsrf(),
                           json={"note": "tests", "expires_in": 3600}, timeout=10)
        if r.status_code != 201:
            raise HubError(f"token request failed: {r.status_code} {r.text}")
        self.token = r.json()["token"]
        return self.token

    # -- REST API ---------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        timeout = kw.pop("timeout", 30)
        # no retries: a request is sent once (the proxy's 503 EPIPE is fixed: hub/vre/proxy_keepalive.mjs)
        return requests.request(method, f"{self.base}/hub/api{path}", headers=headers, timeout=timeout, **kw)

    def vre_api(self, method: str, path: str, **kw) -> requests.Response:
        """The VRE service's REST API (the hub's service ``vre``: /services/vre/api), with the token."""
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        timeout = kw.pop("timeout", 30)
        return requests.request(method, f"{self.base}{VRE_API}{path}", headers=headers, timeout=timeout, **kw)

    def vre_xsrf(self) -> dict:
        """The XSRF header for the VRE service's pages and APIs in this browser session (the service's
        own ``_xsrf`` cookie, set at its OAuth login; the hub's is another, for /hub/)."""
        token = next((c.value for c in self.http.cookies if c.name == "_xsrf" and c.path == VRE_PREFIX), "")
        return {"X-XSRFToken": token, "Referer": f"{self.base}{VRE_PREFIX}"}

    def server_state(self, name: str) -> dict | None:
        r = self.api("GET", f"/users/{self.username}")
        r.raise_for_status()
        return r.json().get("servers", {}).get(name)

    def start(self, project: str, profile: str | None = None, timeout: float = 90) -> None:
        """Start a fresh session (stopping one that an earlier test left running)."""
        if self.server_state(project) is not None:
            self.stop(project)
        body = {"profile": profile} if profile else {}
        r = self.api("POST", f"/users/{self.username}/servers/{project}", json=body)
        if r.status_code not in (201, 202):
            raise HubError(f"start {project}: {r.status_code} {r.text}")
        self.wait_ready(project, timeout)

    def wait_ready(self, project: str, timeout: float = 90, interval: float = 0.3) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.server_state(project)
            if state and state.get("ready"):
                return
            if state is None:
                raise HubError(f"session {project} stopped while starting: {self.spawn_failure(project)}")
            time.sleep(interval)
        raise NotReady(f"session {project} not ready after {timeout:.0f} s")

    def spawn_failure(self, project: str) -> str:
        """The hub's last progress message of a start that failed (its reason), as the spawn page shows it."""
        try:
            with self.api("GET", f"/users/{self.username}/servers/{project}/progress", stream=True) as r:
                messages = [json.loads(line[5:]).get("message", "") for line in r.iter_lines(decode_unicode=True)
                            if line and line.startswith("data:")]
        except (requests.RequestException, ValueError) as e:
            return f"(its progress could not be read: {e})"
        return messages[-1] if messages else "(the hub reported no reason)"

    def stop(self, project: str, timeout: float = 60) -> None:
        r = self.api("DELETE", f"/users/{self.username}/servers/{project}")
        if r.status_code not in (202, 204):
            raise HubError(f"stop {project}: {r.status_code} {r.text}")
        deadline = time.monotonic() + timeout
        while self.server_state(project) is not None:
            if time.monotonic() > deadline:
                raise HubError(f"session {project} did not stop in {timeout} s")
            time.sleep(0.3)

    # -- single-user server -----------------------------------------------------------------
    def server_url(self, project: str) -> str:
        return f"{self.base}/user/{self.username}/{project}"

    def server_api(self, project: str, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.server_url(project)}/api{path}",
                                headers={"Authorization": f"token {self.token}"}, timeout=kw.pop("timeout", 30), **kw)

    def kernel(self, project: str, *, v1: bool = False) -> "Kernel":
        """A new kernel; ``v1``: speak the ``v1.kernel.websocket.jupyter.org`` subprotocol (binary
        frames, as JupyterLab 4 does) instead of the legacy JSON frames."""
        r = self.server_api(project, "POST", "/kernels", json={"name": "python3"})
        if r.status_code != 201:
            raise HubError(f"kernel start: {r.status_code} {r.text}")
        return Kernel(self, project, r.json()["id"], v1=v1)

    def terminal(self, project: str) -> "Terminal":
        r = self.server_api(project, "POST", "/terminals")
        if r.status_code != 200:
            raise HubError(f"terminal start: {r.status_code} {r.text}")
        return Terminal(self, project, r.json()["name"])


class Kernel:
    """Runs code in a kernel over the websocket protocol; returns stdout, raises on errors."""

    V1 = "v1.kernel.websocket.jupyter.org"

    def __init__(self, client: HubClient, project: str, kernel_id: str, *, v1: bool = False):
        self.client, self.project, self.id = client, project, kernel_id
        url = client.server_url(project).replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {client.token}"], timeout=60,
                                              subprotocols=[self.V1] if v1 else None)
        self.v1 = v1
        if v1 and self.ws.getsubprotocol() != self.V1:
            raise HubError(f"the server did not accept {self.V1}: {self.ws.getsubprotocol()!r}")
        self.session = uuid.uuid4().hex

    def _send(self, msg: dict) -> None:
        if not self.v1:
            self.ws.send(json.dumps(msg))
            return
        parts = [msg["channel"].encode()] + [json.dumps(msg[k]).encode()
                                             for k in ("header", "parent_header", "metadata", "content")]
        offsets = [8 * (len(parts) + 2)]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
        frame = (len(offsets)).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
        self.ws.send_binary(frame + b"".join(parts))

    def _recv(self) -> dict:
        frame = self.ws.recv()
        if frame in ("", b""):  # websocket-client answers a close frame so
            raise websocket.WebSocketConnectionClosedException("the server closed the kernel's connection")
        if not self.v1:
            return json.loads(frame)
        count = int.from_bytes(frame[:8], "little")
        offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
        parts = [frame[offsets[i]:offsets[i + 1]] for i in range(count - 1)]
        return {"channel": parts[0].decode(), "header": json.loads(parts[1]), "parent_header": json.loads(parts[2]),
                "metadata": json.loads(parts[3]), "content": json.loads(parts[4])}

    def execute(self, code: str) -> str:
        """Send an ``execute_request`` for ``code``; return its msg_id (:meth:`run` waits for it)."""
        msg_id = uuid.uuid4().hex
        self._send({
            "header": {"msg_id": msg_id, "username": self.client.username, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        })
        return msg_id

    def recv(self, timeout: float = 60) -> dict:
        """The next message from the kernel (raises ``websocket.WebSocketConnectionClosedException``
        once the connection is closed)."""
        self.ws.settimeout(timeout)
        return self._recv()

    def run(self, code: str, timeout: float = 60) -> tuple[str, dict | None]:
        """Execute ``code``; return (stdout+stderr text, error dict or None)."""
        msg_id = self.execute(code)
        out, error, idle, replied = [], None, False, False
        deadline = time.monotonic() + timeout
        while not (idle and replied):
            if time.monotonic() > deadline:
                raise HubError(f"code did not finish in {timeout} s: {code[:80]!r}")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = self._recv()
            kind = msg["header"]["msg_type"]
            if kind == "status" and msg["content"]["execution_state"] in ("restarting", "dead"):
                raise KernelDied(f"kernel {msg['content']['execution_state']} while running {code[:60]!r}")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                error = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        return "".join(out), error

    def check(self, code: str, timeout: float = 60) -> str:
        out, error = self.run(code, timeout)
        if error:
            raise HubError(f"{error['ename']}: {error['evalue']}\n{out}")
        return out

    def close(self) -> None:
        """Close the socket and shut the kernel down (quietly, if the server is already gone)."""
        self.ws.close()
        try:
            self.client.server_api(self.project, "DELETE", f"/kernels/{self.id}", timeout=10)
        except requests.RequestException:
            pass


class Terminal:
    """A terminal of a session, driven over its websocket as the Lab's terminal is."""

    def __init__(self, client: HubClient, project: str, name: str):
        self.client, self.project, self.name = client, project, name
        url = client.server_url(project).replace("http://", "ws://") + f"/terminals/websocket/{name}"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {client.token}"], timeout=60)

    def type(self, text: str) -> None:
        self.ws.send(json.dumps(["stdin", text]))

    def run(self, line: str, marker: str, timeout: float = 30) -> str:
        """Type ``line`` and Enter; return the output until ``marker`` appears in it (the terminal
        echoes the line: pick a marker that only the command's output contains)."""
        self.type(line + "\r")
        out = ""
        deadline = time.monotonic() + timeout
        while marker not in out:
            if time.monotonic() > deadline:
                raise HubError(f"terminal: {marker!r} not seen after {line!r}: {out[-500:]!r}")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg[0] == "stdout":
                out += msg[1]
        return out

    def close(self) -> None:
        self.ws.close()
        try:
            self.client.server_api(self.project, "DELETE", f"/terminals/{self.name}", timeout=10)
        except requests.RequestException:
            pass
