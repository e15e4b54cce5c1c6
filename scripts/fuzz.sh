#!/usr/bin/env bash
# Runs every cargo-fuzz target of tests/fuzz for SECONDS each (default 15),
# starting from the corpus kept in the repo (tests/fuzz/corpus/TARGET).
# New inputs go to a scratch directory; to keep them, pass --keep (they are
# merged into the repo's corpus, minimized). A crash fails the script and
# leaves the input in $FUZZ_ARTIFACTS (printed).
#
# cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. The fuzz build has its own target directory (its
# compiler flags differ; sharing would rebuild the main one).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
keep=0
if [ "${2:-}" = "--keep" ]; then keep=1; fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/refuge-fuzz-target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 >&2
fi
targets=(chunk_record manifest records stored wire)
for t in "${targets[@]}"; do cargo fuzz build --fuzz-dir tests/fuzz "$t" >&2; done
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export FUZZ_ARTIFACTS="${FUZZ_ARTIFACTS:-$scratch/artifacts}"
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "tests/fuzz/corpus/$t" "$FUZZ_ARTIFACTS/$t"
    echo "fuzz: $t for ${secs}s" >&2
    if ! cargo fuzz run --fuzz-dir tests/fuzz "$t" "$scratch/$t" "tests/fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$FUZZ_ARTIFACTS/$t/" 2>"$scratch/$t.log"; then
        tail -40 "$scratch/$t.log" >&2
        cp -r "$FUZZ_ARTIFACTS" "${TMPDIR:-/tmp}/refuge-fuzz-artifacts"
        echo "fuzz: $t failed; inputs in ${TMPDIR:-/tmp}/refuge-fuzz-artifacts/$t" >&2
        exit 1
    fi
    grep -E "stat::number_of_executed_units|stat::new_units_added" "$scratch/$t.log" | tr '\n' ' ' >&2 || true
    echo >&2
    if [ "$keep" = 1 ]; then
        cp -n "$scratch/$t"/* "tests/fuzz/corpus/$t/" 2>/dev/null || true
        cargo fuzz cmin --fuzz-dir tests/fuzz "$t" "tests/fuzz/corpus/$t" >/dev/null 2>&1 || true
    fi
done
echo "fuzz: no crash in ${#targets[@]} targets" >&2
