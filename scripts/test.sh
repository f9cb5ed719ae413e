#!/usr/bin/env bash
# The test command (README § Two commands; .ci/run calls it): every crate's tests on the release
# profile and default features, which is the build `cargo run --release --bin train` already made.
# When a Vulkan driver is installed it adds `--features wgpu` so that the WGPU tests run too
# (that is a second build of Burn). It ends with a summary: tests passed, failed, ignored (built
# out, with the reason cargo printed) and skipped at run time (a tool or the registry missing).
#
#   CANDOR_TEST_WGPU=0|1   the WGPU tests off / on, instead of looking for a driver
#   CANDOR_TEST_STRICT=1   fail when a test skipped for a tool that CI installs, or when the
#                          WGPU tests would be left out (.ci/run sets it)
#   arguments              go to cargo test: scripts/test.sh -- --test-threads 1
set -uo pipefail
cd "$(dirname "$0")/.."

vulkan_driver() {
  # what the tests' own check looks for (tests/support): a driver manifest and the loader
  local d lib=0
  for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
    [ -e "$d/libvulkan.so.1" ] && lib=1
  done
  [ "$lib" = 1 ] || return 1
  for d in /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d /etc/vulkan/icd.d; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  return 1
}

features=()
case "${CANDOR_TEST_WGPU:-auto}" in
  1) features=(--features wgpu) ;;
  0) ;;
  *) if vulkan_driver; then features=(--features wgpu); fi ;;
esac
if [ ${#features[@]} -eq 0 ]; then
  if [ "${CANDOR_TEST_STRICT:-0}" = 1 ]; then
    echo "test.sh: CANDOR_TEST_STRICT=1 but no Vulkan driver: the WGPU tests would not run" \
      "(apt-get install mesa-vulkan-drivers libvulkan1)" >&2
    exit 1
  fi
  if [ "${CANDOR_TEST_WGPU:-auto}" = 0 ]; then
    echo "test.sh: CANDOR_TEST_WGPU=0: the WGPU tests are built out and listed as ignored" >&2
  else
    echo "test.sh: no Vulkan driver found: the WGPU tests are built out and listed as ignored" >&2
  fi
fi

skips="$(mktemp)"
out="$(mktemp)"
trap 'rm -f "$skips" "$out"' EXIT
export CANDOR_SKIP_LOG="$skips"

echo "+ cargo test --release --workspace --no-fail-fast ${features[*]} $*" >&2
cargo test --release --workspace --no-fail-fast "${features[@]}" "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}

# cargo prints one `test result:` line per test binary; add them up
read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i
    } } END { print p + 0, f + 0, g + 0 }' "$out")
nskip=$(wc -l <"$skips")
echo
echo "== summary: $passed passed, $failed failed, $ignored ignored, $nskip skipped at run time"
if [ "$ignored" -gt 0 ]; then
  grep -E '^test .* \.\.\. ignored' "$out" | sed 's/^test /   ignored: /'
fi
if [ "$nskip" -gt 0 ]; then
  sort "$skips" | awk -F'\t' '{ printf "   skipped (%s): %s: %s\n", $1, $2, $3 }'
fi
if [ "${CANDOR_TEST_STRICT:-0}" = 1 ] && grep -q $'^tool\t' "$skips"; then
  echo "test.sh: CANDOR_TEST_STRICT=1 and a test skipped for a missing tool (above)" >&2
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
