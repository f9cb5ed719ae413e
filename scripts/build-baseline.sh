#!/usr/bin/env bash
# Build the `dataset` binary of another commit, for `bench-data --baseline`: a git worktree of
# REV under /var/tmp (or $BASELINE_DIR) with its own target folder, so this checkout's build is
# untouched. Prints the binary's path. Usage: scripts/build-baseline.sh REV
set -euo pipefail
REV="${1:?usage: scripts/build-baseline.sh REV}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHA="$(git -C "$ROOT" rev-parse --short "$REV")"
DIR="${BASELINE_DIR:-/var/tmp/candor-baseline}/$SHA"
if [ ! -d "$DIR" ]; then
  git -C "$ROOT" worktree add --detach "$DIR" "$SHA" >&2
fi
# seed its target folder with hard links to this checkout's compiled dependencies, so only the
# workspace crates are compiled again. Cargo writes fingerprint files in place, and the
# workspace crates' fingerprints and artifacts have the same names in both folders (cargo's
# hashes do not include the workspace path): linked, the baseline's build would rewrite this
# checkout's and make it think stale code fresh. So fingerprints are copied, and the workspace
# crates' files are left out.
if [ ! -d "$DIR/target/release" ] && [ -d "$ROOT/target/release" ]; then
  mkdir -p "$DIR/target/release"
  cp -al "$ROOT/target/release/deps" "$ROOT/target/release/build" "$DIR/target/release/"
  cp -a "$ROOT/target/release/.fingerprint" "$DIR/target/release/"
  rm -rf "$DIR"/target/release/.fingerprint/candor-* "$DIR"/target/release/build/candor-* \
    "$DIR"/target/release/deps/*candor*
fi
(cd "$DIR" && CARGO_TARGET_DIR="$DIR/target" cargo build --release --bin dataset >&2)
echo "$DIR/target/release/dataset"
