#!/usr/bin/env bash
# Build the VRE JupyterLab extension (extensions/src, extensions/style) and install it into the
# virtual environment, from a clean checkout, offline-safe at run time (everything is bundled):
#
#   npm ci (only when package-lock.json changed) -> tsc -> jupyter-builder (rspack) into
#   extensions/vre_session/labextension/ -> copied to $VENV/share/jupyter/labextensions/vre-session/
#
# Idempotent and quick when nothing changed (the build is skipped when its inputs' hash matches
# the last build). Usage: bash extensions/build-labextension.sh [--force]
# Environment: VENV (default: <repo>/.venv, or $VRE_VENV), NPM (default: npm).
set -euo pipefail
EXT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$EXT")
VENV=${VENV:-${VRE_VENV:-$ROOT/.venv}}
NPM=${NPM:-npm}
OUT=$EXT/vre_session/labextension
DEST=$VENV/share/jupyter/labextensions/vre-session
force=0; [[ "${1:-}" == "--force" ]] && force=1

log() { printf '\033[1m[labextension]\033[0m %s\n' "$*"; }
[[ -x $VENV/bin/jupyter-builder || -x $VENV/bin/jupyter ]] || { echo "no Jupyter in $VENV (run scripts/setup first)" >&2; exit 1; }
command -v node >/dev/null || { echo "node is required to build the lab extension" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"   # jupyter-builder, and jlpm if the builder wants it
cd "$EXT"

# 1. node_modules: `npm ci` only when the lock file changed since the last install.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f node_modules/.vre-lock-hash || $(cat node_modules/.vre-lock-hash) != "$lock_hash" ]]; then
  log "npm ci"
  $NPM ci --no-audit --no-fund --ignore-scripts --prefer-offline --loglevel=error
  echo "$lock_hash" > node_modules/.vre-lock-hash
fi

# 2. Build when an input changed (sources, styles, manifests, the builder's versions).
inputs_hash=$( { find src style -type f -print0 | sort -z | xargs -0 sha256sum;
                 sha256sum package.json package-lock.json tsconfig.json;
                 "$VENV/bin/python" -c 'import jupyterlab; print(jupyterlab.__version__)'; } | sha256sum | cut -d' ' -f1)
if (( force )) || [[ ! -f $OUT/package.json || ! -f $OUT/.vre-build-hash || $(cat "$OUT/.vre-build-hash") != "$inputs_hash" ]]; then
  log "tsc"
  node_modules/.bin/tsc -p .
  log "jupyter-builder build (production)"
  rm -rf "$OUT"
  if [[ -x $VENV/bin/jupyter-builder ]]; then
    "$VENV/bin/jupyter-builder" build .
  else
    "$VENV/bin/jupyter" labextension build .
  fi
  echo "$inputs_hash" > "$OUT/.vre-build-hash"
else
  log "up to date ($OUT)"
fi

# 3. Install: a plain copy (sessions see the environment read-only; no symlink into the checkout).
if ! diff -rq "$OUT" "$DEST" >/dev/null 2>&1; then
  log "install -> $DEST"
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST.tmp"
  cp -r "$OUT" "$DEST.tmp"
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
  chmod -R a+rX "$DEST"
fi
log "ready: vre-session $(node -p "require('$OUT/package.json').version") in $DEST"
