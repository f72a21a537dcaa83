#!/usr/bin/env bash
# Sets everything up and runs the test suite: `bash scripts/test.sh [cargo test arguments]`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo test "$@"
