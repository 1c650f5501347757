"""NetworkPolicy is enforced (kube-router's firewall controller), not only accepted.

A listener pod in namespace B, a client pod in namespace A. Every "unreachable" is checked against
the test's own listener, which is shown to be alive at the same moment (from inside its own pod,
over loopback), so a dead listener cannot pass for a policy. Traffic goes only to these pods.
"""

from __future__ import annotations

import secrets
import time

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]

PORT = 8080


class Pair:
    def __init__(self, kube, new_ns):
        self.kube = kube
        self.a, self.b = new_ns("client"), new_ns("server")
        self.token = secrets.token_hex(8)
        kube.apply(kube.pod(self.b, "listener", ["sh", "-c", f"mkdir -p /tmp/www && echo pong-{self.token} "
                                                             f">/tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www"],
                            labels={"app": "listener"}),
                   kube.pod(self.a, "client", ["sleep", "3600"], labels={"app": "client"}))
        self.ip = kube.wait_ready(self.b, "listener")["status"]["podIP"]
        kube.wait_ready(self.a, "client")

    def reachable(self) -> bool:
        return f"pong-{self.token}" in self.kube.http_get(self.a, "client", self.ip, PORT, timeout=2)

    def listener_alive(self) -> bool:
        return f"pong-{self.token}" in self.kube.http_get(self.b, "listener", "127.0.0.1", PORT, timeout=2)

    def expect(self, want: bool, what: str, timeout: float = 45):
        """Wait until reachability is ``want``, then see it hold for three more probes."""
        deadline = time.monotonic() + timeout
        while self.reachable() != want:
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: listener {self.b}/listener ({self.ip}:{PORT}) still "
                            f"{'un' if want else ''}reachable from {self.a}/client after {timeout:.0f} s"
                            + self.diagnose())
            time.sleep(1)
        for _ in range(3):
            assert self.reachable() == want, f"{what}: reachability flapped" + self.diagnose()
        assert self.listener_alive(), f"{what}: the listener itself is not answering" + self.diagnose()

    def diagnose(self) -> str:
        pols = self.kube.run("get", "networkpolicy", "-A", "-o", "yaml").stdout
        return f"\n--- policies:\n{pols[-3000:]}" + self.kube.diagnose(self.b, "pod", "listener")

    def policy(self, ns: str, name: str, spec: dict):
        self.kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_ingress_default_deny_then_allow(kube, new_ns):
    p = Pair(kube, new_ns)
    p.expect(True, "no policy")
    p.policy(p.b, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    p.expect(False, "default-deny ingress in B")
    p.policy(p.b, "allow-from-a", {
        "podSelector": {"matchLabels": {"app": "listener"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": p.a}}}],
                     "ports": [{"protocol": "TCP", "port": PORT}]}]})
    p.expect(True, "allow rule for A's namespace")
    kube("delete", "networkpolicy", "allow-from-a", "-n", p.b)
    p.expect(False, "allow rule removed again")


def test_egress_default_deny_in_client_namespace(kube, new_ns):
    p = Pair(kube, new_ns)
    p.expect(True, "no policy")
    p.policy(p.a, "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    p.expect(False, "default-deny egress in A")
    p.policy(p.a, "allow-egress-to-b", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": p.b}}}],
                    "ports": [{"protocol": "TCP", "port": PORT}]}]})
    p.expect(True, "egress allowed to B")
