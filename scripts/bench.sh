#!/usr/bin/env bash
# refuge benchmarks (results and how to read them: BENCHMARKS.md).
#
#   scripts/bench.sh [--size 2GiB] [--runs 3] [--seed N] [--out BENCHMARKS.md] [--label NAME] [--dir DIR] [--keep]
#       End to end: builds the workspace binaries, then runs refuge-bench:
#       a seeded data set (disk image, database, file tree), a real refuged
#       with mTLS on 127.0.0.1, initial backup, ~5% mutation, incremental
#       backup, verified restore of every source; --runs N repeats all of it
#       and reports medians. About 2.7x --size of free disk per run in DIR
#       (default: the system temp dir). --out adds or replaces this size's
#       block in the section NAME (default "Latest run"). Exits 1 if a
#       restore differs from its source (after writing the report).
#
#   scripts/bench.sh micro [--out BENCHMARKS.md] [--label NAME]
#       Criterion micro-benchmarks (FastCDC, BLAKE3, zstd, RocksDB store;
#       a few minutes), then their table in MB/s.
#
# Everything is built with the workspace `dev` profile, never `--release`
# or the `bench` profile: those would rebuild RocksDB (15-20 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

mode=e2e
if [ "${1:-}" = micro ]; then
    mode=micro
    shift
fi

if [ "$(git worktree list 2>/dev/null | wc -l)" -gt 1 ]; then
    echo "bench: warning: this repository has several worktrees. If they share" >&2
    echo "bench: CARGO_TARGET_DIR ($CARGO_TARGET_DIR), cargo can reuse another worktree's" >&2
    echo "bench: build of a workspace crate and benchmark the wrong code; see BENCHMARKS.md." >&2
fi

echo "bench: building in $CARGO_TARGET_DIR (dev profile)" >&2
cargo build --workspace --bins --locked
BIN="$CARGO_TARGET_DIR/debug"

case $mode in
e2e)
    exec "$BIN/refuge-bench" "$@"
    ;;
micro)
    cargo bench --locked -p refuge-bench --bench micro --profile dev
    exec "$BIN/refuge-bench" micro-report --criterion-dir "$CARGO_TARGET_DIR/criterion" "$@"
    ;;
esac
