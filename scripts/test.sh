#!/usr/bin/env bash
# The README's second command (and CI's): builds Tessera and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Tests measure and cache under a private cache dir so a run never depends on earlier state.
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/build/test-cache}"
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
