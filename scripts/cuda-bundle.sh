#!/usr/bin/env bash
# Pack candor's CUDA build for an NVIDIA machine that has no Rust toolchain (or no network):
# `train`, `bench-train` and the `backends` test binary, stripped and gzipped, into .gpu/
# (git-ignored), with SmolLM2's config.json for `bench-train --random-init` where
# checkpoints/smollm2-135m-instruct exists. On the GPU machine, from a copy of the repo with
# .gpu/ beside it: scripts/gpu-check.sh.
#
# No CUDA toolkit is needed here: cudarc loads libcuda and libnvrtc at run time. It binds the
# API of the CUDA version in CUDARC_CUDA_VERSION (default 13000 = 13.0; set it to the target
# driver's version as `nvidia-smi` prints it, e.g. 12080 for 12.8).
# The build shares target/ with the other builds: it re-links target/release/train and friends
# as CUDA binaries (the next `scripts/test.sh` re-links them back).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
mkdir -p "$out"
echo "building with --features cuda, CUDA API $CUDARC_CUDA_VERSION …" >&2
cargo build --release --workspace --features cuda --bin train --bin bench-train --test backends \
  --message-format=json-render-diagnostics >"$out/build.json"
# the executables cargo made (the test binary's name carries a hash)
python3 - "$out/build.json" >"$out/executables" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
EOF
rm "$out/build.json"
while read -r name path; do
  strip -o "$out/$name" "$path"
  gzip -9 -f "$out/$name"
done <"$out/executables"
rm "$out/executables"
if [ -f checkpoints/smollm2-135m-instruct/config.json ]; then
  mkdir -p "$out/smollm2-135m"
  cp checkpoints/smollm2-135m-instruct/config.json "$out/smollm2-135m/"
fi
ls -l "$out" "$out"/* >&2
du -sh "$out" >&2
