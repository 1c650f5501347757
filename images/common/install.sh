#!/bin/sh
# Build steps shared by the VRE Dockerfiles (run as root inside `podman build` / `docker build`).
#
#   install.sh system [PKG...]        Debian/Ubuntu packages (python3, python3-venv, tini, ...) that the
#                                     base lacks, no recommends; the user jovyan (1000:100)
#   install.sh python CONSTRAINTS REQS...
#                                     the venv /opt/vre/venv and one pip install of the requirement
#                                     files, pinned by CONSTRAINTS (unpinned when that file is empty)
#   install.sh hub SRC                the vre package from SRC (pyproject.toml, hub/), its hub config
#   install.sh session SRC [KERNEL...] vre_session from SRC/extensions (pip: with its built lab extension),
#                                     the kernelspecs SRC/kernels/KERNEL, the server's image config
#   install.sh itk CACHE              itkwidgets' viewer assets from the checked npm tarballs in CACHE
#                                     (/opt/vre/build/itk_assets.py, offline)
#
# Network settings come from the build: a CA bundle for an intercepting proxy as the build secret
# `cacert` (/run/secrets/cacert, never stored in a layer), PIP_INDEX_URL / PIP_EXTRA_INDEX_URL /
# PIP_DEFAULT_TIMEOUT build args, wheels in /wheels (a bind mount of the context's wheels/).
set -eu
VENV=/opt/vre/venv
NB_UID=1000
NB_GID=100
log() { printf '[install] %s\n' "$*"; }

if [ -s /run/secrets/cacert ]; then
  export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert REQUESTS_CA_BUNDLE=/run/secrets/cacert \
         NPM_CONFIG_CAFILE=/run/secrets/cacert
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

# Make PATH readable by any uid, touching only what lacks it: a chmod of an unchanged file in a lower
# layer copies it up (chmod -R over the venv doubled the image).
readable() {
  find "$1" \( -type d ! -perm -o+rx -o -type f ! -perm -o+r \) -exec chmod o+rX {} +
}

step=$1; shift
case $step in
system)
  missing=""
  for p in python3 python3-venv ca-certificates tini procps bash "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
  # jovyan 1000:100; Ubuntu images have a user 1000 ("ubuntu") of their own
  other=$(getent passwd "$NB_UID" | cut -d: -f1 || true)
  if [ -n "$other" ] && [ "$other" != jovyan ]; then userdel -r "$other" 2>/dev/null || userdel "$other"; fi
  getent group "$NB_GID" >/dev/null || groupadd -g "$NB_GID" users
  getent passwd jovyan >/dev/null || useradd -u "$NB_UID" -g "$NB_GID" -M -d /home/jovyan -s /bin/bash jovyan
  # Sessions run as any uid:gid with /home/jovyan bind-mounted; without a mount, any uid may write it.
  mkdir -p /home/jovyan /etc/vre
  chown "$NB_UID:$NB_GID" /home/jovyan
  chmod 1777 /home/jovyan
  ;;
python)
  [ -x $VENV/bin/python ] || { log "python3 -m venv $VENV"; python3 -m venv $VENV; }
  constraints=$1; shift
  args=""
  for r in "$@"; do args="$args -r $r"; done
  if [ -s "$constraints" ]; then args="$args -c $constraints"; else log "no pins in $constraints: unpinned install"; fi
  [ -d /wheels ] && args="$args --find-links /wheels"
  log "pip install$args"
  # shellcheck disable=SC2086
  $VENV/bin/pip install $args
  ;;
session)
  src=$1; shift
  [ -f "$src/extensions/vre_session/labextension/package.json" ] || {
    echo "the JupyterLab extension is not built (extensions/vre_session/labextension); run scripts/setup" >&2; exit 1; }
  # One pip install: the package ships its built lab extension as shared data
  # (share/jupyter/labextensions/vre-session). Its build backend (hatchling, hatch-jupyter-builder)
  # is in the venv (requirements.txt); with no TypeScript sources in the context, nothing is built.
  tmp=$(mktemp -d)
  cp -r "$src/extensions" "$tmp/extensions"        # nothing the build writes lands in the image's sources
  log "pip install vre_session"
  $VENV/bin/pip install --no-deps --no-build-isolation --force-reinstall "$tmp/extensions"
  rm -rf "$tmp"
  [ -f $VENV/share/jupyter/labextensions/vre-session/package.json ] || {
    echo "pip install of vre_session did not install its lab extension" >&2; exit 1; }
  for k in "$@"; do
    log "kernelspec $k"
    $VENV/bin/jupyter kernelspec install --sys-prefix --replace "$src/kernels/$k" >/dev/null
  done
  # jsonschema builds an IRI grammar at import when rfc3987-syntax is there (~1 s of every server
  # start, jupyter_server#1559); as in scripts/setup, sessions go without it.
  $VENV/bin/pip uninstall -q -y rfc3987-syntax 2>/dev/null || true
  $VENV/bin/python -m compileall -q $VENV/lib/python3*/site-packages/vre_session >/dev/null || true
  readable /opt/vre
  ;;
itk)
  # itkwidgets offline (scripts/itk_assets.py): checked tarballs from $1, no network
  $VENV/bin/python /opt/vre/build/itk_assets.py install --prefix $VENV --cache "$1" --offline
  readable $VENV/share/vre-itk
  ;;
hub)
  src=$1
  tmp=$(mktemp -d)
  cp -r "$src/pyproject.toml" "$src/README.md" "$src/hub" "$tmp/"
  log "pip install vre"
  $VENV/bin/pip install --no-deps --no-build-isolation --force-reinstall "$tmp"
  cp "$src/hub/jupyterhub_config.py" /opt/vre/jupyterhub_config.py
  rm -rf "$tmp"
  mkdir -p /etc/vre /var/lib/vre
  readable /opt/vre
  ;;
*)
  echo "install.sh: unknown step $step" >&2; exit 2 ;;
esac
