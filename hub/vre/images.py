"""``vre images``: build the VRE's container images with Podman (or Docker).

``vre images build`` builds, in order:

- ``base``: Debian 12 from this host's Debian mirror with ``debootstrap`` (minbase + python3,
  python3-venv, ca-certificates, tini, bash, procps, iproute2), imported as
  ``localhost/vre-base:bookworm``. Skipped when that tag exists, and when ``--base-image`` names a
  registry image instead (e.g. ``docker.io/library/debian:bookworm-slim``).
- ``notebook``, ``notebook-gpu``, ``hub``, ``postgresql`` from ``images/<name>/Dockerfile``, each tagged
  ``localhost/vre-<name>:<version>`` and ``:latest``.

Each build gets a staged context (only the files the image needs, never ``.venv`` or
``node_modules``) and a label ``vre.inputs`` with the hash of that context, the build arguments and
the base image's id. A build whose inputs did not change is skipped, so tests and repeated runs
reuse images; ``--force`` rebuilds (the engine's layer cache still applies).

Builds mount the host's CA bundle as the build secret ``cacert`` (for an intercepting proxy) and
pass ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` (http(s) only) and ``PIP_DEFAULT_TIMEOUT`` as build
arguments; nothing of them is stored in the images.

``vre images lock`` writes ``images/constraints/<name>.txt`` from ``pip freeze`` in a built image
(see images/README.md, "Refreshing the pins"); ``vre images context NAME DIR`` writes a staged
build context for a hand-made build (CI elsewhere, buildx).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import VREError

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "images"
IMAGES = ("notebook", "notebook-gpu", "hub", "postgresql")
BASE_TAG = "localhost/vre-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini", "bash", "procps", "iproute2")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_WHEELS = Path("/opt/wheels")
SUITE = "bookworm"
# Packages pip freeze lists that the images install from the checkout, not from an index.
LOCAL_DISTS = {"vre", "vre-session", "vre_session"}


class ImageError(VREError):
    """An image could not be built; the message says what to fix."""


def version() -> str:
    try:
        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "dev"


def tag(name: str, ver: str | None = None) -> str:
    return f"localhost/vre-{name}:{ver or version()}"


def _log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


# --- the engine ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Engine:
    name: str   # "podman" or "docker"
    path: str

    def run(self, *args: str, check: bool = True, capture: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.path, *args], input=input, timeout=timeout,
                              capture_output=capture)
        if check and proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace").strip() if capture else ""
            raise ImageError(f"{self.name} {' '.join(args[:2])} failed (exit {proc.returncode})"
                             + (f": {err[-2000:]}" if err else ""))
        return proc

    def inspect(self, ref: str) -> dict | None:
        proc = self.run("image", "inspect", ref, check=False)
        if proc.returncode != 0:
            return None
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            return None
        return data[0] if data else None

    def exists(self, ref: str) -> bool:
        return self.inspect(ref) is not None

    def label(self, ref: str, key: str) -> str | None:
        info = self.inspect(ref)
        if not info:
            return None
        labels = (info.get("Config") or {}).get("Labels") or info.get("Labels") or {}
        return labels.get(key)


def find_engine(name: str = "podman") -> Engine:
    if name not in ("podman", "docker"):
        raise ImageError(f"unknown engine {name!r}: use podman or docker")
    path = shutil.which(name)
    if not path:
        hint = ("run scripts/podman-setup as root (installs Debian's podman and configures it)"
                if name == "podman" else "install Docker, or use --engine podman")
        raise ImageError(f"{name} is not installed: {hint}")
    engine = Engine(name, path)
    proc = engine.run("info", check=False, timeout=120)
    if proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        hint = "run scripts/podman-setup as root" if name == "podman" else "is the Docker daemon running?"
        raise ImageError(f"'{name} info' failed ({' / '.join(err)}); {hint}")
    return engine


# --- the base image --------------------------------------------------------------------------
def _sources_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of the host's enabled apt sources, deb822 and one-line format."""
    entries: list[tuple[str, list[str]]] = []
    d = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list")] + (sorted(d.iterdir()) if d.is_dir() else [])
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    entries.append((uri, fields.get("suites", "").split()))
        elif f.suffix == ".list" or f.name == "sources.list":
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    entries.append((parts[1], [parts[2]]))
    return entries


