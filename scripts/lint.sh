#!/usr/bin/env bash
# Lint: clang-format check and clang-tidy over project code (needs a configured build/ for
# compile_commands.json). Usage: scripts/lint.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in clang-format clang-tidy; do
  command -v $tool >/dev/null || { echo "lint: $tool missing: apt-get install clang-format clang-tidy"; exit 2; }
done
[ -f build/compile_commands.json ] || scripts/setup.sh
mapfile -t files < <(git ls-files 'devices/*.cpp' 'devices/*.h' 'scheduler/*.cpp' 'scheduler/*.h' \
  'host/*.cpp' 'host/*.h' 'tests/*.cpp' 'tests/*.h' 'bench/*.cpp' 'bench/*.h')
status=0
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
else
  clang-format --dry-run --Werror "${files[@]}" || status=1
fi
mapfile -t sources < <(printf '%s\n' "${files[@]}" | grep '\.cpp$')
clang-tidy -p build --quiet "${sources[@]}" 2>/dev/null | grep -E 'warning:|error:' && status=1
exit $status
