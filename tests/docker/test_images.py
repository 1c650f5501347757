"""The VRE images, built here from the local Debian base with Podman (see conftest.py): who they run
as, the imaging stack, pydicom's decoder plugins, the kernels and their thread limits, a read-only
root filesystem, the GPU image's torch and MONAI, and the hub image's commands."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

pytestmark = pytest.mark.docker

SESSION_UID, SESSION_GID = 200001, 300001   # how the docker backend runs sessions (uid_base/gid_base)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "TORCH_NUM_THREADS")


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


@pytest.fixture
def manifest(tmp_path):
    """A session manifest granting ``cpu`` CPUs, as the backends write it (/etc/vre/session.json)."""

    def write(cpu: float) -> list[str]:
        path = tmp_path / "session.json"
        path.write_text(json.dumps({"user": "alice", "project": "lung", "cpu": cpu, "mem_mb": 2048, "gpus": 0}))
        os.chmod(tmp_path, 0o755)
        os.chmod(path, 0o644)
        return ["-v", f"{path}:/etc/vre/session.json:ro"]

    return write


# --- users ----------------------------------------------------------------------------------
def test_runs_as_jovyan_not_root(notebook_image, podman_run):
    out = podman_run(notebook_image, "sh", "-c", 'id -u; id -g; id -un; echo "$HOME"; command -v python').stdout.split()
    assert out == ["1000", "100", "jovyan", "/home/jovyan", "/opt/vre/venv/bin/python"]


def test_runs_as_any_uid_with_a_bind_mounted_home(notebook_image, podman_run, tmp_path):
    """The docker backend runs the account's host uid and the project's gid, home bind-mounted;
    there is no passwd entry for them and nothing may need one."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, SESSION_UID, SESSION_GID)
    code = """
        import getpass, os, pathlib, subprocess
        print(os.getuid(), os.getgid())
        p = pathlib.Path.home() / "notes.txt"; p.write_text("ok"); print(p, p.read_text())
        subprocess.run(["jupyter", "--paths"], check=True, capture_output=True)
        import IPython.paths; print("ipython", IPython.paths.get_ipython_dir())
    """
    out = podman_run(notebook_image, *py(code),
                     args=["--user", f"{SESSION_UID}:{SESSION_GID}", "-e", "USER=alice",
                           "-v", f"{home}:/home/jovyan"]).stdout
    assert f"{SESSION_UID} {SESSION_GID}" in out
    assert "/home/jovyan/notes.txt ok" in out
    assert (home / "notes.txt").stat().st_uid == SESSION_UID
    assert "ipython /home/jovyan/.ipython" in out


# --- the imaging stack ----------------------------------------------------------------------
def test_imaging_stack_imports(notebook_image, podman_run):
    code = """
        import pydicom, SimpleITK, itk, nibabel, skimage, dask.distributed, papermill
        import numpy, scipy, pandas, matplotlib, jupyter_server_proxy, cloudpickle, vre_session
        import jupyterhub, jupyterlab
        print("jupyterhub", jupyterhub.__version__, "jupyterlab", jupyterlab.__version__)
    """
    out = podman_run(notebook_image, *py(code)).stdout
    assert "jupyterhub 6.1." in out and "jupyterlab 4.6." in out



def test_itkwidgets_viewer_is_in_the_image_and_kernels_point_at_it(notebook_image, podman_run):
    """itkwidgets offline (scripts/itk_assets.py, the image's itk step): the viewer's files are in
    the environment and the kernel config every kernel reads makes ``itkwidgets`` load them from the
    session's own server (the placeholder origin that the patched Lab extension maps)."""
    code = """
        import pathlib, sys
        from traitlets.config import Config
        root = pathlib.Path(sys.prefix, "share/vre-itk/static/vre-itk")
        print("viewer", (root / "itk-vtk-viewer/index.html").is_file(), (root / "VERSIONS.json").is_file())
        c = Config(); c.InteractiveShellApp.exec_lines = []
        exec(pathlib.Path(sys.prefix, "etc/ipython/ipython_kernel_config.py").read_text(), {"c": c})
        for line in c.InteractiveShellApp.exec_lines:
            exec(line)
        import itkwidgets.viewer
        print("src", itkwidgets.viewer.ITK_VIEWER_SRC)
    """
    out = podman_run(notebook_image, *py(code)).stdout
    assert "viewer True True" in out, out
    assert "src http://vre-session.invalid/vre-itk/itk-vtk-viewer/index.html" in out, out

