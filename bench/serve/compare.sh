#!/usr/bin/env bash
# tessera serve vs llama-server on the same model and device, one after the other in one run, each
# driven by load_bench.py at the same concurrency levels. Figures only, never pass/fail.
#
#   bench/serve/compare.sh MODEL.gguf OUTDIR
#
# Environment (defaults in brackets):
#   TESSERA       tessera binary [build/bin/tessera]
#   LLAMA_SERVER  llama-server binary [llama-server on PATH]; empty or missing: Tessera alone
#   TESSERA_ARGS  extra `tessera serve` flags, e.g. "--device gpu0" [""]
#   LLAMA_ARGS    extra llama-server flags, e.g. "-ngl 99" or "-t 2" [""]
#   PARALLEL      sequences each server runs at once (--parallel / -np) [64]
#   SLOT_CTX      context tokens per sequence (tessera --ctx; llama-server -c PARALLEL*SLOT_CTX) [256]
#   LEVELS        concurrent streams [1,4,16,64]; MAX_TOKENS per request [64]; REQUESTS per level
#                 [load_bench's default: 2 x streams, at least 4]
# Writes OUTDIR/tessera.json, OUTDIR/llama-server.json and the servers' logs; prints both tables.
set -u
MODEL=$1
OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
TESSERA=${TESSERA:-build/bin/tessera}
LLAMA_SERVER=${LLAMA_SERVER-$(command -v llama-server || true)}
PARALLEL=${PARALLEL:-64}
SLOT_CTX=${SLOT_CTX:-256}
LEVELS=${LEVELS:-1,4,16,64}
MAX_TOKENS=${MAX_TOKENS:-64}
mkdir -p "$OUT"

wait_health() {  # port pid: 0 once /health answers 200, 1 if the server died or 300 s passed
  for _ in $(seq 600); do
    kill -0 "$2" 2> /dev/null || return 1
    if python3 - "$1" << 'EOF' 2> /dev/null; then return 0; fi
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("GET", "/health")
sys.exit(0 if c.getresponse().status == 200 else 1)
EOF
    sleep 0.5
  done
  return 1
}

bench() {  # label port pid
  if wait_health "$2" "$3"; then
    python3 "$HERE/load_bench.py" --url "http://127.0.0.1:$2" --levels "$LEVELS" \
      --max-tokens "$MAX_TOKENS" ${REQUESTS:+--requests "$REQUESTS"} --label "$1" \
      --json "$OUT/$1.json"
  else
    echo "$1: the server did not become healthy (log: $OUT/$1.log)"
    tail -5 "$OUT/$1.log"
  fi
  kill -TERM "$3" 2> /dev/null
  wait "$3" 2> /dev/null
}

# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
"$TESSERA" serve -m "$MODEL" --port 18431 --parallel "$PARALLEL" --max-queue 256 --ctx "$SLOT_CTX" \
  ${TESSERA_ARGS:-} > "$OUT/tessera.log" 2>&1 &
bench tessera 18431 $!

if [ -n "$LLAMA_SERVER" ] && [ -x "$LLAMA_SERVER" ]; then
  # shellcheck disable=SC2086
  "$LLAMA_SERVER" -m "$MODEL" --port 18432 -np "$PARALLEL" -c $((PARALLEL * SLOT_CTX)) \
    ${LLAMA_ARGS:-} > "$OUT/llama-server.log" 2>&1 &
  bench llama-server 18432 $!
else
  echo "llama-server: not found (set LLAMA_SERVER); Tessera measured alone"
fi
