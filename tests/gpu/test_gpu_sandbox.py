"""GPUs in a sandbox, on real hardware: a session granted GPUs sees exactly those device nodes and
CUDA enumerates them from 0; a session granted none sees no GPU at all. Rendered by the VRE's own
``sandbox_argv`` from a plan, run with a real CUDA program (PyTorch) as an unprivileged uid.

Skipped where the host has no NVIDIA GPU (CI, the development machines). On a GPU host, either
``pytest tests/gpu`` or ``python tests/gpu/test_gpu_sandbox.py`` (no pytest needed) runs it.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hub"))

from vre.backends import netns  # noqa: E402
from vre.backends.bwrap import identity_files, sandbox_argv  # noqa: E402
from vre.backends.host import prepare_host  # noqa: E402
from vre.gpus import device_nodes, gpu_env, host_devices  # noqa: E402
from vre.plan import Mount, SessionPlan, runtime_mounts, thread_limits  # noqa: E402
from vre.settings import Settings  # noqa: E402

PROBE = """
import json, os
import torch
n = torch.cuda.device_count()
info = {"count": n, "dev": sorted(d for d in os.listdir("/dev") if d.startswith("nvidia")),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "uid": os.getuid()}
if n:
    x = torch.ones(1024, 1024, device="cuda:0")
    info["name"] = torch.cuda.get_device_name(0)
    info["sum"] = float((x @ x).sum().item())
print("@@" + json.dumps(info))
"""


def run_in_sandbox(python: str, devices: tuple[int, ...]) -> dict:
    """Render a one-dataset-less plan as the VRE does and run the probe in it as uid 200001."""
    base = Path(tempfile.mkdtemp(prefix="vre-gpu-"))
    settings = Settings(state_dir=base / "state", run_dir=base / "run", instance="vregpu",
                        session_env=Path(python).absolute().parents[1])  # the venv, not its interpreter
    run = settings.sessions_run_dir / "gpu-check"
    plan = SessionPlan(
        user="gpu", project="gpucheck", profile="gpu", role="session", session_id="gpu-check",
        uid=200001, gid=300001, cpu=2, mem_mb=8192, gpus=len(devices), network="vregpu-gpucheck",
        datasets=(), run_dir=run,
        mounts=(Mount(base / "home", "/home/jovyan", False, "home"),
                Mount(base / "ws", "/home/jovyan/project", False, "workspace"),
                *runtime_mounts("session", run, settings.hub_socket_dir)),
        env={"HOME": "/home/jovyan", "LANG": "C.UTF-8", **thread_limits(2)})
    try:
        prepare_host(plan, identity_files(plan))
        asyncio.run(netns.ensure(plan.network))
        argv = sandbox_argv(settings, plan, devices=devices) + [python, "-c", PROBE]
        env = {**plan.env, **(gpu_env(devices) if devices else {}), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if "LD_LIBRARY_PATH" in os.environ:  # hosts whose ip/bwrap come from an unpacked package
            env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd="/")
        if out.returncode:
            raise AssertionError(f"sandbox exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.rsplit("@@", 1)[1])
    finally:
        asyncio.run(netns.delete_if_unused("vregpu-gpucheck"))
        shutil.rmtree(base, ignore_errors=True)


def torch_python() -> str | None:
    for python in (os.environ.get("VRE_GPU_PYTHON"), sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0:
            return python
    return None


def check() -> dict:
    python = torch_python()
    assert python, "no Python with torch (set VRE_GPU_PYTHON)"
    have = host_devices(Settings())
    assert have, "no /dev/nvidiaN on this host"
    granted = run_in_sandbox(python, (have[-1],))   # the host's last GPU: inside, it is cuda:0
    none = run_in_sandbox(python, ())
    return {"host_gpus": list(have), "nodes_granted": device_nodes((have[-1],)), "granted": granted, "none": none}


def assert_result(r: dict) -> None:
    g, n = r["granted"], r["none"]
    last = r["host_gpus"][-1]
    assert g["count"] == 1 and g["visible"] == "0" and g["uid"] == 1000, g
    assert f"nvidia{last}" in g["dev"] and not any(d[6:].isdigit() and d != f"nvidia{last}" for d in g["dev"]), g
    assert g["sum"] == 1024.0 ** 3, g                      # a real CUDA matrix product ran
    # (the driver library makes an empty /dev/nvidia-caps in a sandbox without GPUs: no node in it)
    assert n["count"] == 0 and not any(d[6:].isdigit() for d in n["dev"]), n


def test_sandbox_sees_exactly_its_granted_gpus():
    import pytest

    if not glob.glob("/dev/nvidia[0-9]*"):
        pytest.skip("no NVIDIA GPU on this machine: this check runs on GPU hosts only")
    if os.geteuid() != 0 or not shutil.which("bwrap"):
        pytest.skip("needs root and bubblewrap")
    if not torch_python():
        pytest.skip("no Python with torch on this GPU host (set VRE_GPU_PYTHON)")
    assert_result(check())


if __name__ == "__main__":
    result = check()
    print(json.dumps(result, indent=2))
    assert_result(result)
    print("GPU sandbox check: PASSED")
