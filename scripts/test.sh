#!/usr/bin/env bash
# Sets everything up and runs the test suite: `bash scripts/test.sh [cargo test arguments]`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# tests/report.rs opens `gcl report`'s page in a real browser: Debian's chromium, headless.
if [ ! -x /usr/bin/chromium ]; then
  printf '\033[1mgcl setup:\033[0m installing chromium (apt; for the report test)...\n' >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cargo test "$@"
