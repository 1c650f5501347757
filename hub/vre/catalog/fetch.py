"""The catalogue of a session pod on Kubernetes with claims (``k8s_storage = "pvc"``): the hub's
catalogue folder is not on the node, so the pod's first container fetches its mounted datasets'
``record.json`` and ``index.sqlite`` from the VRE service (``api/catalogue/<slug>/<file>``, with
the session's own token) into a scratch volume that the session's container mounts read-only at
``/opt/vre/catalog``.

It runs the session image's ``python3 -I -c`` on this file's source, passed in the pod's command
(nothing from a place a researcher can write), before any of the researcher's code: **standard
library only, no imports from vre** (``tests/unit/test_catalogue_api.py`` runs it that way).

A catalogue the hub cannot hand over now (the service restarting, a dataset not indexed yet) is
tried again for ``--wait`` seconds, then left out with a line on the container's log: the session
starts with its datasets' files, its Datasets panel without that index.
"""

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

FILES = ("record.json", "index.sqlite")
CHUNK = 1 << 20


def fetch(api: str, token: str, slug: str, name: str, out: str) -> None:
    """One file, written whole or not at all."""
    request = urllib.request.Request(f"{api}/catalogue/{slug}/{name}", headers={"Authorization": f"token {token}"})
    part = out + ".part"
    with urllib.request.urlopen(request, timeout=60) as r, open(part, "wb") as f:
        expected = int(r.headers.get("Content-Length") or -1)
        got = 0
        while chunk := r.read(CHUNK):
            f.write(chunk)
            got += len(chunk)
    if expected >= 0 and got != expected:
        os.unlink(part)
        raise OSError(f"{name} cut short ({got} of {expected} bytes)")
    os.chmod(part, 0o444)
    os.replace(part, out)


def fetch_all(api: str, token: str, root: str, slugs: list[str], wait: float) -> list[str]:
    """Fetch every dataset's files; the slugs whose catalogue could not be had."""
    missing = []
    for slug in slugs:
        folder = os.path.join(root, slug)
        os.makedirs(folder, exist_ok=True)
        deadline = time.monotonic() + wait
        for name in FILES:
            while True:
                try:
                    fetch(api, token, slug, name, os.path.join(folder, name))
                    break
                except (OSError, urllib.error.URLError) as e:
                    status = getattr(e, "code", None)
                    if (status is not None and 400 <= status < 500) or time.monotonic() > deadline:
                        print(f"vre-catalogue: {slug}/{name}: {e}; the session starts without it", flush=True)
                        missing.append(slug)
                        break
                    time.sleep(1)
            if slug in missing:
                break
        os.chmod(folder, 0o555)
    return missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vre-catalogue")
    ap.add_argument("--root", required=True, help="the scratch folder the session mounts read-only")
    ap.add_argument("--wait", type=float, default=30, help="seconds to keep trying a dataset's catalogue")
    ap.add_argument("slugs", nargs="*")
    args = ap.parse_args(argv)
    api, token = os.environ.get("VRE_API_URL", ""), os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not api.startswith("http://") or not token:
        print("vre-catalogue: VRE_API_URL (http://...) and JUPYTERHUB_API_TOKEN are required", file=sys.stderr)
        return 2
    missing = fetch_all(api.rstrip("/"), token, args.root, args.slugs, args.wait)
    print(f"vre-catalogue: {len(args.slugs) - len(missing)} of {len(args.slugs)} catalogue(s) fetched", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
