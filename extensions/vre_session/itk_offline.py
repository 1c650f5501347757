"""itkwidgets with no network: its viewer comes from the session's own server, not from a CDN.

itkwidgets (1.0a55) takes the viewer's location from ``itkwidgets.viewer_config``
(``ITK_VIEWER_SRC``: itk-vtk-viewer on IPFS; ``PYDATA_SPHINX_HREF``: its UI on jsdelivr), which
``itkwidgets.viewer`` and ``itkwidgets._initialization_params`` copy when they are imported. The
environment's IPython kernel config (``<sys.prefix>/etc/ipython/ipython_kernel_config.py``,
written by ``scripts/itk_assets.py``) makes every kernel install :class:`ItkOffline`, an import
hook that rewrites them as soon as ``itkwidgets.viewer_config`` is loaded (before anything copies them), so a researcher's unchanged
``from itkwidgets import view`` points at the assets ``scripts/itk_assets.py`` installed into the
environment (served as ``<session>/static/vre-itk/``).

ImJoy accepts only http(s) plugin sources, and the kernel does not know the browser's origin (the
hub may sit behind any proxy): the URLs use the placeholder origin :data:`SENTINEL`
(``.invalid`` never resolves), which the patched imjoy Lab extension maps to
``<Lab base URL>static/vre-itk/`` in the browser.

itkwidgets also refuses to import unless ``imjoy_elfinder`` imports (it never uses it: elFinder is
a web file manager started through jupyter-server-proxy, i.e. a way to move files past the access
layer's download guard, which refuses its route anyway). The VRE does not install it; the hook
answers ``import imjoy_elfinder`` with an empty module when no real one is installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

SENTINEL = "http://vre-session.invalid/vre-itk/"   # same as scripts/itk_assets.py
SETTINGS = {
    "ITK_VIEWER_SRC": SENTINEL + "itk-vtk-viewer/index.html",
    "PYDATA_SPHINX_HREF": SENTINEL + "itk-viewer-bootstrap-ui/bootstrapUIMachineOptions.js.es.js",
}
MODULE = "itkwidgets.viewer_config"


URL_PATH = "static/vre-itk/"   # below the session's base URL; the access layer passes static/


def static_root() -> Path | None:
    """The folder served as ``static/vre-itk/``, or None when this environment has none."""
    root = Path(sys.prefix) / "share/vre-itk/static/vre-itk"
    return root if (root / "VERSIONS.json").is_file() else None


def setup_handlers(web_app) -> bool:
    """Serve the viewer's files as ``<base_url>static/vre-itk/`` (before the server's own static
    route): the server's static handler, except that these pages may be framed by the session's
    own pages. JupyterHub's single-user server forbids framing (``frame-ancestors 'none'``) for
    every page, and ImJoy shows the viewer in an iframe of the Lab."""
    root = static_root()
    if root is None:
        return False
    from jupyter_server.base.handlers import FileFindHandler
    from jupyter_server.utils import url_path_join

    class ViewerFiles(FileFindHandler):
        @property
        def content_security_policy(self) -> str:
            return "frame-ancestors 'self'"

    pattern = url_path_join(web_app.settings["base_url"], URL_PATH, "(.*)")
    web_app.add_handlers(".*$", [(pattern, ViewerFiles, {"path": [str(root)]})])
    return True


def apply(module) -> None:
    """Point an imported ``itkwidgets.viewer_config`` (and copies already made) at the local assets."""
    for name, value in SETTINGS.items():
        setattr(module, name, value)
    for copy, names in (("itkwidgets.viewer", ("ITK_VIEWER_SRC",)),
                        ("itkwidgets._initialization_params", ("PYDATA_SPHINX_HREF",))):
        mod = sys.modules.get(copy)
        for name in names:
            if mod is not None and hasattr(mod, name):
                setattr(mod, name, SETTINGS[name])


ELFINDER = "imjoy_elfinder"


class _Empty(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__doc__ = ("Stand-in of the VRE (vre_session.itk_offline): itkwidgets only checks that "
                          "imjoy_elfinder imports; the elFinder file manager is not part of the VRE.")


class ItkOffline(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs :func:`apply` right after ``itkwidgets.viewer_config`` executes (itkwidgets is too slow
    to import in every kernel)."""

    def __init__(self) -> None:
        self._loader = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname == ELFINDER:
            if importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
                return None   # a real one is installed: not ours to hide
            return importlib.machinery.ModuleSpec(fullname, _Empty(), origin="vre_session.itk_offline")
        if fullname != MODULE or self._loader is not None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        apply(module)


def install() -> None:
    """Install the hook in this process (once); if itkwidgets is already loaded, apply directly."""
    if MODULE in sys.modules:
        apply(sys.modules[MODULE])
    elif not any(isinstance(f, ItkOffline) for f in sys.meta_path):
        sys.meta_path.insert(0, ItkOffline())
