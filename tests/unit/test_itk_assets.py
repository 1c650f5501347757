"""scripts/itk_assets.py: the pins agree with the Python pins, and every input is checked (a
tarball or bundle file that is not the pinned one is refused, a replaced string must occur exactly
as expected), so a changed upstream file fails the setup instead of shipping half-patched."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("itk_assets", ROOT / "scripts/itk_assets.py")
itk_assets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(itk_assets)
sys.path.insert(0, str(ROOT / "extensions"))
from vre_session import itk_offline  # noqa: E402


def test_npm_pins_are_the_issue_versions_with_sha256():
    assert {n: v for n, (v, _) in itk_assets.NPM_PINS.items()} == {
        "itk-vtk-viewer": "14.51.0", "itk-viewer-bootstrap-ui": "0.30.0", "imjoy-core": "0.14.5",
        "vue": "2.6.10", "vue-js-modal": "1.3.31"}
    for _, digest in itk_assets.NPM_PINS.values():
        assert len(digest) == 64 and int(digest, 16) >= 0


def test_pip_pins_match_the_session_env_and_the_images():
    deps = tomllib.loads((ROOT / "extensions/pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in itk_assets.PIP_PINS.items():
        assert f"{name}=={version}" in deps, name
        for lock in ("notebook", "notebook-gpu"):
            assert f"{name}=={version}" in (ROOT / f"images/constraints/{lock}.txt").read_text().splitlines(), (lock, name)
        assert f"{name}=={version}" in (ROOT / "images/notebook/requirements.txt").read_text()


def test_kernel_and_lab_agree_on_the_placeholder_origin():
    assert itk_offline.SENTINEL == itk_assets.SENTINEL
    assert itk_offline.SETTINGS["ITK_VIEWER_SRC"].startswith(("http://", "https://"))  # imjoy: http(s) only
    assert ".invalid/" in itk_offline.SENTINEL   # never resolves, whatever the network


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_cached_tarball_that_is_not_the_pinned_one_is_refused(tmp_path):
    version, _ = itk_assets.NPM_PINS["vue"]
    for name, (v, _) in itk_assets.NPM_PINS.items():
        (tmp_path / itk_assets.tarball_name(name, v)).write_bytes(_tgz({"package/dist/x.js": b"not it"}))
    with pytest.raises(itk_assets.AssetError, match="sha256 .* is not the pinned"):
        itk_assets.fetch(tmp_path, offline=True)


def test_offline_without_a_cache_fails_loudly(tmp_path):
    with pytest.raises(itk_assets.AssetError, match="not cached"):
        itk_assets.fetch(tmp_path / "empty", offline=True)


def test_a_wrong_npm_download_is_refused(tmp_path):
    """``npm pack`` (here a stand-in) that brings another file: refused, nothing cached."""
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\nfor a; do :; done\n"   # the last argument: name@version
                    "n=${a%@*}; v=${a##*@}; echo tampered > \"$n-$v.tgz\"\n")
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    with pytest.raises(itk_assets.AssetError, match="not the pinned"):
        itk_assets.fetch(cache, npm=str(fake))
    assert not list(cache.glob("*.tgz"))


def test_a_bundle_file_that_is_not_the_pinned_one_is_refused():
    with pytest.raises(itk_assets.AssetError, match="imjoy Lab extension"):
        itk_assets.patched_bundle(b"console.log('another build')", itk_assets.LIB_FILE)


def test_a_replacement_must_occur_exactly_as_often_as_expected():
    patches = [("cdn.example/x.js", "local/x.js", 1)]
    assert itk_assets.replace_checked("a cdn.example/x.js b", patches, "t") == "a local/x.js b"
    for text in ("nothing here", "cdn.example/x.js twice cdn.example/x.js"):
        with pytest.raises(itk_assets.AssetError, match="occurs"):
            itk_assets.replace_checked(text, patches, "t")


def test_a_foreign_kernel_config_is_not_overwritten(tmp_path):
    path = tmp_path / itk_assets.KERNEL_CONFIG
    path.parent.mkdir(parents=True)
    path.write_text("c.InteractiveShellApp.exec_lines = ['import os']\n")
    with pytest.raises(itk_assets.AssetError, match="not the VRE's"):
        itk_assets.write_kernel_config(tmp_path)
    path.unlink()
    itk_assets.write_kernel_config(tmp_path)
    itk_assets.write_kernel_config(tmp_path)   # ours: rewritten
    assert "vre_session.itk_offline" in path.read_text()


def test_install_from_the_cache_patches_and_serves_offline(tmp_path):
    """With this host's cache and the venv's pinned originals of the bundle: the whole install,
    offline; no CDN URL is left in what the browser loads, and a second run changes nothing."""
    cache = itk_assets.default_cache()
    orig = Path(sys.prefix) / "share/vre-itk/orig"
    if not all((cache / itk_assets.tarball_name(n, v)).exists() for n, (v, _) in itk_assets.NPM_PINS.items()) \
            or not orig.is_dir():
        pytest.skip("no itk asset cache or pinned bundle originals here (scripts/setup makes them)")
    static = tmp_path / itk_assets.LABEXT
    static.mkdir(parents=True)
    for name in itk_assets.BUNDLE_PATCHES:
        (static / name).write_bytes((orig / name).read_bytes())
    served = itk_assets.install(tmp_path, cache, offline=True)
    index = (served / "itk-vtk-viewer/index.html").read_text()
    assert "lib.imjoy.io" not in index and "../imjoy-core/imjoy-loader.js" in index
    for name in itk_assets.BUNDLE_PATCHES:
        text = (static / name).read_text()
        for cdn in ("cdn.jsdelivr.net/npm/vue@", "imjoy-team.github.io/vue-js-modal", "@oeway/vue-window"):
            assert cdn not in text, (name, cdn)
    assert '"startup":true' not in (served / "imjoy-core/imjoy-core.min.js").read_text()
    assert json.loads((served / "VERSIONS.json").read_text())["npm"]["itk-vtk-viewer"] == "14.51.0"
    before = {p: p.stat().st_mtime_ns for p in static.iterdir()}
    itk_assets.install(tmp_path, cache, offline=True)   # idempotent
    assert {p: p.stat().st_mtime_ns for p in static.iterdir()} == before


def test_the_kernel_hook_points_itkwidgets_at_the_session(tmp_path):
    """In a fresh interpreter of the session environment: after ``install()``, importing itkwidgets
    gives the local viewer URLs, ``imjoy_elfinder`` imports (an empty stand-in) and the viewer
    counts as ready after its first screenshot."""
    import subprocess

    pytest.importorskip("itkwidgets")
    code = ("import vre_session.itk_offline as m; m.install()\n"
            "import itkwidgets.viewer as v, itkwidgets._initialization_params as p, imjoy_elfinder\n"
            "print(v.ITK_VIEWER_SRC); print(p.PYDATA_SPHINX_HREF)\n"
            "print(v.ViewerRPC.create_screenshot._vre_itk, 'stand-in' in imjoy_elfinder.__doc__.lower())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [itk_offline.SETTINGS["ITK_VIEWER_SRC"], itk_offline.SETTINGS["PYDATA_SPHINX_HREF"],
                                  "True", "True"]
