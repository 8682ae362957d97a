#!/usr/bin/env bash
# Runs on the accelerator machine (see scripts/device_bench.sh for packing): issue 17's bench, a
# generated model of gpt-oss-20b's shapes (MXFP4 experts) under Tessera and llama.cpp CUDA, the
# GPU-only runs and the GPU + CPU split vs llama.cpp's -ncmoe; and issue 18's serve comparison,
# tessera serve vs llama-server on the default model on the GPU. Callable more than once on a warm
# machine: llama.cpp's build (build-llama/) and the model (build-models/) are kept in the work tree
# and reused. STEPS picks what runs (default: all, in this order):
#   build    llama.cpp CUDA (llama-bench, llama-server) from $LLAMA_SRC, in the background
#   fixture  build-models/gpt-oss-20b.gguf
#   tessera  tessera bench on gpu0 and the split (placement.cpu_moe_layers=$NCMOE)
#   llama    llama-bench -ngl 99 and -ngl 99 -ncmoe $NCMOE (waits for the build)
#   serve    bench/serve/compare.sh on the default model, gpu0 vs llama-server -ngl 99
# Results in $OUT: log.txt, bench.txt ("== name" then JSON per run), serve/.
set -u
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-570}
STEPS=${STEPS:-"build fixture tessera llama serve"}
NCMOE=${NCMOE:-12}
ROOT=$PWD
LB=$ROOT/build-llama
MODEL=$ROOT/build-models/gpt-oss-20b.gguf
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/log.txt"; }
has() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
# gpt-oss-20b: 24 layers, 2880 wide, 64 query / 8 KV heads of 64, 32 experts top-4 of 2880, 201088
# tokens, 131072 context (YaRN 32 x 4096), 128-token window on even layers.
FIX="--arch gpt-oss --weight-type MXFP4 --n-layer 24 --n-embd 2880 --n-head 64 --n-head-kv 8 --head-dim 64 --n-expert 32 --n-expert-used 4 --n-ff-exp 2880 --n-vocab 201088 --n-ctx 131072 --window 128"

{ nproc; lscpu | grep 'Model name'; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; } >> "$OUT/env.txt" 2>&1

if has build && [ ! -x "$LB/bin/llama-server" ] && [ -f "${LLAMA_SRC:-}" ]; then
  mkdir -p "$ROOT/build-llama-src" && tar xzf "$LLAMA_SRC" -C "$ROOT/build-llama-src"
  (cmake -S "$ROOT/build-llama-src" -B "$LB" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF > "$OUT/llama-config.txt" 2>&1 &&
    cmake --build "$LB" -j"$(nproc)" --target llama-bench llama-server > "$LB.log" 2>&1
    echo "rc=$?" >> "$LB.log") &
  BUILD_PID=$!
  log "llama.cpp build started"
fi

if has fixture && [ ! -f "$MODEL" ]; then
  mkdir -p "$(dirname "$MODEL")"
  tessera fixture $FIX -o "$MODEL.tmp" >> "$OUT/log.txt" 2>&1 && mv "$MODEL.tmp" "$MODEL"
  log "fixture: $(stat -c %s "$MODEL" 2>/dev/null) bytes"
fi

tbench() {  # name, args...
  local name=$1; shift
  if [ "$(left)" -lt 60 ]; then log "skip tessera $name (time)"; return; fi
  log "tessera bench -m $MODEL $* -p 512 -n 128 -r 3 --json"
  echo "== tessera $name: $*" >> "$OUT/bench.txt"
  timeout $(( $(left) - 20 )) tessera bench -m "$MODEL" "$@" -p 512 -n 128 -r 3 --json >> "$OUT/bench.txt" 2>> "$OUT/log.txt"
  log "rc=$?"
}
if has tessera && [ -f "$MODEL" ]; then
  tbench gpu0 --device gpu0 --breakdown
  tbench "split-ncmoe$NCMOE" --set placement.attention=gpu0 --set placement.cpu_moe_layers=$NCMOE
fi

if [ -n "${BUILD_PID:-}" ]; then
  wait "$BUILD_PID"
  tail -3 "$LB.log" >> "$OUT/log.txt"
  log "llama.cpp build done"
fi
lbench() {  # name, args...
  local name=$1; shift
  if [ ! -x "$LB/bin/llama-bench" ] || [ "$(left)" -lt 40 ]; then log "skip llama $name"; return; fi
  log "llama-bench -m $MODEL $* -p 512 -n 128 -r 3 -o jsonl"
  echo "== llama $name: $*" >> "$OUT/bench.txt"
  timeout $(( $(left) - 20 )) "$LB/bin/llama-bench" -m "$MODEL" "$@" -p 512 -n 128 -r 3 -o jsonl >> "$OUT/bench.txt" 2> "$OUT/llama-err.txt"
  log "rc=$?"
}
if has llama && [ -f "$MODEL" ]; then
  lbench cuda -ngl 99
  lbench "ncmoe$NCMOE" -ngl 99 -ncmoe "$NCMOE"
fi

if has serve && [ "$(left)" -gt 120 ]; then
  log "serve comparison"
  TESSERA=$(command -v tessera) LLAMA_SERVER=$LB/bin/llama-server TESSERA_ARGS="--device gpu0" \
    LLAMA_ARGS="-ngl 99" timeout $(( $(left) - 10 )) bash "$ROOT/bench/serve/compare.sh" \
    "$ROOT/models/tessera-kjv-moe/tessera-kjv-moe-q8_0.gguf" "$OUT/serve" > "$OUT/serve.txt" 2>&1
  log "serve rc=$?"
fi
log "done"