def debian_mirror() -> str:
    """This host's Debian mirror for bookworm ($VRE_DEBIAN_MIRROR overrides)."""
    if os.environ.get("VRE_DEBIAN_MIRROR"):
        return os.environ["VRE_DEBIAN_MIRROR"]
    for uri, suites in _sources_entries():
        if SUITE in suites and "security" not in uri:
            return uri
    raise ImageError("no Debian bookworm mirror in /etc/apt/sources.list(.d); set VRE_DEBIAN_MIRROR "
                     "to one this host can reach (e.g. http://deb.debian.org/debian)")


def build_base(engine: Engine, ref: str = BASE_TAG, *, force: bool = False) -> str:
    """Debian bookworm (minbase + BASE_PACKAGES) by debootstrap, imported as ``ref``."""
    if not force and engine.exists(ref):
        _log(f"{ref}: exists (remove it or use --force to rebuild)")
        return ref
    if os.geteuid() != 0:
        raise ImageError("building the base image needs root (debootstrap); run as root or pass "
                         "--base-image with a registry image")
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if not debootstrap:
        raise ImageError("debootstrap is not installed: run scripts/podman-setup (or apt-get install debootstrap)")
    mirror = debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vre-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _log(f"debootstrap --variant=minbase {SUITE} from {mirror} (about a minute)")
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            logf = rootfs / "debootstrap" / "debootstrap.log"
            detail = logf.read_text(errors="replace") if logf.exists() else (proc.stdout + proc.stderr)
            tail = "\n".join(detail.strip().splitlines()[-15:])
            raise ImageError(f"debootstrap failed (exit {proc.returncode}) with mirror {mirror}:\n{tail}\n"
                             "check that the mirror is reachable, or set VRE_DEBIAN_MIRROR")
        # no recommends in images built on it; no package lists or caches in the layer
        (rootfs / "etc/apt/apt.conf.d/90vre").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n')
        for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log/apt", "var/cache/debconf/templates.dat-old"):
            p = rootfs / junk
            if p.is_dir():
                for child in p.iterdir():
                    if child.is_file() or child.is_symlink():
                        child.unlink()
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "--exclude=./proc/*",
                                "--exclude=./sys/*", "--exclude=./dev/*", "--exclude=./debootstrap", "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run([engine.path, "import", "--change", 'CMD ["/bin/bash"]',
                              "--change", "ENV LANG=C.UTF-8",
                              "--change", f"LABEL vre.base.mirror={mirror} vre.base.suite={SUITE}", "-", ref],
                             stdin=tar.stdout, capture_output=True)
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise ImageError(f"{engine.name} import of the debootstrapped root failed: "
                             f"{imp.stderr.decode(errors='replace').strip()[-1000:]}")
    _log(f"{ref}: built in {time.monotonic() - started:.0f} s")
    return ref


# --- build contexts --------------------------------------------------------------------------
_SKIP_DIRS = {"__pycache__", "node_modules", ".ipynb_checkpoints", "build"}


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or path.is_symlink():
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def labextension_dir() -> Path:
    return REPO / "extensions" / "vre_session" / "labextension"


def _hub_requirements() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return "# generated by vre images from pyproject.toml\n" + "\n".join(list(deps) + ["setuptools>=68"]) + "\n"


def torch_wheels(wheels_dir: Path | None) -> list[Path]:
    if wheels_dir is None or not wheels_dir.is_dir():
        return []
    return sorted(wheels_dir.glob("torch-*.whl"))


