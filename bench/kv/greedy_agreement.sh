#!/usr/bin/env bash
# Greedy agreement of KV cache formats with the f16 cache: for each prompt, `tessera run` generates
# N tokens greedily (temperature 0, --ignore-eos) with an f16 cache and with each case's cache;
# a case's agreement is the share of the N positions whose token equals the f16 run's, its first
# divergence the first position where they differ (N when none), both over all prompts. Figures
# only, never pass/fail.
#
#   bench/kv/greedy_agreement.sh MODEL.gguf PROMPTS.txt [CASE ...]
#
# PROMPTS.txt: one prompt per line (empty lines skipped). CASE: "LABEL|ARGS", ARGS the cache flags
# of `tessera run`, e.g. "turbo3|-ctk turbo3 -ctv turbo3 --set kv_cache.layers.all=turbo3"; no
# CASE: every format on all layers, the default turbo3 (first/last layers q8_0) and the pairs
# q8_0 K + turbo3 V, turbo4 K + turbo3 V. A case whose cache the model cannot hold (a head size
# its blocks do not divide) is reported as such and skipped.
#
# Environment (defaults in brackets):
#   TESSERA       tessera binary [build/bin/tessera]
#   N             tokens generated per prompt [256]
#   TESSERA_ARGS  extra `tessera run` flags for every run, e.g. "--device cpu0" [""]
#   JSON          a file to also write the results to as JSON [none]
# Prints a Markdown table: case, KV bytes per token (all layers, K and V; from the run's summary),
# ratio to f16, agreement, mean first divergence, prompts whose N tokens all equal f16's.
set -u
if [ $# -lt 2 ]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
MODEL=$1
PROMPTS=$2
shift 2
TESSERA=${TESSERA:-build/bin/tessera}
N=${N:-256}
for f in "$MODEL" "$PROMPTS"; do
  [ -r "$f" ] || { echo "greedy_agreement: cannot read '$f'" >&2; exit 2; }
done
[ -x "$TESSERA" ] || { echo "greedy_agreement: no tessera binary at '$TESSERA' (set TESSERA)" >&2; exit 2; }
case $N in '' | *[!0-9]* | 0) echo "greedy_agreement: N must be a positive integer" >&2; exit 2 ;; esac

if [ $# -eq 0 ]; then
  set -- "q8_0|-ctk q8_0 -ctv q8_0" "q4_0|-ctk q4_0 -ctv q4_0"
  for f in turbo4 turbo3.5 turbo3 turbo2.5 turbo2; do
    set -- "$@" "$f|-ctk $f -ctv $f --set kv_cache.layers.all=$f"
  done
  set -- "$@" "q8_0 K + turbo3 V|-ctk q8_0 -ctv turbo3 --set kv_cache.layers.all.v_format=turbo3" \
    "turbo4 K + turbo3 V|-ctk turbo4 -ctv turbo3 --set kv_cache.layers.all.k_format=turbo4 --set kv_cache.layers.all.v_format=turbo3" \
    "turbo3, default (first and last layers q8_0, f16 where q8_0 cannot hold the head)|-ctk turbo3 -ctv turbo3"
fi

mapfile -t prompt_list < <(grep -v '^[[:space:]]*$' "$PROMPTS")
[ ${#prompt_list[@]} -gt 0 ] || { echo "greedy_agreement: '$PROMPTS' has no prompts" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# run CASE_INDEX ARGS: the ids of every prompt to $WORK/CASE_INDEX.P, the summary's bytes per token
# to $WORK/CASE_INDEX.bytes ("BYTES F16_BYTES"). Returns non-zero (and keeps the error in
# $WORK/CASE_INDEX.err) when a run fails.
run_case() {
  local i=$1 args=$2 p
  for p in "${!prompt_list[@]}"; do
    # shellcheck disable=SC2086  # ARGS and TESSERA_ARGS are word lists on purpose
    if ! "$TESSERA" run -m "$MODEL" -p "${prompt_list[$p]}" -n "$N" --ids --ignore-eos \
      ${TESSERA_ARGS:-} $args > "$WORK/$i.$p" 2> "$WORK/$i.err"; then
      return 1
    fi
    sed -n 's/.*; \([0-9]*\) bytes per token, f16 \([0-9]*\) .*/\1 \2/p' "$WORK/$i.err" > "$WORK/$i.bytes"
  done
}

if ! run_case base "-ctk f16 -ctv f16"; then
  echo "greedy_agreement: the f16 run failed:" >&2
  tail -3 "$WORK/base.err" >&2
  exit 1
fi
echo "model: $MODEL; ${#prompt_list[@]} prompts from $PROMPTS, $N greedy tokens each; base: f16 K and V"
echo
echo "| K / V | bytes/token | vs f16 | agreement | mean first divergence | identical runs |"
echo "|---|---|---|---|---|---|"
read -r base_bytes _ < "$WORK/base.bytes"
echo "| f16 | $base_bytes | 1x | - | - | - |"
entries=()
i=0
for c in "$@"; do
  label=${c%%|*}
  args=${c#*|}
  i=$((i + 1))
  if ! run_case "$i" "$args"; then
    why=$(grep -m1 -i 'cannot store\|error' "$WORK/$i.err" || tail -1 "$WORK/$i.err")
    echo "| $label | not run: ${why//|/\\|} | | | | |"
    continue
  fi
  read -r bytes f16_bytes < "$WORK/$i.bytes"
  # Per prompt: matching positions and the first divergence, summed by awk.
  stats=$(for p in "${!prompt_list[@]}"; do
    paste -d' ' <(tr ' ' '\n' < "$WORK/base.$p" | grep -v '^$') \
      <(tr ' ' '\n' < "$WORK/$i.$p" | grep -v '^$')
    echo "END"
  done | awk -v n="$N" '
    $0 == "END" { first_sum += (first ? first - 1 : n); identical += !first; first = 0; k = 0; prompts++; next }
    { k++; if ($1 == $2) match_n++; else if (!first) first = k }
    END { printf "%d %d %.4f %d", match_n, prompts * n, first_sum / prompts, identical }')
  read -r matched total first identical <<< "$stats"
  agree=$(awk -v m="$matched" -v t="$total" 'BEGIN { printf "%.2f", 100 * m / t }')
  ratio=$(awk -v a="$f16_bytes" -v b="$bytes" 'BEGIN { printf "%.2f", a / b }')
  echo "| $label | $bytes | ${ratio}x | $agree% ($matched / $total) | $first | $identical / ${#prompt_list[@]} |"
  entries+=("{\"case\": \"$label\", \"args\": \"$args\", \"bytes_per_token\": $bytes, \"f16_bytes_per_token\": $f16_bytes, \"matched\": $matched, \"positions\": $total, \"mean_first_divergence\": $first, \"identical_runs\": $identical}")
done
if [ -n "${JSON:-}" ]; then
  { printf '{"model": "%s", "prompts": %d, "tokens": %d, "f16_bytes_per_token": %s, "cases": [' \
      "$MODEL" "${#prompt_list[@]}" "$N" "$base_bytes"
    sep=""
    for e in "${entries[@]}"; do printf '%s%s' "$sep" "$e"; sep=", "; done
    printf ']}\n'; } > "$JSON"
fi
