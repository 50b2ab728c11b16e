#!/usr/bin/env bash
# Installs Label Studio from PyPI into its own virtualenv (its pins clash with the workspace's).
# Idempotent: does nothing when the pinned version is already installed. Prints the venv path.
#   LABEL_STUDIO_VERSION  version to install (default below)
#   DEFECTLOOP_CACHE      cache root (default ~/.cache/defectloop)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
CACHE="${DEFECTLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/defectloop}"
VENV="$CACHE/labelstudio-venv"
STAMP="$VENV/.defectloop-label-studio-$VERSION"

if [ -f "$STAMP" ] && [ -x "$VENV/bin/label-studio" ]; then
  echo "$VENV"
  exit 0
fi
UV="$("$HERE/ensure-uv.sh")"
mkdir -p "$CACHE"
echo "installing label-studio==$VERSION into $VENV (a few minutes, once)" >&2
if [ ! -x "$VENV/bin/python" ]; then
  "$UV" venv --quiet --python 3.11 "$VENV" >&2 || "$UV" venv --quiet "$VENV" >&2
fi
"$UV" pip install --quiet --python "$VENV/bin/python" "label-studio==$VERSION" >&2
# Import check only: `label-studio version` would set Django up and migrate a default data dir.
"$VENV/bin/python" -c "import label_studio, django" >/dev/null 2>&1 || {
  echo "label-studio installed but does not run; see $VENV" >&2
  exit 1
}
rm -f "$VENV"/.defectloop-label-studio-*
touch "$STAMP"
echo "$VENV"