def _stage_itk_assets(dest: Path) -> None:
    """itkwidgets offline: scripts/itk_assets.py and its npm tarballs (fetched on this host into its
    cache by version, checked against the script's sha256 pins) for the image's ``itk`` step."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vre_itk_assets", REPO / "scripts" / "itk_assets.py")
    itk_assets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(itk_assets)
    try:
        tarballs = itk_assets.fetch(itk_assets.default_cache())
    except (itk_assets.AssetError, subprocess.CalledProcessError, OSError) as e:
        raise ImageError(f"the itkwidgets viewer assets (scripts/itk_assets.py): {e}") from e
    shutil.copy2(REPO / "scripts" / "itk_assets.py", dest / "images" / "common" / "itk_assets.py")
    (dest / "itk-npm").mkdir()
    for tgz in tarballs.values():
        try:
            os.link(tgz, dest / "itk-npm" / tgz.name)
        except OSError:
            shutil.copy2(tgz, dest / "itk-npm" / tgz.name)


def stage_context(name: str, dest: Path, *, wheels: list[Path] = ()) -> None:
    """Write the build context of image ``name`` into ``dest`` (only what it needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    _copy_tree(IMAGES_DIR / "common", dest / "images" / "common")
    _copy_tree(IMAGES_DIR / name, dest / "images" / name)
    (dest / "images" / "constraints").mkdir(parents=True, exist_ok=True)
    for lock in {name, "notebook"} if name == "notebook-gpu" else {name}:
        src = IMAGES_DIR / "constraints" / f"{lock}.txt"
        (dest / "images" / "constraints" / f"{lock}.txt").write_text(src.read_text() if src.exists() else "")
    if name in ("notebook", "notebook-gpu"):
        if name == "notebook-gpu":
            _copy_tree(IMAGES_DIR / "notebook", dest / "images" / "notebook")
        if not (labextension_dir() / "package.json").exists():
            raise ImageError("the JupyterLab extension is not built (extensions/vre_session/labextension); "
                             "run scripts/setup, or: bash extensions/build-labextension.sh")
        (dest / "extensions").mkdir()
        shutil.copy2(REPO / "extensions" / "pyproject.toml", dest / "extensions" / "pyproject.toml")
        _copy_tree(REPO / "extensions" / "vre_session", dest / "extensions" / "vre_session")
        _copy_tree(REPO / "kernels", dest / "kernels")
        _stage_itk_assets(dest)
        (dest / "wheels").mkdir()
        for whl in wheels:
            try:
                os.link(whl, dest / "wheels" / whl.name)
            except OSError:
                shutil.copy2(whl, dest / "wheels" / whl.name)
    if name == "hub":
        for f in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / f, dest / f)
        _copy_tree(REPO / "hub", dest / "hub")
        (dest / "hub-requirements.txt").write_text(_hub_requirements())


def context_hash(ctx: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        rel = path.relative_to(ctx).as_posix()
        h.update(rel.encode() + b"\0")
        if path.suffix == ".whl":  # large; name and size identify a release file
            h.update(str(path.stat().st_size).encode())
        else:
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


# --- building --------------------------------------------------------------------------------
def _build_args(base_image: str) -> dict[str, str]:
    args = {"BASE_IMAGE": base_image}
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT"):
        value = os.environ.get(var, "")
        if var != "PIP_DEFAULT_TIMEOUT":  # local file:// indexes do not exist inside the build
            value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
        if value:
            args[var] = value
    return args


def build_image(engine: Engine, name: str, base_image: str, *, ver: str | None = None, force: bool = False,
                wheels_dir: Path | None = None, torch_index_url: str | None = None,
                quiet: bool = False) -> str:
    """Build ``localhost/vre-<name>:<version>`` (and ``:latest``) unless its inputs are unchanged."""
    if name not in IMAGES:
        raise ImageError(f"unknown image {name!r}: choose one of {', '.join(IMAGES)}")
    ref, latest = tag(name, ver), tag(name, "latest")
    base_info = engine.inspect(base_image)
    if base_info is None and base_image.startswith("localhost/"):
        raise ImageError(f"base image {base_image} does not exist; build it first (vre images build)")
    wheels = torch_wheels(wheels_dir) if name == "notebook-gpu" else []
    build_args = _build_args(base_image)
    if torch_index_url:
        build_args["PIP_EXTRA_INDEX_URL"] = " ".join(filter(None, [build_args.get("PIP_EXTRA_INDEX_URL"),
                                                                  torch_index_url]))
    with tempfile.TemporaryDirectory(prefix=f"vre-ctx-{name}-", dir="/var/tmp") as tmp:
        ctx = Path(tmp)
        stage_context(name, ctx, wheels=wheels)
        h = hashlib.sha256()
        h.update(context_hash(ctx).encode())
        h.update(json.dumps(build_args, sort_keys=True).encode())
        h.update(((base_info or {}).get("Id") or base_image).encode())
        inputs = h.hexdigest()[:32]
        if not force and engine.label(ref, "vre.inputs") == inputs:
            _log(f"{ref}: up to date (inputs {inputs[:12]})")
            engine.run("tag", ref, latest)
            return ref
        cmd = [engine.path, "build", "-f", str(ctx / "images" / name / "Dockerfile"), "-t", ref, "-t", latest,
               "--label", f"vre.inputs={inputs}", "--label", f"vre.image={name}",
               "--label", f"org.opencontainers.image.version={ver or version()}"]
        for k, v in build_args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        if CA_BUNDLE.exists():
            cmd += ["--secret", f"id=cacert,src={CA_BUNDLE}"]
        if engine.name == "podman":
            cmd += ["--network=host", "--layers", "--pull=never" if base_image.startswith("localhost/") else "--pull=missing"]
        cmd.append(str(ctx))
        env = dict(os.environ)
        if engine.name == "docker":
            env.setdefault("DOCKER_BUILDKIT", "1")  # RUN --mount needs BuildKit
        _log(f"building {ref} from {base_image}")
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if quiet else None,
                              stderr=subprocess.STDOUT if quiet else None)
        if proc.returncode != 0:
            raise ImageError(f"building {ref} failed (exit {proc.returncode}); the build output above says why"
                             + (" (run without --quiet to see it)" if quiet else ""))
        _log(f"{ref}: built in {time.monotonic() - started:.0f} s")
    return ref


