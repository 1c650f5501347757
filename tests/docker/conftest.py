"""Shared fixtures of the container tests: Podman, and the VRE images built from the local base.

The images are built once per test session by ``vre.images.build`` (the code behind
``vre images build``): the local Debian base by debootstrap when it is missing, then the images
the tests ask for. A build whose inputs (staged context, build arguments, base image id) did not
change is skipped, so a second run, and every test module here (the docker backend's too), reuse
the same images. Fixtures: ``podman`` (a ``vre.images.Engine``), ``notebook_image``,
``notebook_gpu_image``, ``hub_image`` (tags), ``podman_run`` (runs a command in a throwaway
container, no network by default).

The tests skip, saying why, only when Podman genuinely cannot run here (not installed, not root,
``podman info`` fails); with ``CI=true`` they fail instead: ``scripts/setup --test`` installs and
configures Podman (scripts/podman-setup).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vre import images

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
BUILD_LOG_DIR = Path(__file__).resolve().parents[2] / "test-artifacts"


def _podman_unavailable() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/podman-setup installs and configures it)"
    if os.geteuid() != 0:
        return "the images are built and run by root's Podman (debootstrap, cgroupfs); run the tests as root"
    try:
        proc = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "'podman info' did not answer within 120 s"
    if proc.returncode != 0:
        return f"'podman info' failed: {proc.stderr.strip()[-300:]} (run scripts/podman-setup)"
    return None


@pytest.fixture(scope="session")
def podman() -> images.Engine:
    reason = _podman_unavailable()
    if reason:
        if CI:
            pytest.fail(f"CI=true, so the container tests must run, but: {reason}")
        pytest.skip(reason)
    return images.find_engine("podman")


_built: dict[str, str] = {}


def _image(podman: images.Engine, name: str) -> str:
    """Build (or reuse) ``name`` from the local base; a failed build fails the tests that need it."""
    if name not in _built:
        try:
            _built.update(images.build([name], engine=podman.name))
        except images.ImageError as e:
            pytest.fail(f"building the {name} image failed: {e}")
    return _built[name]


@pytest.fixture(scope="session")
def notebook_image(podman) -> str:
    """Tag of the notebook image (localhost/vre-notebook:<version>), built from the local base."""
    return _image(podman, "notebook")


@pytest.fixture(scope="session")
def notebook_gpu_image(podman, notebook_image) -> str:
    """Tag of the GPU notebook image (here: on the notebook image, with the CPU torch wheel)."""
    if not images.torch_wheels(images.DEFAULT_WHEELS):
        # PyPI's Linux torch wheels are the CUDA builds (several GB with their NVIDIA libraries);
        # the CPU build lives on an index these machines cannot reach. Say so; never pull GBs.
        pytest.skip(f"no CPU torch wheel in {images.DEFAULT_WHEELS} on this machine: building notebook-gpu "
                    "here would download the multi-GB CUDA build of torch, which CI does not do. Put a CPU "
                    f"torch wheel (torch-*.whl) in {images.DEFAULT_WHEELS} to build and test the GPU image")
    return _image(podman, "notebook-gpu")


@pytest.fixture(scope="session")
def hub_image(podman) -> str:
    """Tag of the hub image (localhost/vre-hub:<version>)."""
    return _image(podman, "hub")


@pytest.fixture(scope="session")
def podman_run(podman):
    """``podman_run(image, *cmd, args=[...], input=None, timeout=180)``: run a throwaway container
    (``--rm --network=none`` plus ``args``) and return the CompletedProcess (text output)."""

    def run(image: str, *cmd: str, args: list[str] = (), input: str | None = None, timeout: float = 180,
            check: bool = True) -> subprocess.CompletedProcess:
        argv = [podman.path, "run", "--rm", "--network=none", *args, image, *cmd]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                                 f"\n--- stderr\n{proc.stderr[-3000:]}")
        return proc

    return run
