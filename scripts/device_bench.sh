#!/usr/bin/env bash
# Runs on the accelerator machine: writes the Q4_0 bench model there, then tessera bench on gpu0,
# cpu0 and the split (attention gpu0, experts of 8 of 16 layers on cpu0). Pack with shared/device/pack.sh,
# copy this script into .device/ and run: source .device/env.sh; bash .device/device_bench.sh
set -u
M=/tmp/bench-q4_0.gguf
FIX="--arch qwen3moe --n-layer 16 --n-embd 1024 --n-head 16 --n-head-kv 4 --head-dim 64 --n-expert 32 --n-expert-used 4 --n-ff-exp 512 --n-vocab 32000 --n-ctx 4096"
{ nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; tessera devices; } > $OUT/env.txt 2>&1
( time tessera fixture $FIX --weight-type Q4_0 -o $M ) > $OUT/fixture.txt 2>&1
ls -l $M >> $OUT/fixture.txt
for cfg in "gpu0:--device gpu0" "cpu0:--device cpu0" "split:--set placement.attention=gpu0 --set placement.cpu_moe_layers=8"; do
  name=${cfg%%:*}; args=${cfg#*:}
  echo "== $(date +%T) tessera bench -m $M $args -p 512 -n 128 -r 3 --json" >> $OUT/log.txt
  timeout ${BENCH_TIMEOUT:-90} tessera bench -m $M $args -p 512 -n 128 -r 3 --json > $OUT/$name.json 2>> $OUT/log.txt
  echo "rc=$? $(date +%T)" >> $OUT/log.txt
done
