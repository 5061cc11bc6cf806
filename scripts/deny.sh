#!/usr/bin/env bash
# Checks the dependency tree against deny.toml with cargo-deny, installing the pinned cargo-deny
# from crates.io first if it is missing (a build of about 3 minutes, once per machine).
#
#   scripts/deny.sh               licenses, bans and sources: offline, from Cargo.lock alone (CI)
#   scripts/deny.sh advisories    RustSec advisories: fetches the advisory database from GitHub
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
if [ "$(cargo deny --version 2>/dev/null || true)" != "cargo-deny $version" ]; then
  echo "deny.sh: installing cargo-deny $version from crates.io" >&2
  cargo install --locked --quiet "cargo-deny@$version"
fi
if [ $# -eq 0 ]; then
  exec cargo deny --offline check licenses bans sources
fi
exec cargo deny check "$@"
