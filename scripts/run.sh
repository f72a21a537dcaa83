#!/usr/bin/env bash
# Sets everything up, builds gcl and runs it: `bash scripts/run.sh [gcl arguments]`
# (default: `gcl train`, GCL in two stages on Fashion-MNIST-LT, then the results table).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
echo "gcl: building (the first build compiles libtorch's C++ glue, about 5 minutes)..." >&2
cargo build --release --quiet
# The main job: train into runs/latest, replacing the previous main job's run there.
if [ "$#" -eq 0 ]; then set -- train --out runs/latest --overwrite; fi
exec ./target/release/gcl "$@"
