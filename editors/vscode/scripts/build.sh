#!/usr/bin/env bash
# Builds the VS Code extension from a clean checkout: exact dependencies from
# package-lock.json, then tsc into out/. Optional in CI: exits 0 with a note when npm
# is missing, unless RUBYTAILOR_REQUIRE_NPM=1.
# Usage: bash editors/vscode/scripts/build.sh [--package]   (--package also writes rubytailor.vsix)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null; then
  if [ "${RUBYTAILOR_REQUIRE_NPM:-0}" = 1 ]; then
    echo "editors/vscode: npm not found; install Node.js >= 20 with npm" >&2
    exit 1
  fi
  echo "editors/vscode: npm not found, skipping the VS Code extension build" >&2
  exit 0
fi

npm ci --no-audit --no-fund
npm run compile
if [ "${1:-}" = "--package" ]; then
  npm run package
fi
