#!/usr/bin/env python3
"""itkwidgets offline: fetch, check, patch and install the viewer's web assets into an environment.

``itkwidgets.view`` runs its viewer (itk-vtk-viewer, with the itk-viewer-bootstrap-ui) as an ImJoy
window that the imjoy Lab extension opens; upstream, every piece of it comes from a CDN at run
time. Sessions have no network, so this script (run at setup / image build time, never in a
session) puts all of it into the session environment:

1. ``fetch``: the npm tarballs in ``NPM_PINS`` (``npm pack name@version``, through the registry the
   host's npm is configured for), each checked against its pinned sha256 and cached by version
   under ``--cache`` (default ``/var/cache/vre-itk/<versions key>``): a second run is offline.
2. ``install``: their ``dist`` files are copied to ``<prefix>/share/vre-itk/static/vre-itk/`` and
   served by the session's own Jupyter server (the vre_session server extension serves the folder,
   when it is there, as ``<session prefix>/static/vre-itk/``), behind the access layer like the Lab's own static files.
   The viewer's ``index.html`` loads its ImJoy loader and RPC library from the local copy of
   imjoy-core instead of lib.imjoy.io / jsdelivr.
3. The imjoy Lab extension (``imjoy-jupyterlab-extension``, pip, pinned) hard-codes five CDN URLs
   (vue, vue-js-modal script and CSS, @oeway/vue-window, imjoy-core): its two bundle files are
   patched in place to take them from ``static/vre-itk/`` under the Lab's own base URL, and its
   ``createWindow`` maps the kernel's placeholder origin (``SENTINEL``, see
   ``vre_session.itk_offline``) to the same place. ``<prefix>/etc/ipython/ipython_kernel_config.py``
   makes every IPython kernel of the environment install that module's hook (it sets
   itkwidgets' viewer URLs when itkwidgets is imported). ``@oeway/vue-window`` is not on npm and
   the extension does not use its windows: a stub stands in for it.

Every input is pinned by sha256 (tarballs; the two bundle files before patching) and every
replaced string must occur exactly as often as expected: anything else fails loudly and leaves
the environment as it was. Patching is idempotent (an already patched file is recognised by its
patched sha256). Building the Lab extension from source would avoid patching its bundle; the
upstream build pulls in a large JS toolchain, so the pinned, checked patch is used instead.

Usage: itk_assets.py install --prefix ENV [--cache DIR] [--offline]
       itk_assets.py fetch [--cache DIR] [--offline]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: npm package -> (version, sha256 of the registry tarball)
NPM_PINS: dict[str, tuple[str, str]] = {
    "itk-vtk-viewer": ("14.51.0", "5d5d6994418fdd9b203f11b9f82154b1579d3ace7bc2f77b62288108af3c549e"),
    "itk-viewer-bootstrap-ui": ("0.30.0", "0bbba53843e05f9d2b2f85d2adacda79786ab6269793c843234031b9f167a583"),
    "imjoy-core": ("0.14.5", "8f72a85c30e6454b2cef3e9101fca5b12676063b366427c1df47c53a0b850526"),
    "vue": ("2.6.10", "bfca906b64416178c061dc8f59850ff6b2a45359c8ddd7d5f924cc611128c2d4"),
    "vue-js-modal": ("1.3.31", "5fa571575d49babfd4d0b46bf253f0ee7766eb5574f7db546afa1cb1d0a2f23e"),
}
#: the pip packages this matches (installed by pip from the pins in extensions/ and images/constraints)
PIP_PINS = {"itkwidgets": "1.0a55", "imjoy-jupyterlab-extension": "0.2.6", "ngff-zarr": "0.12.2"}
#: what of each tarball is served: (path in the tarball, path below static/vre-itk/)
FILES = {
    "itk-vtk-viewer": [("package/dist/", "itk-vtk-viewer/")],
    "itk-viewer-bootstrap-ui": [("package/dist/bootstrapUIMachineOptions.js.es.js",
                                 "itk-viewer-bootstrap-ui/bootstrapUIMachineOptions.js.es.js")],
    "imjoy-core": [("package/dist/" + n, "imjoy-core/" + n) for n in (
        "imjoy-core.js", "imjoy-core.min.js", "imjoy-loader.js", "imjoy-loader.min.js", "imjoy-rpc.js",
        "imjoy-rpc.min.js", "default_base_frame.html", "plugin-service-worker.js", "version.json")],
    "vue": [("package/dist/vue.min.js", "vue/vue.min.js")],
    "vue-js-modal": [("package/dist/index.js", "vue-js-modal/index.js"),
                     ("package/dist/styles.css", "vue-js-modal/styles.css")],
}
STATIC = "vre-itk"   # the URL path below the server's static/ and the folder below the static root
#: placeholder origin the kernel uses (imjoy takes only http(s) sources; the kernel does not know
#: the browser's origin): the patched Lab extension maps it to <Lab base URL>static/vre-itk/
SENTINEL = "http://vre-session.invalid/vre-itk/"

# --- the viewer's index.html -----------------------------------------------------------------
INDEX_PATCHES = [
    ('<script type="text/javascript" src="https://lib.imjoy.io/imjoy-loader.js"></script>',
     '<script type="text/javascript" src="../imjoy-core/imjoy-loader.js"></script>', 1),
    ("api_version: '0.2.3'\n",
     "api_version: '0.2.3', base_url: new URL('../imjoy-core/', document.baseURI).href\n", 1),
    # metadata the ImJoy UI may show as images: local, or nothing
    ("icon: 'https://kitware.github.io/itk-vtk-viewer/app/favicon-32x32.png',", "icon: 'favicon-32x32.png',", 1),
    ("cover: ['https://kitware.github.io/itk-vtk-viewer/docs/howToUse.jpg', "
     "'https://kitware.github.io/itk-vtk-viewer/docs/imjoy.png'],", "cover: [],", 1),
]

# --- imjoy-core: its internal plugins ------------------------------------------------------------
# ImJoy starts two "internal plugins" from imjoy-team.github.io at every start (a Jupyter engine
# manager for remote Jupyter servers / Binder, and a Pyodide worker): itkwidgets uses neither (its
# kernel talks through the imjoy Lab extension's comm), so they do not start.
CORE_PATCHES = {
    "imjoy-core/imjoy-core.min.js": [
        ('/Jupyter-Engine-Manager.imjoy.html","startup":true}', '/Jupyter-Engine-Manager.imjoy.html","startup":false}', 1),
        ('/WebPythonWorker.imjoy.html","startup":true}', '/WebPythonWorker.imjoy.html","startup":false}', 1),
    ],
    "imjoy-core/imjoy-core.js": [
        (r'Jupyter-Engine-Manager.imjoy.html\\\",\\\"startup\\\":true}',
         r'Jupyter-Engine-Manager.imjoy.html\\\",\\\"startup\\\":false}', 1),
        (r'WebPythonWorker.imjoy.html\\\",\\\"startup\\\":true}',
         r'WebPythonWorker.imjoy.html\\\",\\\"startup\\\":false}', 1),
    ],
}

# --- the imjoy Lab extension's bundle --------------------------------------------------------
LABEXT = "share/jupyter/labextensions/imjoy-jupyterlab-extension/static"
_BASE_JS = ("new URL(JSON.parse(document.getElementById('jupyter-config-data').textContent).baseUrl"
            " + 'static/vre-itk/' + {rest}, document.baseURI).href")


def _local(rest: str) -> str:
    return _BASE_JS.format(rest=f"'{rest}'")


LIB_FILE = "lib_index_js.434a16a9fda98e7fb04f.js"
VENDORS_FILE = ("vendors-node_modules_imjoy-core_dist_imjoy-loader_js-node_modules_imjoy-core_dist_imjoy-rpc_js"
                ".fa1a9cd9c57812bbe9b2.js")
_REWRITE = (
    "            // vre-itk: the kernel's placeholder origin is this session's static/vre-itk/\n"
    f"            const vreItk = (s) => (typeof s === 'string' && s.startsWith('{SENTINEL}')) ? "
    + _BASE_JS.format(rest=f"s.slice({len(SENTINEL)})") + " : s;\n"
    "            if (w && w.src) w.src = vreItk(w.src);\n"
    "            if (w && w.config && w.config.uiMachineOptions) w.config.uiMachineOptions.href = "
    "vreItk(w.config.uiMachineOptions.href);\n"
)
BUNDLE_PATCHES: dict[str, tuple[str, list[tuple[str, str, int]]]] = {
    LIB_FILE: ("f6737d00e9159a76e40af97f907b89a6df44ac416c718a8b25716a34004da469", [
        ("            process_url_query: true,\n",
         "            process_url_query: true,\n"
         f"            base_url: {_local('imjoy-core/')},\n"
         f"            default_rpc_base_url: {_local('imjoy-core/')},\n", 1),
        # the notebook toolbar's ImJoy button: its logo from imjoy.io becomes a text label
        ('<img src="https://imjoy.io/static/img/imjoy-logo-black.svg" style="height: 17px;">',
         '<span style="font-size: 11px;">ImJoy</span>', 1),
        ("                async createWindow(_plugin, w, extra_config) {\n",
         "                async createWindow(_plugin, w, extra_config) {\n" + _REWRITE, 1),
    ]),
    VENDORS_FILE: ("677556ff95bc2fc1f6e9dc8925b605129af82d6fdd63471634a1751476346fbc", [
        ('\\"https://cdn.jsdelivr.net/npm/vue@2.6.10/dist/vue.min.js\\"', _local("vue/vue.min.js"), 1),
        ('\\"https://imjoy-team.github.io/vue-js-modal/index.js\\"', _local("vue-js-modal/index.js"), 1),
        ('\\"https://imjoy-team.github.io/vue-js-modal/styles.css\\"', _local("vue-js-modal/styles.css"), 1),
        ('\\"https://cdn.jsdelivr.net/npm/@oeway/vue-window@2.4.1-a/lib/index.js\\"',
         _local("vue-window/index.js"), 1),
        # the basic app's window icon (an <img> in its template): no icon rather than imjoy.io
        ("https://imjoy.io/static/img/imjoy-icon.svg", "data:,", 2),
    ]),
}
VUE_WINDOW_STUB = ("/* vre-itk: stands in for @oeway/vue-window (not on npm; the imjoy Lab extension opens no\n"
                   "   vue windows, it only registers the plugin) */\n"
                   "window.VueWindow = { install: function () {} };\n")


class AssetError(RuntimeError):
    pass


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions_key() -> str:
    return "-".join(f"{n}@{v}" for n, (v, _) in sorted(NPM_PINS.items()))


def default_cache() -> Path:
    return Path(os.environ.get("VRE_ITK_CACHE", "/var/cache/vre-itk")) / sha256(versions_key().encode())[:16]


def tarball_name(name: str, version: str) -> str:
    return f"{name.replace('@', '').replace('/', '-')}-{version}.tgz"


def fetch(cache: Path, *, offline: bool = False, npm: str = "npm") -> dict[str, Path]:
    """The pinned tarballs, from ``cache`` or fetched into it (``npm pack``); each checked."""
    if not offline:   # an offline cache may be read-only (the image build's bind mount)
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "VERSIONS").write_text(versions_key() + "\n")
    out = {}
    for name, (version, digest) in NPM_PINS.items():
        path = cache / tarball_name(name, version)
        if not path.exists():
            if offline:
                raise AssetError(f"{path} is not cached and --offline was given")
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                subprocess.run([npm, "pack", "--silent", f"{name}@{version}"], cwd=tmp, check=True,
                               stdout=subprocess.DEVNULL)
                got = Path(tmp) / tarball_name(name, version)
                if not got.exists():
                    raise AssetError(f"npm pack {name}@{version} wrote no {got.name}")
                check_digest(got.read_bytes(), digest, f"{name}@{version}")
                got.replace(path)
        check_digest(path.read_bytes(), digest, f"{name}@{version} ({path})")
        out[name] = path
    return out


def check_digest(data: bytes, digest: str, what: str) -> None:
    got = sha256(data)
    if got != digest:
        raise AssetError(f"{what}: sha256 {got} is not the pinned {digest}; refusing it")


def replace_checked(text: str, patches: list[tuple[str, str, int]], what: str) -> str:
    for old, new, count in patches:
        n = text.count(old)
        if n != count:
            raise AssetError(f"{what}: {old[:80]!r} occurs {n} times, expected {count}")
        text = text.replace(old, new)
    return text


def extract(tarballs: dict[str, Path], dest: Path) -> None:
    """Copy the served files of each tarball to ``dest`` (static/vre-itk) and patch index.html."""
    for name, rules in FILES.items():
        with tarfile.open(tarballs[name]) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for src, target in rules:
                picked = [m for m in members if (m.name.startswith(src) if src.endswith("/") else m.name == src)]
                if not picked:
                    raise AssetError(f"{name}: nothing at {src} in {tarballs[name].name}")
                for m in picked:
                    rel = target + m.name[len(src):] if src.endswith("/") else target
                    if ".." in Path(rel).parts:
                        raise AssetError(f"{name}: unsafe path {m.name}")
                    out = dest / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(m).read())
    index = dest / "itk-vtk-viewer/index.html"
    index.write_text(replace_checked(index.read_text(), INDEX_PATCHES, "itk-vtk-viewer/dist/index.html"))
    for rel, patches in CORE_PATCHES.items():
        path = dest / rel
        path.write_text(replace_checked(path.read_text(), patches, rel))
    (dest / "vue-window").mkdir(exist_ok=True)
    (dest / "vue-window/index.js").write_text(VUE_WINDOW_STUB)
    (dest / "VERSIONS.json").write_text(stamp_text())


def stamp_text() -> str:
    """What was installed: the pins and the hash of this script (its patches)."""
    return json.dumps({"npm": {n: v for n, (v, _) in NPM_PINS.items()}, "pip": PIP_PINS, "sentinel": SENTINEL,
                       "script_sha256": sha256(Path(__file__).read_bytes())}, indent=1) + "\n"


def patched_bundle(original: bytes, name: str) -> bytes:
    digest, patches = BUNDLE_PATCHES[name]
    check_digest(original, digest, f"imjoy Lab extension {name}")
    return replace_checked(original.decode(), patches, name).encode()


def patch_labextension(prefix: Path) -> list[str]:
    """Patch the imjoy Lab extension's two bundle files in ``prefix``: checked, idempotent."""
    static = prefix / LABEXT
    if not static.is_dir():
        raise AssetError(f"{static} is missing: install imjoy-jupyterlab-extension=="
                         f"{PIP_PINS['imjoy-jupyterlab-extension']} first")
    done = []
    for name in BUNDLE_PATCHES:
        path = static / name
        if not path.exists():
            raise AssetError(f"{path} is missing: not imjoy-jupyterlab-extension "
                             f"{PIP_PINS['imjoy-jupyterlab-extension']}?")
        data = path.read_bytes()
        orig = prefix / "share/vre-itk/orig" / name   # the pinned original, kept out of the served tree
        pinned = BUNDLE_PATCHES[name][0]
        if sha256(data) != pinned and orig.exists() and sha256(orig.read_bytes()) == pinned:
            original = orig.read_bytes()   # patched before (by this or an earlier version of the patches)
        else:
            original = data                # checked against the pin by patched_bundle
        new = patched_bundle(original, name)
        if new == data:
            continue
        orig.parent.mkdir(parents=True, exist_ok=True)
        orig.write_bytes(original)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(new)
        tmp.replace(path)
        done.append(name)
    return done


