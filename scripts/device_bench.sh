#!/usr/bin/env bash
# Runs on the accelerator machine (GPU + CPU, both OpenCL): Tessera and, when a llama.cpp source
# tarball is given, llama.cpp built there with CUDA, on the same generated qwen3moe models in one
# run. Pack the binaries with shared/device/pack.sh (tessera in .device/build/bin), copy this
# script into .device/ and run there:
#   source .device/env.sh; LLAMA_SRC=.llama/llama-src.tar.gz bash .device/device_bench.sh
# Everything lands in $OUT: env.txt, log.txt (every command with its timing), bench.txt (one
# "== name" line then the JSON of each tessera bench / llama-bench run), matrix-*.json. Steps are skipped when the time budget (BUDGET_S, default 560 s
# from the start) would run out, so a partial run still returns its figures.
set -u
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
log() { echo "[$(($(date +%s) - T0)) s] $*" >> "$OUT/log.txt"; }
FIX="--arch qwen3moe --n-layer 16 --n-embd 1024 --n-head 16 --n-head-kv 4 --head-dim 64 --n-expert 32 --n-expert-used 4 --n-ff-exp 512 --n-vocab 32000 --n-ctx 4096"
TYPES=${TYPES:-"Q4_0 Q8_0"}
SPLIT="--set placement.attention=gpu0 --set placement.cpu_moe_layers=8"

{ nproc; lscpu | grep 'Model name'; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; tessera devices; } > "$OUT/env.txt" 2>&1

# llama.cpp with CUDA (Hopper only, to keep the build short), in the background.
LLAMA=""
if [ -n "${LLAMA_SRC:-}" ] && [ -f "$LLAMA_SRC" ]; then
  mkdir -p /tmp/llama && tar xzf "$LLAMA_SRC" -C /tmp/llama
  (cd /tmp/llama && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF \
      > /tmp/llama-config.txt 2>&1 && cmake --build build -j"$(nproc)" --target llama-bench \
      > /tmp/llama-build.txt 2>&1; echo "rc=$?" >> /tmp/llama-build.txt) &
  LLAMA_PID=$!
  log "llama.cpp build started"
fi

for t in $TYPES; do
  tessera fixture $FIX --weight-type "$t" -o "/tmp/bench-$t.gguf" > /dev/null 2>> "$OUT/log.txt"
  log "fixture $t: $(stat -c %s /tmp/bench-$t.gguf) bytes"
done
# Correctness on the GPU while the build runs (timings here would be disturbed, so none).
if [ "${MATRIX:-1}" = 1 ]; then
  timeout 150 tessera matrix --devices gpu0 --json > "$OUT/matrix-gpu0.json" 2>> "$OUT/log.txt"
  log "matrix gpu0 rc=$?"
fi
if [ -n "${LLAMA_PID:-}" ]; then
  wait "$LLAMA_PID"
  tail -3 /tmp/llama-build.txt >> "$OUT/log.txt"
  [ -x /tmp/llama/build/bin/llama-bench ] && LLAMA=/tmp/llama/build/bin/llama-bench
  log "llama.cpp build done: ${LLAMA:-failed}"
fi

