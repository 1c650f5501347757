"""Sandbox sessions run from vre-session's dependencies, container sessions from the images' pins:
every one of those dependencies (the widgets' too) must be pinned in each notebook image at a
version it accepts, so both backends give notebooks the same libraries."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SESSION_DEPS = [Requirement(d) for d in
                tomllib.loads((ROOT / "extensions/pyproject.toml").read_text())["project"]["dependencies"]]


def pins(image: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "images/constraints" / f"{image}.txt").read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            out[canonicalize_name(name)] = version
    return out


@pytest.mark.parametrize("image", ["notebook", "notebook-gpu"])
def test_images_pin_every_session_dependency(image):
    pinned = pins(image)
    wrong = {str(r): v for r in SESSION_DEPS
             if (v := pinned.get(canonicalize_name(r.name))) is None or not r.specifier.contains(v, prereleases=True)}
    assert wrong == {}, f"images/constraints/{image}.txt misses or contradicts vre-session's requirements: {wrong}"
    assert {"ipywidgets", "jupyterlab-widgets", "widgetsnbextension", "tqdm"} <= pinned.keys()
