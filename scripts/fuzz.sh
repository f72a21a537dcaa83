#!/usr/bin/env bash
# Fuzzes gcl's readers of user bytes (tests/fuzz.rs) for a fixed budget: CASES random inputs
# per target (default 200000), at most SECONDS_BUDGET seconds in all (default 600). Not part of CI.
# A failing input is shrunk and saved in tests/fuzz.proptest-regressions: commit it with the fix.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cases="${CASES:-200000}"
budget="${SECONDS_BUDGET:-600}"
echo "fuzz: $cases cases per target, at most $budget s" >&2
PROPTEST_CASES="$cases" timeout "$budget" cargo test --release --test fuzz -- --test-threads 2
