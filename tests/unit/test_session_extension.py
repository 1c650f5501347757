"""The session's server extension fails closed, and ships its Lab extension.

A session whose dataset/DICOM handlers (and with them the download guard) cannot be set up must
not start: ``_load_jupyter_server_extension`` lets the failure out, and a real ``jupyter server``
run as the hub runs it (``reraise_server_extension_failures``) exits instead of serving.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "extensions"))  # the working copy, not the installed package

import vre_session  # noqa: E402


class _FakeEvents:
    def __init__(self):
        self.listeners = []

    def add_listener(self, schema_id, listener):
        self.listeners.append(schema_id)


def _fake_serverapp():
    return types.SimpleNamespace(log=logging.getLogger("test-vre-session"), event_logger=_FakeEvents(),
                                 web_app=types.SimpleNamespace(settings={}))


@pytest.fixture
def no_relay(monkeypatch):
    """A relay that logs only and starts no thread (no VRE_AUDIT_* settings)."""
    for var in ("VRE_AUDIT_URL", "VRE_AUDIT_SPOOL", "VRE_AUDIT_TOKEN", "VRE_AUDIT_CELLS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(vre_session, "get_relay", lambda log: types.SimpleNamespace(start=lambda: None, url=None))


def test_handlers_import_failure_propagates(monkeypatch, no_relay):
    # None in sys.modules: "import vre_session.handlers" raises ImportError, as a missing or
    # broken dependency of the handlers would.
    monkeypatch.setitem(sys.modules, "vre_session.handlers", None)
    with pytest.raises(ImportError, match="vre_session.handlers"):
        vre_session._load_jupyter_server_extension(_fake_serverapp())


def test_handlers_setup_failure_propagates(monkeypatch, no_relay):
    broken = types.ModuleType("vre_session.handlers")

    def setup_handlers(serverapp):
        raise RuntimeError("the download guard could not be installed")

    broken.setup_handlers = setup_handlers
    monkeypatch.setitem(sys.modules, "vre_session.handlers", broken)
    with pytest.raises(RuntimeError, match="download guard"):
        vre_session._load_jupyter_server_extension(_fake_serverapp())


def test_server_with_broken_handlers_does_not_start(tmp_path):
    """``jupyter server`` with the hub's flags exits (non-zero) when the handlers cannot import."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "session.json").write_text('{"user": "tester", "project": "unit", "datasets": []}')
    boot = tmp_path / "boot"
    boot.mkdir()
    # sitecustomize runs before the server: it makes vre_session.handlers unimportable
    (boot / "sitecustomize.py").write_text('import sys\nsys.modules["vre_session.handlers"] = None\n')
    env = {**os.environ, "VRE_SESSION": str(tmp_path / "session.json"),
           "PYTHONPATH": os.pathsep.join([str(boot), str(ROOT / "extensions"), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jconfig"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jruntime")}
    for var in ("VRE_AUDIT_URL", "VRE_AUDIT_SPOOL", "VRE_AUDIT_TOKEN"):
        env.pop(var, None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={home}", "--ServerApp.port=0",
             "--ServerApp.ip=127.0.0.1", "--ServerApp.open_browser=False", "--allow-root",
             '--ServerApp.jpserver_extensions={"vre_session": True}',
             "--ServerApp.reraise_server_extension_failures=True"],
            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the server kept running although vre_session.handlers cannot import:\n{(e.stderr or b'')[-3000:]!r}")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "vre_session.handlers" in output, output[-3000:]


def test_labextension_paths():
    assert vre_session._jupyter_labextension_paths() == [{"src": "labextension", "dest": "vre-session"}]



def test_wheel_ships_the_lab_extension(tmp_path):
    """The wheel of an image's build context (the package and its built bundle, no TypeScript
    sources) installs the lab extension as shared data; nothing is built."""
    pytest.importorskip("hatchling")
    pytest.importorskip("hatch_jupyter_builder")
    ext = ROOT / "extensions"
    if not (ext / "vre_session" / "labextension" / "package.json").is_file():
        pytest.skip("the lab extension is not built (bash extensions/build-labextension.sh)")
    ctx = tmp_path / "extensions"
    ctx.mkdir()
    shutil.copy2(ext / "pyproject.toml", ctx / "pyproject.toml")
    shutil.copytree(ext / "vre_session", ctx / "vre_session", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ctx)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("vre_session-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    share = [n.split("/data/", 1)[1] for n in names if ".data/data/" in n]
    prefix = "share/jupyter/labextensions/vre-session/"
    for required in ("package.json", "install.json", "static/style.js"):
        assert prefix + required in share, share
    assert any(n.startswith(prefix + "static/remoteEntry.") for n in share), share
    assert "vre_session/__init__.py" in names and "vre_session/decoders.py" in names
    assert not [n for n in names if n.startswith("vre_session/labextension") or "_labextension_build" in n], names
