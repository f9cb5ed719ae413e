#!/usr/bin/env bash
# candor's CUDA checks, on an NVIDIA machine, from the binaries scripts/cuda-bundle.sh packed
# into .gpu/ (no Rust toolchain needed there). Run from the repo root:
#   scripts/gpu-check.sh tests              # tiny model on cuda vs cpu: f32 logits, bf16 error
#   scripts/gpu-check.sh quickstart bf16    # recipes/quickstart.toml on cuda (f32 or bf16)
#   scripts/gpu-check.sh bench bf16         # bench-train, SmolLM2-135M shapes (random init)
#                                           # beside PyTorch on the same GPU (f32 or bf16);
#                                           # further arguments go to bench-train (--only …),
#                                           # CANDOR_BENCH_ROUNDS=N rounds (default 3)
# With $OUT set, each step's log (and the quickstart's report.md) is also written there.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${CANDOR_BUNDLE:-.gpu}
what=${1:-tests}
dtype=${2:-bf16}
out=${OUT:-/tmp/candor-gpu-out}
bin=/tmp/candor-gpu-bin
mkdir -p "$bin" "$out"
for f in "$bundle"/*.gz; do
  [ -e "$f" ] || { echo "no binaries in $bundle/: run scripts/cuda-bundle.sh first" >&2; exit 2; }
  b="$bin/$(basename "$f" .gz)"
  gunzip -c "$f" >"$b" && chmod +x "$b"
done

# cudarc loads libnvrtc at run time, and cubecl compiles its kernels with the toolkit's headers:
# point both at a toolkit (or PyTorch's NVRTC wheel) when they are not where they look
if ! ldconfig -p | grep -q 'libnvrtc\.so'; then
  lib=$(find / -xdev -name 'libnvrtc.so*' 2>/dev/null | head -n1)
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ ! -d /usr/local/cuda ] && [ -z "${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
  export CUDA_PATH="$(dirname "$(dirname "$(command -v nvcc)")")"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

run() { # name, command…: run it, log it, say how long it took
  local name=$1
  shift
  local t0=$SECONDS
  "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$out/$name.log"
  return "$rc"
}

case $what in
tests)
  CANDOR_TEST_CUDA=1 run backends "$bin/backends" --nocapture --test-threads 1
  ;;
quickstart)
  recipe=/tmp/quickstart-cuda-$dtype.toml
  { echo "run_dir = \"/tmp/runs/quickstart-cuda-$dtype\""
    sed "s/^device = \"cpu\"/device = \"cuda\"\ndtype = \"$dtype\"/" recipes/quickstart.toml; } >"$recipe"
  grep -q "^dtype = \"$dtype\"" "$recipe" || { echo "could not set the device in $recipe" >&2; exit 2; }
  run "quickstart-$dtype" "$bin/train" "$recipe"
  rc=$?
  cp "/tmp/runs/quickstart-cuda-$dtype/report/report.md" "$out/report-$dtype.md" 2>/dev/null
  exit $rc
  ;;
bench)
  [ -f "$bundle/smollm2-135m/config.json" ] || { echo "no $bundle/smollm2-135m/config.json" >&2; exit 2; }
  run "bench-$dtype" "$bin/bench-train" --model "$bundle/smollm2-135m" --random-init \
    --device cuda --dtype "$dtype" --python python3 --steps 10 --rounds "${CANDOR_BENCH_ROUNDS:-3}" "${@:3}"
  ;;
*)
  echo "usage: scripts/gpu-check.sh tests | quickstart [f32|bf16] | bench [f32|bf16]" >&2
  exit 2
  ;;
esac
