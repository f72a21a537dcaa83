#!/usr/bin/env bash
# Puts what scripts/gpu_bench.sh needs into .devdata/ (ignored by git): the Fashion-MNIST
# files and the reference scripts; builds the release binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
mkdir -p .devdata/fashion-mnist .devdata/reference
cp /usr/share/datasets/fashion-mnist/*.gz .devdata/fashion-mnist/
cp ../shared/reference/*.py .devdata/reference/
cargo build --release
