#!/usr/bin/env bash
# Build the VRE JupyterLab extension (extensions/src, extensions/style) into
# extensions/vre_session/labextension/, then install the vre-session package into the virtual
# environment: pip ships the bundle as shared data (share/jupyter/labextensions/vre-session), so
# a pip install of the package is all an environment or image needs. Offline-safe at run time
# (everything is bundled):
#
#   npm ci (only when package-lock.json changed) -> tsc -> jupyter-builder (rspack) into
#   extensions/vre_session/labextension/ (+ install.json, .vre-build-hash)
#   -> pip install --no-deps ./extensions (only when the installed bundle is not this build)
#
# Idempotent and quick when nothing changed (the build is skipped when its inputs' hash matches
# the last build). This is the developer entry; scripts/setup and pip's build hook
# (vre_session/_labextension_build.py) call it with --build-only.
# Usage: bash extensions/build-labextension.sh [--force] [--build-only]
# Environment: VENV (default: <repo>/.venv, or $VRE_VENV), NPM (default: npm).
set -euo pipefail
EXT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$EXT")
VENV=${VENV:-${VRE_VENV:-$ROOT/.venv}}
NPM=${NPM:-npm}
OUT=$EXT/vre_session/labextension
DEST=$VENV/share/jupyter/labextensions/vre-session
force=0; build_only=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    --build-only) build_only=1 ;;
    *) echo "usage: $0 [--force] [--build-only]" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m[labextension]\033[0m %s\n' "$*"; }
[[ -x $VENV/bin/jupyter-builder || -x $VENV/bin/jupyter ]] || { echo "no Jupyter in $VENV (run scripts/setup first)" >&2; exit 1; }
command -v node >/dev/null || { echo "node is required to build the lab extension" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"   # jupyter-builder, and jlpm if the builder wants it
cd "$EXT"

# 1. Build when an input changed (sources, styles, manifests, this script, JupyterLab's version).
sources=$("$VENV/bin/python" vre_session/_labextension_build.py hash)
jlab=$("$VENV/bin/python" -c 'import jupyterlab; print(jupyterlab.__version__)')
stamp="sources=$sources
jupyterlab=$jlab"
if (( force )) || [[ ! -f $OUT/package.json || ! -f $OUT/.vre-build-hash || $(cat "$OUT/.vre-build-hash") != "$stamp" ]]; then
  # node_modules: `npm ci` only when the lock file changed since the last install.
  lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [[ ! -f node_modules/.vre-lock-hash || $(cat node_modules/.vre-lock-hash) != "$lock_hash" ]]; then
    log "npm ci"
    $NPM ci --no-audit --no-fund --ignore-scripts --prefer-offline --loglevel=error
    echo "$lock_hash" > node_modules/.vre-lock-hash
  fi
  log "tsc"
  node_modules/.bin/tsc -p .
  log "jupyter-builder build (production)"
  rm -rf "$OUT"
  if [[ -x $VENV/bin/jupyter-builder ]]; then
    "$VENV/bin/jupyter-builder" build .
  else
    "$VENV/bin/jupyter" labextension build .
  fi
  # As the extension template's install.json: `jupyter labextension list` names the package.
  cat > "$OUT/install.json" <<'EOF'
{
  "packageManager": "python",
  "packageName": "vre-session",
  "uninstallInstructions": "Use your Python package manager (pip, conda, etc.) to uninstall the package vre-session"
}
EOF
  echo "$stamp" > "$OUT/.vre-build-hash"
else
  log "up to date ($OUT)"
fi
(( build_only )) && exit 0

# 2. Install the package (not editable: sessions see the environment read-only, never the checkout).
if ! cmp -s "$OUT/.vre-build-hash" "$DEST/.vre-build-hash"; then
  "$VENV/bin/python" -c 'import hatchling, hatch_jupyter_builder' 2>/dev/null \
    || "$VENV/bin/pip" install -q 'hatchling>=1.5.0' 'hatch-jupyter-builder>=0.5'
  log "pip install --no-deps ./extensions -> $DEST"
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall "$EXT"
  chmod -R a+rX "$DEST"
fi
log "ready: vre-session $(node -p "require('$OUT/package.json').version") in $DEST"