KERNEL_CONFIG = "etc/ipython/ipython_kernel_config.py"
KERNEL_CONFIG_TEXT = """\
# vre-itk (scripts/itk_assets.py): every IPython kernel of this environment points itkwidgets at
# the viewer its session's server serves (static/vre-itk/), see vre_session.itk_offline.
c.InteractiveShellApp.exec_lines.append(
    "import vre_session.itk_offline as _vre_itk; _vre_itk.install(); del _vre_itk")
"""


def write_kernel_config(prefix: Path) -> None:
    """IPython reads <sys.prefix>/etc/ipython/ipython_kernel_config.py in every kernel of the
    environment (whatever its kernelspec): there the kernel installs the itkwidgets hook."""
    path = prefix / KERNEL_CONFIG
    if path.exists() and not path.read_text().startswith("# vre-itk "):
        raise AssetError(f"{path} exists and is not the VRE's: merge it by hand")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KERNEL_CONFIG_TEXT)
    path.chmod(0o644)


def install(prefix: Path, cache: Path, *, offline: bool = False) -> Path:
    prefix = prefix.resolve()
    tarballs = fetch(cache, offline=offline)
    patch_labextension(prefix)   # first: it fails on a wrong extension before anything is copied
    root = prefix / "share/vre-itk/static"
    stamp = root / STATIC / "VERSIONS.json"
    if not (stamp.exists() and stamp.read_text() == stamp_text()):
        tmp = root / (STATIC + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        extract(tarballs, tmp)
        shutil.rmtree(root / STATIC, ignore_errors=True)
        tmp.rename(root / STATIC)
    write_kernel_config(prefix)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root / STATIC


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("fetch", "install"))
    ap.add_argument("--prefix", type=Path, default=Path(sys.prefix), help="the environment (default: this Python's)")
    ap.add_argument("--cache", type=Path, default=None, help="tarball cache (default /var/cache/vre-itk/<versions>)")
    ap.add_argument("--offline", action="store_true", help="use the cache only")
    a = ap.parse_args(argv)
    cache = a.cache or default_cache()
    try:
        if a.command == "fetch":
            fetch(cache, offline=a.offline)
            print(f"[itk-assets] {versions_key()} in {cache}")
        else:
            where = install(a.prefix, cache, offline=a.offline)
            print(f"[itk-assets] {versions_key()} -> {where}")
    except (AssetError, subprocess.CalledProcessError) as e:
        print(f"itk_assets: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
