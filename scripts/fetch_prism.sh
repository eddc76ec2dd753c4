#!/usr/bin/env bash
# Fetch prism.wasm (Ruby's parser compiled to WebAssembly) from the npm package
# @ruby/prism, pinned by version and by the SHA-256 of the .wasm itself, into
# vendor/prism/ (git-ignored). Run by `make setup`; safe to run again: a file that
# is already there with the right hash is left alone.
#
# Usage: scripts/fetch_prism.sh [DEST_DIR]     (default: <repo>/vendor/prism)

set -euo pipefail

PRISM_VERSION="1.9.0"
# sha256 of package/src/prism.wasm in @ruby/prism@1.9.0. rubytailor/prism.py pins
# the same value (tests/test_prism_fetch.py checks the two agree).
PRISM_WASM_SHA256="4e522c461d5086e43e86e0d3a8914f3c3bcb604d621a53a15e6c9d90c6ffd128"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${1:-$repo_root/vendor/prism}"
wasm="$dest_dir/prism.wasm"
license="$dest_dir/LICENSE.txt"

die() {
    echo "fetch_prism: error: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        die "neither sha256sum nor shasum is installed; install coreutils"
    fi
}

# The npm package ships no LICENSE file, so this is prism's own (ruby/prism v1.9.0,
# LICENSE.md), the license package.json declares ("MIT").
write_license() {
    cat >"$1" <<'EOF'
prism.wasm comes from the npm package @ruby/prism (https://github.com/ruby/prism),
which is released under the MIT license:

Copyright 2022-present, Shopify Inc.

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files (the "Software"), to deal in the Software without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
EOF
}

if [[ -f "$wasm" && "$(sha256_of "$wasm")" == "$PRISM_WASM_SHA256" ]]; then
    [[ -f "$license" ]] || write_license "$license"
    echo "fetch_prism: $wasm is up to date (@ruby/prism@$PRISM_VERSION)"
    exit 0
fi

command -v npm >/dev/null 2>&1 ||
    die "npm is not installed; install Node.js and npm (Debian: apt-get install npm), then run 'make setup' again"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch_prism: downloading @ruby/prism@$PRISM_VERSION with npm pack"
tarball="$(cd "$work" && npm pack --silent "@ruby/prism@$PRISM_VERSION" 2>"$work/npm.log" | tail -n 1)" ||
    die "npm pack @ruby/prism@$PRISM_VERSION failed (is the npm registry reachable?): $(tail -n 5 "$work/npm.log")"
[[ -n "$tarball" && -f "$work/$tarball" ]] ||
    die "npm pack @ruby/prism@$PRISM_VERSION produced no package: $(tail -n 5 "$work/npm.log")"

tar -xzf "$work/$tarball" -C "$work" package/src/prism.wasm ||
    die "the @ruby/prism@$PRISM_VERSION package has no package/src/prism.wasm"

actual="$(sha256_of "$work/package/src/prism.wasm")"
[[ "$actual" == "$PRISM_WASM_SHA256" ]] ||
    die "prism.wasm from @ruby/prism@$PRISM_VERSION has SHA-256 $actual, expected $PRISM_WASM_SHA256; refusing to install it (the registry served a different file)"

mkdir -p "$dest_dir"
# Copy then rename, so an interrupted run never leaves a half-written prism.wasm.
cp "$work/package/src/prism.wasm" "$wasm.tmp.$$"
mv -f "$wasm.tmp.$$" "$wasm"
if tar -xzf "$work/$tarball" -C "$work" --wildcards 'package/LICENSE*' 2>/dev/null; then
    cp "$(find "$work/package" -maxdepth 1 -name 'LICENSE*' | head -n 1)" "$license"
else
    write_license "$license"
fi
echo "fetch_prism: installed $wasm (@ruby/prism@$PRISM_VERSION, sha256 $PRISM_WASM_SHA256)"
