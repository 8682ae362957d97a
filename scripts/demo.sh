#!/usr/bin/env bash
# The README's first command: builds Tessera and runs its main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The main job: generate with the project's own trained model (models/tessera-kjv-moe, a qwen3moe
# with 8 experts) on the OpenCL devices found, then print a summary (devices, experts per device,
# tokens/s, device time per op family).
build/bin/tessera devices
exec build/bin/tessera run -p "${1:-In the beginning God created}" -n "${2:-64}"
