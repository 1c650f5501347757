"""The docker backend's translation of a SessionPlan into container and host config (policy is
tested on the plan; the integration suite runs the same security tests against real containers)."""

from pathlib import Path

import docker
import pytest

from vre.backends.plan_spawner import server_args, server_command
from vre.backends.docker import (SYSCTLS, VREDockerSpawner, bridge_name, container_config, gpu_config,
                                 identity_files, network_config)
from vre.plan import Mount, SessionPlan, runtime_mounts
from vre.settings import Settings, SettingsError, load

SETTINGS = Settings(state_dir=Path("/st"), run_dir=Path("/run/vre-t"), instance="vre")
RUN = Path("/run/vre-t/sessions/ann-lung")


def make_plan(**kw) -> SessionPlan:
    base = dict(user="ann", project="lung", profile="small", role="session", session_id="ann-lung",
                uid=200001, gid=300001, cpu=1.5, mem_mb=2048, gpus=0, network="vre-lung",
                datasets=("ct",),
                mounts=(Mount(Path("/srv/ct"), "/data/ct", True), Mount(Path("/st/cat/ct"), "/opt/vre/catalog/ct", True),
                        Mount(Path("/st/home"), "/home/jovyan", False, "home"),
                        Mount(Path("/st/ws"), "/home/jovyan/project", False, "workspace"),
                        *runtime_mounts("session", RUN, Path("/run/vre-t/hub"))),
                env={"OMP_NUM_THREADS": "2", "VRE_PROJECT": "lung"},
                labels={"vre.user": "ann", "vre.project": "lung", "vre.session": "ann-lung", "vre.role": "session"})
    base.update(kw)
    return SessionPlan(**base)


def render(plan=None, **kw):
    plan = plan or make_plan()
    args = dict(image="localhost/vre-notebook:latest", name="vre-ann-lung",
                env={"JUPYTERHUB_API_TOKEN": "t", **plan.env},
                command=[*server_command("python"), *server_args(plan)])
    args.update(kw)
    return container_config(SETTINGS, plan, **args)


def binds(host) -> dict[str, tuple[str, str]]:
    """target -> (source, mode)"""
    out = {}
    for b in host["binds"]:
        source, target, mode = b.split(":")
        out[target] = (source, mode)
    return out


def test_mounts_are_exactly_the_plan_plus_manifest_identity_and_sockets():
    _, host = render()
    assert binds(host) == {
        "/data/ct": ("/srv/ct", "ro"),
        "/opt/vre/catalog/ct": ("/st/cat/ct", "ro"),
        "/home/jovyan": ("/st/home", "rw"),
        "/home/jovyan/project": ("/st/ws", "rw"),
        "/etc/vre/session.json": (f"{RUN}/session.json", "ro"),
        "/etc/passwd": (f"{RUN}/passwd", "ro"),
        "/etc/group": (f"{RUN}/group", "ro"),
        "/run/vre/hub": ("/run/vre-t/hub", "ro"),  # the directory: a restarted hub recreates the socket
        "/run/vre/session": (f"{RUN}/sock", "rw"),
        "/run/vre/spool": (f"{RUN}/spool", "rw"),
    }
    writable = sorted(t for t, (_, mode) in binds(host).items() if mode == "rw")
    assert writable == ["/home/jovyan", "/home/jovyan/project", "/run/vre/session", "/run/vre/spool"]


def test_identity_limits_and_hardening():
    create, host = render()
    assert create["user"] == "200001:300001"            # the account's uid, the project's gid
    assert host["group_add"] == [str(SETTINGS.sessions_gid)]  # may reach the hub socket
    assert host["read_only"] is True
    assert set(host["tmpfs"]) == {"/tmp", "/var/tmp", "/run"}
    assert host["cap_drop"] == ["ALL"] and "cap_add" not in host
    assert host["security_opt"] == ["no-new-privileges"]
    assert "privileged" not in host and host["ipc_mode"] == "private"
    assert host["mem_limit"] == "2048m" and host["memswap_limit"] == "2048m"
    assert host["cpu_period"] == 100_000 and host["cpu_quota"] == 150_000
    assert host["pids_limit"] == 2048
    assert create["working_dir"] == "/home/jovyan" and create["hostname"] == "lung"
    assert create["labels"]["vre.session"] == "ann-lung" and create["labels"]["vre.instance"] == "vre"
    assert create["environment"]["OMP_NUM_THREADS"] == "2"


def test_network_is_the_project_island_only():
    _, host = render()
    assert host["network_mode"] == "vre-lung"
    assert "port_bindings" not in host and "publish_all_ports" not in host
    assert host["sysctls"] == SYSCTLS  # no IPv6: its link-local addresses would reach the host's bridge
    net = network_config(SETTINGS, make_plan())
    assert net["name"] == "vre-lung" and net["internal"] is True and net["driver"] == "bridge"
    assert net["options"]["com.docker.network.bridge.name"] == bridge_name("vre-lung")
    assert len(bridge_name("vre-a-very-long-project-name-indeed")) <= 15  # Linux interface names


