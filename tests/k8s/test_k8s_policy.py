"""Admission and runtime policy on the real test cluster: ResourceQuota, LimitRange, read-only
volume mounts (EROFS), runAsNonRoot, dropped capabilities and seccomp RuntimeDefault.

Each check has a control (the same pod without the restriction behaves differently), so a cluster
that only accepted the fields without honouring them fails.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]

SLEEP = ["sleep", "3600"]


def _limits(kube, ns):
    kube.apply({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits", "namespace": ns},
                "spec": {"limits": [{"type": "Container",
                                     "default": {"cpu": "100m", "memory": "32Mi"},
                                     "defaultRequest": {"cpu": "50m", "memory": "16Mi"},
                                     "max": {"cpu": "200m", "memory": "64Mi"}}]}})


def test_limitrange_defaults_and_maximum(kube, ns):
    _limits(kube, ns)
    kube.apply(kube.pod(ns, "plain", SLEEP))
    res = kube.get("pod", "plain", ns)["spec"]["containers"][0]["resources"]
    assert res == {"limits": {"cpu": "100m", "memory": "32Mi"}, "requests": {"cpu": "50m", "memory": "16Mi"}}, res
    big = kube.pod(ns, "big", SLEEP, container={"resources": {"limits": {"memory": "100Mi"}}})
    proc = kube.create(big)
    assert proc.returncode != 0, "a pod above the LimitRange's max was admitted"
    assert "maximum memory usage per Container is 64Mi" in proc.stderr, proc.stderr
    # the default memory limit is the container's real cgroup limit
    kube.wait_ready(ns, "plain")
    out = kube.exec(ns, "plain", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout.strip()
    assert out == str(32 * 1024 * 1024), out


def test_resourcequota_refuses_what_exceeds_it(kube, ns):
    _limits(kube, ns)
    kube.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "quota", "namespace": ns},
                "spec": {"hard": {"pods": "2", "requests.memory": "40Mi", "limits.cpu": "1"}}})
    kube.wait("the quota's status", lambda: kube.get("resourcequota", "quota", ns).get("status", {}).get("hard"), ns, 30,
              "resourcequota", "quota")
    assert kube.create(kube.pod(ns, "one", SLEEP)).returncode == 0
    # 16Mi + 32Mi > 40Mi: refused on memory although only one pod runs
    proc = kube.create(kube.pod(ns, "fat", SLEEP, container={"resources": {"requests": {"memory": "32Mi"},
                                                                            "limits": {"memory": "32Mi"}}}))
    assert proc.returncode != 0 and "exceeded quota" in proc.stderr and "requests.memory" in proc.stderr, proc.stderr
    assert kube.create(kube.pod(ns, "two", SLEEP)).returncode == 0
    proc = kube.create(kube.pod(ns, "three", SLEEP))
    assert proc.returncode != 0 and "exceeded quota" in proc.stderr and "pods" in proc.stderr, proc.stderr
    used = kube.get("resourcequota", "quota", ns)["status"].get("used", {})
    kube.wait("quota usage pods=2", lambda: kube.get("resourcequota", "quota", ns)["status"].get("used", {}).get("pods") == "2",
              ns, 30, "resourcequota", "quota")
    assert used


def test_readonly_volume_mount_gives_erofs(kube, ns):
    script = ("touch /rw/ok && echo rw-ok; "
              "touch /ro/x 2>/tmp/err; echo ro-status=$?; cat /tmp/err; exec sleep 3600")
    kube.run_pod(ns, "vols", ["sh", "-c", script],
                 volumes=[{"name": "data", "emptyDir": {}}],
                 container={"volumeMounts": [{"name": "data", "mountPath": "/ro", "readOnly": True},
                                             {"name": "data", "mountPath": "/rw"}]})
    kube.wait("the script's output", lambda: "ro-status" in kube.logs(ns, "vols"), ns, 30, "pod", "vols")
    logs = kube.logs(ns, "vols")
    assert "rw-ok" in logs, logs  # the same volume is writable where it is not mounted readOnly
    assert "ro-status=1" in logs and "Read-only file system" in logs, logs  # strerror(EROFS)
    # and the file written through /rw is visible (read-only) through /ro
    assert kube.exec(ns, "vols", "ls", "/ro/ok").returncode == 0


def test_run_as_non_root_is_enforced(kube, ns):
    # the image has no USER, so it would run as root: the kubelet refuses to start it
    kube.apply(kube.pod(ns, "refused", SLEEP, securityContext={"runAsNonRoot": True}))

    def refused():
        st = kube.get("pod", "refused", ns).get("status", {}).get("containerStatuses", [{}])[0]
        waiting = st.get("state", {}).get("waiting", {})
        return waiting.get("reason") == "CreateContainerConfigError" and waiting.get("message")

    message = kube.wait("runAsNonRoot refusal", refused, ns, 60, "pod", "refused")
    assert "runAsNonRoot" in message and "root" in message, message
    assert kube.pod_phase(ns, "refused") == "Pending"
    kube.run_pod(ns, "user", SLEEP, securityContext={"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000})
    assert kube.exec(ns, "user", "id", "-u").stdout.strip() == "1000"


def _status(kube, ns, pod):
    return dict(line.split(":\t", 1) for line in kube.exec(ns, pod, "cat", "/proc/self/status").stdout.splitlines()
                if ":\t" in line)


def test_dropped_capabilities_are_gone(kube, ns):
    kube.run_pod(ns, "default-caps", SLEEP)
    kube.run_pod(ns, "no-caps", SLEEP, container={"securityContext": {"capabilities": {"drop": ["ALL"]}}})
    assert int(_status(kube, ns, "default-caps")["CapEff"], 16) != 0
    assert int(_status(kube, ns, "no-caps")["CapEff"], 16) == 0
    assert int(_status(kube, ns, "no-caps")["CapBnd"], 16) == 0
    chown = "touch /tmp/f && chown 1234 /tmp/f"
    assert kube.exec(ns, "default-caps", "sh", "-c", chown).returncode == 0  # CAP_CHOWN by default
    proc = kube.exec(ns, "no-caps", "sh", "-c", chown)  # root without CAP_CHOWN
    assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc.stdout + proc.stderr


def test_seccomp_runtime_default_is_applied(kube, ns):
    kube.run_pod(ns, "confined", SLEEP, securityContext={"seccompProfile": {"type": "RuntimeDefault"}})
    kube.run_pod(ns, "unconfined", SLEEP, securityContext={"seccompProfile": {"type": "Unconfined"}})
    confined, unconfined = _status(kube, ns, "confined"), _status(kube, ns, "unconfined")
    assert confined["Seccomp"].strip() == "2" and int(confined["Seccomp_filters"]) >= 1, confined  # 2: filter mode
    assert unconfined["Seccomp"].strip() == "0", unconfined