tbench() {  # name, file, args...
  local name=$1 file=$2; shift 2
  if [ "$(left)" -lt 40 ]; then log "skip tessera $name (time)"; return; fi
  log "tessera bench -m $file $* -p 512 -n 128 -r 3 --json"
  echo "== tessera $name: $*" >> "$OUT/bench.txt"
  timeout 90 tessera bench -m "$file" "$@" -p 512 -n 128 -r 3 --json >> "$OUT/bench.txt" 2>> "$OUT/log.txt"
  log "rc=$?"
}
lbench() {  # name, file, args...
  local name=$1 file=$2; shift 2
  if [ -z "$LLAMA" ] || [ "$(left)" -lt 30 ]; then log "skip llama $name"; return; fi
  log "llama-bench -m $file $* -p 512 -n 128 -r 3 -o json"
  echo "== llama $name: $*" >> "$OUT/bench.txt"
  timeout 60 "$LLAMA" -m "$file" "$@" -p 512 -n 128 -r 3 -o jsonl >> "$OUT/bench.txt" 2> /tmp/llama-err.txt
  local rc=$?
  log "rc=$rc"
  [ $rc = 0 ] || tail -5 /tmp/llama-err.txt >> "$OUT/log.txt"
}
for t in $TYPES; do
  f=/tmp/bench-$t.gguf
  lbench "cuda-$t" "$f" -ngl 99
  tbench "gpu0-$t" "$f" --device gpu0 --breakdown
  lbench "cpu-$t" "$f" -dev none -t "$(nproc)"
  tbench "cpu0-$t" "$f" --device cpu0 --breakdown
  lbench "ncmoe8-$t" "$f" -ngl 99 -ncmoe 8
  # The split with the GPU's budget set to what the plan needs plus HEADROOM_MIB: the balancer may
  # move only that much of the CPU's experts to the GPU (as on a GPU that cannot hold them all).
  need=$(tessera plan -m "$f" $SPLIT --ctx 528 --json 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin); d=[d for d in p["devices"] if d["id"]=="gpu0"][0]; print((d["weight_bytes"]+d["kv_bytes"]+d.get("stream_bytes",0))//1048576)')
  budget="--set devices.budgets.gpu0=$((need + ${HEADROOM_MIB:-64}))MiB"
  log "gpu0 plan needs ${need} MiB: $budget"
  tbench "split-$t" "$f" $SPLIT $budget
  tbench "split-nostream-$t" "$f" $SPLIT $budget --set placement.stream_experts=off
  # Each streamed layer's write at its own turn (no write-ahead on the copy queue), for the A/B.
  TESSERA_NO_FUSE=stream_ahead tbench "split-serial-$t" "$f" $SPLIT $budget
  # The writes in order on the GPU's own queue (no second queue), for the A/B.
  TESSERA_NO_FUSE=stream_queue tbench "split-onequeue-$t" "$f" $SPLIT $budget
  tbench "split-balancer-$t" "$f" $SPLIT $budget --balancer
  # A GPU budget of half the file (weights, KV and the streamed-experts room within it) against
  # llama.cpp keeping the experts of 9 of the 16 layers on the CPU.
  half="--set devices.budgets.gpu0=$(( $(stat -c %s "$f") / 2 / 1048576 + 16 ))MiB"
  lbench "ncmoe9-$t" "$f" -ngl 99 -ncmoe 9
  tbench "half-$t" "$f" $half
done
# Decode alone (no prompt step, so nothing streams) with streaming prepared and off, alternated:
# a decode slowdown seen once where streaming was prepared (H200, 2026-12-06; not seen on the H100
# the same day: bench/END_TO_END.md).
for t in $TYPES; do
  f=/tmp/bench-$t.gguf
  for round in 1 2; do
    for se in off auto; do
      if [ "$(left)" -lt 40 ]; then log "skip decode A/B $t (time)"; continue; fi
      echo "== tessera decode-stream-$se-$t-$round: $SPLIT" >> "$OUT/bench.txt"
      timeout 60 tessera bench -m "$f" $SPLIT --set placement.stream_experts=$se -p 0 -n 128 -r 3 \
          --json >> "$OUT/bench.txt" 2>> "$OUT/log.txt"
      log "decode A/B $se $t rc=$?"
    done
  done
done
if [ "${MATRIX:-1}" = 1 ] && [ "$(left)" -gt 100 ]; then
  timeout $(( $(left) - 20 )) tessera matrix --devices cpu0 --json > "$OUT/matrix-cpu0.json" 2>> "$OUT/log.txt"
  log "matrix cpu0 rc=$?"
fi
log "done"