def build(only: list[str] | None = None, *, engine: str = "podman", base_image: str | None = None,
          gpu_base_image: str | None = None, force: bool = False, ver: str | None = None,
          wheels_dir: Path | None = None, torch_index_url: str | None = None,
          quiet: bool = False) -> dict[str, str]:
    """Build the base (when local) and the images in ``only`` (default: all), in order.

    Returns {name: tag}. Without ``base_image`` the local debootstrap base is used (and built when
    missing); the GPU image is then built on the notebook image (no CUDA base here) unless
    ``gpu_base_image`` says otherwise.
    """
    names = list(IMAGES) if not only else [n for n in IMAGES if n in only]
    unknown = set(only or ()) - set(IMAGES)
    if unknown:
        raise ImageError(f"unknown image(s) {', '.join(sorted(unknown))}: choose from {', '.join(IMAGES)}")
    eng = find_engine(engine)
    built: dict[str, str] = {}
    started = time.monotonic()
    base = base_image
    if base is None:
        base = build_base(eng)
        built["base"] = base
    for name in names:
        img_base = base
        if name == "notebook-gpu":
            if gpu_base_image:
                img_base = gpu_base_image
            elif base_image is None:  # local build: the notebook stack, plus torch and MONAI
                img_base = built.get("notebook") or build_image(eng, "notebook", base, ver=ver, force=False,
                                                                quiet=quiet)
                built.setdefault("notebook", img_base)
            else:
                img_base = "docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
        img_wheels = wheels_dir
        if name == "notebook-gpu" and img_base.startswith("localhost/"):
            # a local, non-CUDA base (CI): the CPU torch wheel on this host, never GBs of CUDA
            img_wheels = wheels_dir or DEFAULT_WHEELS
            if not torch_index_url and not torch_wheels(img_wheels):
                raise ImageError(f"no torch wheel in {img_wheels}: a build on a non-CUDA base would download "
                                 "the CUDA build of torch (several GB); pass --wheels DIR with a CPU torch wheel, "
                                 "or --torch-index-url https://download.pytorch.org/whl/cpu")
        built[name] = build_image(eng, name, img_base, ver=ver, force=force, wheels_dir=img_wheels,
                                  torch_index_url=torch_index_url, quiet=quiet)
    _log(f"done in {time.monotonic() - started:.0f} s: " + ", ".join(built.values()))
    return built


def lock(name: str, *, engine: str = "podman", ver: str | None = None) -> Path:
    """Write images/constraints/<name>.txt from ``pip freeze`` in the built image."""
    if name not in IMAGES:
        raise ImageError(f"unknown image {name!r}: choose one of {', '.join(IMAGES)}")
    eng = find_engine(engine)
    ref = tag(name, ver)
    if not eng.exists(ref):
        raise ImageError(f"{ref} does not exist; build it first (vre images build --only {name})")
    proc = eng.run("run", "--rm", "--network=none", "--entrypoint", "/opt/vre/venv/bin/pip", ref,
                   "freeze", "--all", "--disable-pip-version-check", timeout=300)
    lines = []
    for line in proc.stdout.decode().splitlines():
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if not m or m.group(1).lower().replace("_", "-") in LOCAL_DISTS | {"pip"}:
            continue  # editable/local installs and pip itself
        name_, ver_ = m.group(1), m.group(2).split("+", 1)[0]  # 2.13.0+cpu -> 2.13.0 (CUDA builds match)
        lines.append(f"{name_}=={ver_}")
    out = IMAGES_DIR / "constraints" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# pip freeze of {ref} (vre images lock {name}); see images/README.md\n"
                   + "\n".join(sorted(lines, key=str.lower)) + "\n")
    return out


