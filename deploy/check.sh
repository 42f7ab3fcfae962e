#!/usr/bin/env bash
# Renders and validates deploy/switchyard (the Helm chart) and compose.yaml, with no cluster,
# no helm binary and no Docker engine: deploy/check.py says what is checked. Installs its
# pinned tools (deploy/requirements.txt) from PyPI into a virtualenv in the cache directory on
# first use. Exits non-zero on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${SWITCHYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}"
# One virtualenv per set of pins: a changed requirements.txt gets a fresh one.
pins=$(sha256sum deploy/requirements.txt | cut -c1-12)
venv="$cache/deploy-check-$pins"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    rm -rf "$cache"/deploy-check-*   # this one, half made, or one for older pins
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: -r deploy/requirements.txt
    touch "$venv/.complete"
fi

# Helm's chart loader logs one INFO line for the chart's one symlink
# (files/switchyard.toml -> the repository's switchyard.toml); drop just that.
"$venv/bin/python" deploy/check.py "$@" 2> >(grep -v 'found symbolic link in path' >&2)