def test_server_listens_on_the_bound_socket_with_the_session_umask():
    create, _ = render()
    cmd = create["command"]
    assert cmd[:2] == ["/bin/sh", "-c"] and "umask 0002" in cmd[2]
    assert "vre_session.serve" in cmd and "--sock=/run/vre/session/jupyter.sock" in cmd
    assert "--KernelManager.transport=ipc" in cmd


def test_tmpfs_belongs_to_the_session_on_each_engine():
    _, podman = render(engine="podman")
    _, dock = render(engine="docker")
    assert ",U," in podman["tmpfs"]["/tmp"] and "mode=1777" in dock["tmpfs"]["/tmp"]


def test_host_config_is_valid_for_the_docker_api():
    _, host = render(gpu_devices=(1,), gpu_nodes=["/dev/nvidia1", "/dev/nvidiactl"])
    hc = docker.types.HostConfig(version="1.41", **host)
    assert hc["ReadonlyRootfs"] is True and hc["CapDrop"] == ["ALL"] and hc["NetworkMode"] == "vre-lung"
    assert hc["Memory"] == 2048 * 1024**2 and hc["PidsLimit"] == 2048
    assert hc["Devices"][0]["PathOnHost"] == "/dev/nvidia1"


def test_gpus_as_device_nodes():
    plan = make_plan(gpus=2)
    fake_nodes = ["/dev/nvidia2", "/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    create, host = render(plan, gpu_devices=(2, 3), gpu_nodes=fake_nodes)
    assert host["devices"] == [f"{n}:{n}:rwm" for n in fake_nodes]
    env = create["environment"]
    assert env["NVIDIA_VISIBLE_DEVICES"] == "2,3"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # inside, only the granted GPUs are enumerated
    assert "device_requests" not in host


def test_gpus_as_device_requests():
    host, env = gpu_config((1,), ["/dev/nvidia1"], "device_requests")
    (request,) = host["device_requests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == ["1"] and request["Capabilities"] == [["gpu"]]
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1"


def test_no_gpus_no_devices():
    create, host = render()
    assert "devices" not in host and "device_requests" not in host
    assert "CUDA_VISIBLE_DEVICES" not in create["environment"]


def test_paths_with_colons_are_refused():
    plan = make_plan(mounts=(Mount(Path("/srv/a:b"), "/data/ab", True),))
    with pytest.raises(RuntimeError, match="':'"):
        render(plan)


def test_identity_files_name_the_account_and_project():
    files = identity_files(make_plan(), 299999)
    assert "jovyan:x:200001:300001:ann:/home/jovyan:/bin/bash" in files["passwd"]
    assert "lung:x:300001:jovyan" in files["group"] and "vre-sessions:x:299999:jovyan" in files["group"]


def test_spawner_defaults_come_from_settings():
    sp = VREDockerSpawner(settings=SETTINGS.replace(docker_url="unix:///x.sock", notebook_image="img:1"))
    assert sp.image == "img:1" and sp.client_kwargs == {"base_url": "unix:///x.sock"}
    assert sp.ip == "127.0.0.1" and sp.port == 8888 and sp.remove is True


def test_backend_setting(tmp_path):
    assert load(environ={"VRE_BACKEND": "docker", "VRE_CONFIG": str(_toml(tmp_path, ""))}).backend == "docker"
    with pytest.raises(SettingsError, match="'sandbox'.*'docker'.*'kubernetes'"):
        load(environ={"VRE_BACKEND": "podman", "VRE_CONFIG": str(_toml(tmp_path, ""))})
    with pytest.raises(SettingsError, match="docker_url"):
        load(environ={"VRE_DOCKER_URL": "/run/podman.sock", "VRE_CONFIG": str(_toml(tmp_path, ""))})


def _toml(tmp_path, text):
    path = tmp_path / "vre.toml"
    path.write_text(text)
    return path


def test_binds_are_the_plan_mounts_and_nothing_else():
    plan = make_plan()
    _, host = render(plan)
    assert binds(host) == {m.target: (str(m.source), "ro" if m.readonly else "rw") for m in plan.mounts}


def test_the_launch_gate_holds_the_command_until_the_hub_opens_it():
    create, host = render(gate_dir=RUN / "gate")
    assert binds(host)["/run/vre/gate"] == (f"{RUN}/gate", "ro")
    script = create["command"][2]
    assert script.index("/run/vre/gate/open") < script.index('exec "$@"')  # nothing runs before it
    _, host = render()
    assert "/run/vre/gate" not in binds(host)
