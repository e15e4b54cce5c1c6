#!/usr/bin/env bash
# Runs the whole test suite: installs missing system packages, builds the
# workspace binaries once (the end-to-end tests run them), then runs every
# test with cargo-nextest (or cargo test when nextest is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "test: building in $CARGO_TARGET_DIR" >&2
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
