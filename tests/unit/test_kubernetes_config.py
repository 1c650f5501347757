"""backend = "kubernetes": its settings say what is wrong, and the hub it configures starts the
pod spawner and none of the services that act on the hub's own machine."""

import shutil
import tempfile
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from vre.settings import SettingsError, k8s_images, load


def _load(tmp_path, text="", **env):
    path = tmp_path / "vre.toml"
    path.write_text(f'backend = "kubernetes"\nstate_dir = "{tmp_path / "state"}"\n' + text)
    return load(path, environ=env)


def test_kubernetes_backend_and_its_defaults(tmp_path):
    s = _load(tmp_path)
    assert s.backend == "kubernetes" and s.k8s_kubeconfig == "" and s.k8s_hub_namespace == "vre"
    assert s.k8s_dataset_volume == "hostPath" and s.k8s_storage == "hostPath"
    assert k8s_images(s) == ("localhost/vre-notebook:latest",)  # the session image, nothing else
    s = _load(tmp_path, 'notebook_gpu_image = "reg.example/gpu:1"\n')
    assert k8s_images(s) == ("localhost/vre-notebook:latest", "reg.example/gpu:1")
    s = _load(tmp_path, 'notebook_image = "reg.example/nb:2"\n', VRE_K8S_IMAGE_ALLOWLIST="reg.example/nb:2, x/y:1")
    assert k8s_images(s) == ("reg.example/nb:2", "x/y:1")


@pytest.mark.parametrize("text, fragment", [
    ('k8s_kubeconfig = "admin.kubeconfig"\n', "absolute path"),
    ('k8s_hub_namespace = "VRE_hub"\n', "not a namespace name"),
    ('k8s_hub_port = 70000\n', "not a TCP port"),
    ('k8s_image_allowlist = "ok:1, bad image"\n', "'bad image' is not an image reference"),
    ('k8s_image_allowlist = "other:1"\n', "is not in k8s_image_allowlist"),
    ('k8s_dataset_volume = "hostpath"\n', "use one of hostPath, nfs, pvc"),
    ('k8s_dataset_volume = "nfs"\n', "k8s_nfs_server must name"),
    ('k8s_storage = "nfs"\n', "use one of hostPath, pvc"),
    ('k8s_storage_class = "Fast SSD"\n', "not a StorageClass name"),
    ('k8s_node_state_dir = "var/lib/vre"\n', "must be an absolute path on the node"),
    ('k8s_home_size = "10 GB"\n', "k8s_home_size '10 GB' is not a size: write e.g. 10Gi"),
    ('k8s_workspace_size = "0Gi"\n', "k8s_workspace_size '0Gi' is not a size"),
    ('k8s_gpu_node_selector = {gpu = 1}\n', "a label value is a string"),
])
def test_bad_kubernetes_settings_say_what_to_fix(tmp_path, text, fragment):
    with pytest.raises(SettingsError) as e:
        _load(tmp_path, text)
    assert fragment in str(e.value)


