#!/usr/bin/env bash
# The README's first command: builds Tessera and runs its main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/bin/tessera devices --probe
