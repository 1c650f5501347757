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


def ready_after_first_screenshot(viewer_module) -> None:
    """itkwidgets runs the cells after a ``view(image)`` only once the viewer reports
    ``renderedImageAssigned``, for which it registers after the window is created and a first
    screenshot taken; a small image is rendered by then, the event is missed and every later cell
    waits forever (seen in Chromium with itkwidgets 1.0a55). The first screenshot shows the
    rendered image, so from then on the viewer counts as ready (what its event handler does)."""
    cls = getattr(viewer_module, "ViewerRPC", None)
    if cls is None or getattr(cls.create_screenshot, "_vre_itk", False):
        return
    original = cls.create_screenshot

    async def create_screenshot(self, *args, **kwargs):
        result = await original(self, *args, **kwargs)
        if getattr(self, "data_event", None) is not None and not self.data_event.is_set():
            self.set_event("vre-itk: first screenshot")
        return result

    create_screenshot._vre_itk = True
    cls.create_screenshot = create_screenshot


IMAGE_ARGS = ("image", "label_image", "fixed_image")


def sitk_to_itkwasm(image):
    """A SimpleITK image as the itkwasm image itkwidgets renders (pixels, spacing, origin,
    direction); anything else unchanged."""
    sitk = sys.modules.get("SimpleITK")
    if sitk is None or not isinstance(image, sitk.Image):
        return image
    import itkwasm
    import numpy as np

    out = itkwasm.image_from_array(sitk.GetArrayFromImage(image),
                                   is_vector=image.GetNumberOfComponentsPerPixel() > 1)
    dim = image.GetDimension()
    out.spacing = [float(v) for v in image.GetSpacing()]
    out.origin = [float(v) for v in image.GetOrigin()]
    out.direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    return out


def accept_simpleitk(viewer_module) -> None:
    """itkwidgets 1.0a55 renders numpy, itk and itkwasm images but refuses SimpleITK ones ("Could
    not process the viewer image"); ``view`` and ``Viewer.set_image`` convert them first."""
    view = getattr(viewer_module, "view", None)
    if view is None or getattr(view, "_vre_itk", False):
        return
    import functools

    @functools.wraps(view)
    def view_any(data=None, **kwargs):
        for key in IMAGE_ARGS:
            if key in kwargs:
                kwargs[key] = sitk_to_itkwasm(kwargs[key])
        return view(sitk_to_itkwasm(data), **kwargs)

    view_any._vre_itk = True
    viewer_module.view = view_any
    cls = getattr(viewer_module, "Viewer", None)
    if cls is not None and hasattr(cls, "set_image"):
        set_image = cls.set_image

        @functools.wraps(set_image)
        def set_image_any(self, image, *args, **kwargs):
            return set_image(self, sitk_to_itkwasm(image), *args, **kwargs)

        cls.set_image = set_image_any


def patch_viewer(viewer_module) -> None:
    ready_after_first_screenshot(viewer_module)
    accept_simpleitk(viewer_module)


#: module -> what to do right after it executed
AFTER_IMPORT = {MODULE: apply, "itkwidgets.viewer": patch_viewer}


class _After(importlib.abc.Loader):
    def __init__(self, loader, then) -> None:
        self._loader, self._then = loader, then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._then(module)


class ItkOffline(importlib.abc.MetaPathFinder):
    """Runs :data:`AFTER_IMPORT` right after those itkwidgets modules execute (itkwidgets is too
    slow to import in every kernel), and stands in for ``imjoy_elfinder``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == ELFINDER:
            if importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
                return None   # a real one is installed: not ours to hide
            return importlib.machinery.ModuleSpec(fullname, _Empty(), origin="vre_session.itk_offline")
        then = AFTER_IMPORT.get(fullname)
        if then is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _After(spec.loader, then)
        return spec


def install() -> None:
    """Install the hook in this process (once); modules already loaded are treated at once."""
    for name, then in AFTER_IMPORT.items():
        if name in sys.modules:
            then(sys.modules[name])
    if not any(isinstance(f, ItkOffline) for f in sys.meta_path):
        sys.meta_path.insert(0, ItkOffline())
