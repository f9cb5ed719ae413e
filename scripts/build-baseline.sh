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
# workspace crates are compiled again (cargo replaces files rather than writing into them)
if [ ! -d "$DIR/target/release" ] && [ -d "$ROOT/target/release" ]; then
  mkdir -p "$DIR/target"
  cp -al "$ROOT/target/release" "$DIR/target/release"
fi
(cd "$DIR" && CARGO_TARGET_DIR="$DIR/target" cargo build --release --bin dataset >&2)
echo "$DIR/target/release/dataset"