def test_hub_on_kubernetes(tmp_path, monkeypatch):
    from vre.backends.kubernetes import KubernetesSpawner
    from vre.hubconfig import configure

    run = tempfile.mkdtemp(prefix="vre-k8s-")  # socket paths: short
    s = _load(tmp_path, f'k8s_hub_port = 8181\nrun_dir = "{run}/run"\n')
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")   # as in a pod
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    c = Config()
    configure(c, s)
    assert c.JupyterHub.spawner_class is KubernetesSpawner and c.KubernetesSpawner.settings is s
    names = [svc["name"] for svc in c.JupyterHub.services]
    # hostview watches this machine's mounts: not here; the job engine starts pods (jobs/pods.py)
    assert "vre-hostview" not in names
    assert {"vre-audit-sealer", "vre", "vre-access", "vre-jobs"} <= set(names)
    engine = next(svc for svc in c.JupyterHub.services if svc["name"] == "vre-jobs")["environment"]
    assert engine["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and engine["KUBERNETES_SERVICE_PORT"] == "443"
    assert "UNRELATED_SECRET" not in engine   # the hub's environment is not passed on
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8181"         # session pods reach it on TCP
    assert c.JupyterHub.hub_connect_url == "http://127.0.0.1:8181" == s.hub_local_url  # its services, the access layer
    assert "hub_connect_url" not in c.Spawner                          # pods get the cluster address
    assert oct((s.run_dir / "hub").stat().st_mode & 0o777) == "0o700"  # the hub pod's own, no session group
    shutil.rmtree(run)


def test_spawner_defaults_and_state_across_a_hub_restart(tmp_path):
    from vre.backends.kubernetes import SESSION_PORT, KubernetesSpawner

    s = _load(tmp_path)
    sp = KubernetesSpawner(settings=s)
    assert sp.image == s.notebook_image and sp.image_pull_policy == "IfNotPresent"
    assert (sp.ip, sp.port) == ("0.0.0.0", SESSION_PORT)   # JUPYTERHUB_SERVICE_URL: the pod's address
    assert sp._gpu_capacity() is None and sp._lease_gpus(None) == ()  # Kubernetes picks the devices
    assert not sp._launched() and sp._socket_url() == ""
    state = {"session_id": "ann-lung", "island": "vre-lung", "pod_name": "ann-lung", "pod_namespace": "vre-lung",
             "pod_ip": "10.244.0.5", "node_name": "node-1", "access": {"session": "ann-lung"}}
    sp.load_state(state)
    assert sp._launched() and sp._socket_url() == f"http://10.244.0.5:{SESSION_PORT}"
    with_data, without = SimpleNamespace(datasets=("lidc",)), SimpleNamespace(datasets=())
    assert sp._start_details(with_data) == {"pod": "vre-lung/ann-lung", "node": "node-1", "reads_observed": False}
    assert sp._start_details(without) == {"pod": "vre-lung/ann-lung", "node": "node-1"}  # nothing to observe
    sp.settings = sp.settings.replace(k8s_read_observer=True)
    assert sp._start_details(with_data)["reads_observed"] is True
    again = KubernetesSpawner(settings=s)
    again.load_state(sp.get_state())
    assert again._backend_state() == sp._backend_state() and again.access_policy() == {"session": "ann-lung"}
    again.clear_state()
    assert not again._launched()


def test_the_start_watch_reads_events_with_the_spawners_client_and_leaves_it_open(monkeypatch):
    """The pod watch of a start builds no API client of its own (each costs ~20 ms of the hub's
    loop) and does not close the shared one when it ends."""
    import asyncio
    import json

    import kubernetes_asyncio.client as kc
    from kubernetes_asyncio.watch import watch as kwatch

    from vre.backends.kubernetes import SharedWatch

    def no_new_client(*a, **k):
        raise AssertionError("the watch built an API client of its own")

    class Response:
        def __init__(self, lines):
            self.content = SimpleNamespace(readline=self.readline)
            self.lines, self.released = list(lines), False

        async def readline(self):
            return self.lines.pop(0) if self.lines else b""

        def release(self):
            self.released = True

    pod = {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7"}, "status": {"phase": "Running"}}
    response = Response([json.dumps({"type": "MODIFIED", "object": pod}).encode() + b"\n"])

    async def list_pods(namespace, **kwargs):
        """:rtype: V1PodList"""
        assert kwargs["watch"] is True and kwargs["resource_version"] == "6", kwargs
        return response

    async def main():
        shared = kc.ApiClient()
        monkeypatch.setattr(kwatch, "ApiClient", no_new_client)
        events = []
        async with SharedWatch(shared).stream(list_pods, "ns", resource_version="6", timeout_seconds=5) as w:
            async for event in w:
                events.append(event)
        assert [(e["type"], e["object"].status.phase, e["object"].metadata.resource_version) for e in events] == [
            ("MODIFIED", "Running", "7")]
        assert response.released
        assert not shared.rest_client.pool_manager.closed   # still the spawner's to use
        await shared.close()

    asyncio.run(main())