def test_pydicom_decodes_compressed_data_through_the_plugins(notebook_image, podman_run):
    """JPEG 2000 (openjpeg), JPEG-LS (libjpeg) and RLE (pylibjpeg-rle), lossless: the same pixels
    as the uncompressed file; JPEG baseline decodes too. pydicom's own test files, no network."""
    code = """
        import numpy as np
        from pydicom.data import get_testdata_file
        from pydicom.pixels import pixel_array
        ref = pixel_array(get_testdata_file("MR_small.dcm"))
        for name, plugin in [("MR_small_jp2klossless.dcm", "pylibjpeg"),
                             ("MR_small_jpeg_ls_lossless.dcm", "pylibjpeg"),
                             ("MR_small_RLE.dcm", "pylibjpeg")]:
            arr = pixel_array(get_testdata_file(name), decoding_plugin=plugin)
            assert np.array_equal(arr, ref), name
            print("ok", name)
        rgb = pixel_array(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"), decoding_plugin="pylibjpeg")
        print("ok jpeg", rgb.shape)
    """
    out = podman_run(notebook_image, *py(code)).stdout
    assert out.count("ok ") == 4, out


# --- kernels --------------------------------------------------------------------------------
def test_imaging_kernelspec_is_listed_and_default(notebook_image, podman_run):
    specs = json.loads(podman_run(notebook_image, "jupyter", "kernelspec", "list", "--json").stdout)["kernelspecs"]
    spec = specs["python3-imaging"]["spec"]
    assert spec["display_name"] == "Python 3 (imaging)"
    assert spec["argv"][:3] == ["python", "-m", "vre_session.kernel_launch"]
    assert "python3-imaging-gpu" not in specs  # only in the GPU image
    code = """
        from jupyter_server.serverapp import ServerApp
        app = ServerApp(); app.initialize(argv=[], find_extensions=False, new_httpserver=False)
        print("default", app.kernel_manager.default_kernel_name)
    """
    assert "default python3-imaging" in podman_run(notebook_image, *py(code)).stdout


KERNEL_PROBE = """
    import json, os
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="{kernel}", startup_timeout=120)
    try:
        out = []
        code = ("import os, json, numpy\\n"
                "print(json.dumps({{v: os.environ.get(v) for v in {vars!r}}}))\\n" + {extra!r})
        reply = kc.execute_interactive(code, timeout=120,
            output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        print("".join(out))
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
"""


def run_kernel(podman_run, image, kernel, args, extra=""):
    code = KERNEL_PROBE.format(kernel=kernel, vars=THREAD_VARS, extra=extra)
    out = podman_run(image, *py(code), args=["--user", f"{SESSION_UID}:{SESSION_GID}", "--tmpfs", "/home/jovyan",
                                             *args], timeout=300).stdout
    lines = out.strip().splitlines()
    return json.loads(lines[0]), lines[1:]


def test_kernel_threads_follow_the_cpu_grant_of_the_manifest(notebook_image, podman_run, manifest):
    """A real kernel (jupyter_client, the image's kernelspec) started with no thread variables in
    its environment: the launcher sets them from the manifest's grant (1.5 CPUs -> 2 threads)."""
    env, _ = run_kernel(podman_run, notebook_image, "python3-imaging", manifest(1.5))
    assert env == {v: "2" for v in THREAD_VARS}


def test_kernel_keeps_lower_plan_values_and_caps_higher_ones(notebook_image, podman_run, manifest):
    env, _ = run_kernel(podman_run, notebook_image, "python3-imaging",
                        [*manifest(2), "-e", "OMP_NUM_THREADS=1", "-e", "MKL_NUM_THREADS=64"])
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "2"


