#!/usr/bin/env bash
# Decode attention time of each decode variant (AttentionTuning::decode_variant, decode_lut,
# decode_groups_per_cu; work-group size) by KV format and context on one device: one
# attention_bench run per variant, JSON per run in OUTDIR, a summary table (median us) printed at
# the end.
#   bench/attention/decode_variants.sh DEVICE OUTDIR [extra attention_bench options...]
# Uses `attention_bench` from PATH, else build/bin/attention_bench.
set -euo pipefail
dev=${1:?usage: decode_variants.sh DEVICE OUTDIR [attention_bench options]}
out=${2:?usage: decode_variants.sh DEVICE OUTDIR [attention_bench options]}
shift 2
bench=$(command -v attention_bench || echo build/bin/attention_bench)
mkdir -p "$out"
# name|options
variants=(
  "default|"
  "v1|--decode-variant 1"
  "v1lut|--decode-variant 1 --decode-lut 1"
  "v0lut|--decode-variant 0 --decode-lut 1"
)
case "$dev" in
  cpu*) variants+=("v1x8|--decode-variant 1 --decode-groups-per-cu 8"
                   "v1x2|--decode-variant 1 --decode-groups-per-cu 2") ;;
  *) variants+=("v0x16|--decode-variant 0 --decode-groups-per-cu 16"
                "v1lutx8|--decode-variant 1 --decode-lut 1 --decode-groups-per-cu 8"
                "v1lutx16|--decode-variant 1 --decode-lut 1 --decode-groups-per-cu 16"
                "v1lutx8wg256|--decode-variant 1 --decode-lut 1 --decode-groups-per-cu 8 --decode-items 256"
                "v1lutx8wg64|--decode-variant 1 --decode-lut 1 --decode-groups-per-cu 8 --decode-items 64") ;;
esac
for v in "${variants[@]}"; do
  name=${v%%|*}
  opts=${v#*|}
  echo "== $name: $opts" >&2
  # shellcheck disable=SC2086
  "$bench" --devices "$dev" --no-prefill --formats f16,q8_0,turbo3,turbo4 \
    --contexts 4096,16384,65536 --head-dims 128 --reps 11 $opts "$@" --json-out "$out/$name.json"
done
python3 - "$out" "${variants[@]%%|*}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = {}
for n in names:
    for r in json.load(open(f"{out}/{n}.json")):
        key = (r["head_dim"], r["seqs"], r["ctx"], r["k_format"])
        rows.setdefault(key, {})[n] = r["median_us"]
print("head seqs   ctx format  " + " ".join(f"{n:>12}" for n in names))
for key in sorted(rows):
    print(f"{key[0]:4} {key[1]:4} {key[2]:5} {key[3]:7} " +
          " ".join(f"{rows[key].get(n, float('nan')):12.1f}" for n in names))
PY