# --- CLI -------------------------------------------------------------------------------------
def cmd_build(args) -> int:
    only = [n for item in (args.only or []) for n in item.split(",") if n]
    built = build(only, engine=args.engine, base_image=args.base_image, gpu_base_image=args.gpu_base_image,
                  force=args.force, ver=args.version, wheels_dir=Path(args.wheels) if args.wheels else None,
                  torch_index_url=args.torch_index_url, quiet=args.quiet)
    for name, ref in built.items():
        print(f"{name}\t{ref}")
    return 0


def cmd_lock(args) -> int:
    for name in [n for item in (args.only or list(IMAGES)) for n in item.split(",") if n]:
        print(lock(name, engine=args.engine, ver=args.version))
    return 0


def cmd_context(args) -> int:
    dest = Path(args.dir)
    if dest.exists() and any(dest.iterdir()):
        raise ImageError(f"{dest} is not empty; give a new or empty directory")
    wheels = torch_wheels(Path(args.wheels)) if args.name == "notebook-gpu" and args.wheels else []
    stage_context(args.name, dest, wheels=wheels)
    print(f"{dest}  (build: <engine> build -f {dest}/images/{args.name}/Dockerfile --secret id=cacert,src={CA_BUNDLE} "
          f"--build-arg BASE_IMAGE=... {dest})")
    return 0


def add_cli(subparsers) -> None:
    """Register ``vre images build|lock`` on the ``vre`` command's subparsers."""
    p = subparsers.add_parser("images", help="build the container images (notebook, notebook-gpu, hub, postgresql)")
    sub = p.add_subparsers(dest="images_cmd", required=True)
    b = sub.add_parser("build", help="build the local base (debootstrap), then notebook, notebook-gpu, hub, postgresql",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--only", action="append", metavar="NAME",
                   help=f"build only these images ({', '.join(IMAGES)}); repeat or comma-separate")
    b.add_argument("--engine", choices=("podman", "docker"), default="podman")
    b.add_argument("--base-image", metavar="IMAGE",
                   help="a registry base for notebook and hub (e.g. docker.io/library/debian:bookworm-slim) "
                        f"instead of the local debootstrap base {BASE_TAG}")
    b.add_argument("--gpu-base-image", metavar="IMAGE",
                   help="base of notebook-gpu (e.g. docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04); "
                        "default: the notebook image with a local base, that CUDA image with --base-image")
    b.add_argument("--torch-index-url", metavar="URL",
                   help="extra index for torch (e.g. https://download.pytorch.org/whl/cu128)")
    b.add_argument("--wheels", metavar="DIR",
                   help="local wheels (torch-*.whl) offered to pip in the GPU build; default: "
                        f"{DEFAULT_WHEELS} when notebook-gpu is built on a local (non-CUDA) base")
    b.add_argument("--version", metavar="TAG", help="image tag (default: the vre version); :latest too")
    b.add_argument("--force", action="store_true", help="rebuild even when the inputs did not change")
    b.add_argument("--quiet", action="store_true", help="hide the engine's build output")
    b.set_defaults(func=cmd_build)
    lk = sub.add_parser("lock", help="write images/constraints/NAME.txt from pip freeze in the built image")
    lk.add_argument("--only", action="append", metavar="NAME")
    lk.add_argument("--engine", choices=("podman", "docker"), default="podman")
    lk.add_argument("--version", metavar="TAG")
    lk.set_defaults(func=cmd_lock)
    cx = sub.add_parser("context", help="write the staged build context of one image into DIR (hand-made builds)")
    cx.add_argument("name", choices=IMAGES)
    cx.add_argument("dir")
    cx.add_argument("--wheels", metavar="DIR", help="wheels to put into wheels/ (notebook-gpu: torch-*.whl)")
    cx.set_defaults(func=cmd_context)


def main(argv: list[str] | None = None) -> int:
    """``python -m vre.images ...`` (the same as ``vre images ...``)."""
    parser = argparse.ArgumentParser(prog="vre")
    add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["images", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except VREError as e:
        print(f"vre: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