def test_launcher_reads_the_cgroup_quota_without_a_manifest(notebook_image, podman_run):
    out = podman_run(notebook_image, "python", "-m", "vre_session.kernel_launch", "--print",
                     args=["--cpus", "1"]).stdout
    info = json.loads(out)
    assert info["source"] == "cgroup" and info["cpu"] == 1.0
    assert all(info["env"][v] == "1" for v in THREAD_VARS)


# --- read-only root -------------------------------------------------------------------------
def test_lab_starts_with_a_read_only_root(notebook_image, podman_run):
    """--read-only with only /tmp writable (home not mounted, arbitrary uid): jupyter lab starts,
    serves /lab and its extension list includes vre-session; jupyterhub-singleuser runs."""
    code = """
        import json, subprocess, sys, time, urllib.request
        print(subprocess.run(["jupyterhub-singleuser", "--version"], capture_output=True, text=True,
                             check=True).stdout.strip())
        srv = subprocess.Popen(["jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--port=8888",
                                "--IdentityProvider.token=t0ken", "--ServerApp.root_dir=/tmp"],
                               stdout=subprocess.DEVNULL, stderr=open("/tmp/lab.log", "w"))
        base = "http://127.0.0.1:8888"
        try:
            for _ in range(120):
                try:
                    status = json.load(urllib.request.urlopen(base + "/api/status?token=t0ken", timeout=2))
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                sys.exit("lab did not start:\\n" + open("/tmp/lab.log").read())
            page = urllib.request.urlopen(base + "/lab?token=t0ken", timeout=10).read().decode()
            print("status", status["started"] is not None, "vre-session" in page)
        finally:
            srv.terminate(); srv.wait(10)
    """
    out = podman_run(notebook_image, *py(code),
                     args=["--read-only", "--tmpfs", "/tmp", "--user", f"{SESSION_UID}:{SESSION_GID}"],
                     timeout=300).stdout
    assert out.splitlines()[0].startswith("6.1."), out
    assert "status True True" in out, out


# --- GPU image ------------------------------------------------------------------------------
def test_gpu_image_has_torch_monai_and_the_gpu_kernel(notebook_gpu_image, podman_run, manifest):
    out = podman_run(notebook_gpu_image, *py("""
        import torch, monai, pydicom, SimpleITK
        print("torch", torch.__version__, "monai", monai.__version__)
    """)).stdout
    assert "torch 2.13.0" in out and "monai" in out
    specs = json.loads(podman_run(notebook_gpu_image, "jupyter", "kernelspec", "list", "--json").stdout)["kernelspecs"]
    assert specs["python3-imaging-gpu"]["spec"]["display_name"] == "Python 3 (imaging, GPU)"
    assert "python3-imaging" in specs
    env, lines = run_kernel(podman_run, notebook_gpu_image, "python3-imaging-gpu", manifest(3),
                            extra="import torch\nprint(torch.get_num_threads(), torch.get_num_interop_threads())\n")
    expected = str(min(3, len(os.sched_getaffinity(0))))  # the grant, at most the CPUs there are
    assert env["TORCH_NUM_THREADS"] == expected
    assert lines == [f"{expected} {expected}"]  # torch.set_num_threads by the launcher's import hook


# --- hub image ------------------------------------------------------------------------------
def test_hub_image_runs_vre_jupyterhub_and_the_proxy(hub_image, podman_run):
    out = podman_run(hub_image, "sh", "-c",
                     "vre --help >/dev/null && echo vre-ok; jupyterhub --version; "
                     "/opt/vre/venv/node/node_modules/.bin/configurable-http-proxy --version; "
                     'test -f "$VRE_HUB_CONFIG" && echo config-ok').stdout.split()
    assert out[0] == "vre-ok" and out[1].startswith("6.1.") and out[2].startswith("5.") and out[3] == "config-ok"
