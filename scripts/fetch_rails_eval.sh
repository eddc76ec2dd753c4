#!/usr/bin/env bash
# Fetch a held-out Rails *application* for `rubytailor eval --dir`: Redmine's models,
# controllers and helpers from Debian's `redmine` package (apt-get download + dpkg-deb
# -x, nothing installed). Redmine is GPL-2, so the permissive-only corpus never
# contains it: the model has not seen this code. It is evaluation data only and is
# never committed. The package version apt resolved is written to DEST/VERSION.
#
# Usage: scripts/fetch_rails_eval.sh [DEST_DIR] [--whole]     (default: runs/rails-eval)
#   --whole: the whole application (/usr/share/redmine: app/, lib/, db/, config/, ...),
#   for `rubytailor eval --project DEST --cases-from app/models app/controllers
#   app/helpers`, the rest of Redmine being the project memory.

set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/runs/rails-eval}"
whole="${2:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    { echo "fetch_rails_eval: apt-get and dpkg-deb are needed (Debian/Ubuntu)" >&2; exit 1; }

(cd "$work" && apt-get download redmine >/dev/null 2>"$work/apt.err") || { cat "$work/apt.err" >&2; exit 1; }
deb="$(ls "$work"/redmine_*.deb)"
dpkg-deb -x "$deb" "$work/x"

rm -rf "$dest"
mkdir -p "$dest"
if [ "$whole" = "--whole" ]; then
    cp -r "$work/x/usr/share/redmine/." "$dest/"
else
    for part in models controllers helpers; do
        cp -r "$work/x/usr/share/redmine/app/$part" "$dest/$part"
    done
fi
dpkg-deb -f "$deb" Package Version >"$dest/VERSION"
echo "fetch_rails_eval: $(find "$dest" -name '*.rb' | wc -l) Ruby files from $(basename "$deb") in $dest"
