#!/usr/bin/env bash
# Runs the whole test suite: installs missing system packages, builds the
# workspace binaries once (the end-to-end tests run them), then runs every
# test with cargo-nextest (or cargo test when nextest is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The test build has the node's fail points compiled in (docs/reliability.md);
# the build and the test run use the same features, so nothing builds twice.
features=(--features refuged/failpoints)
echo "test: building in $CARGO_TARGET_DIR" >&2
cargo build --workspace --bins --lib --locked "${features[@]}"
# The S3 backend's tests run against a real single-node Ceph with its RADOS
# Gateway (Debian's packages, installed by scripts/ceph.sh when missing),
# started once here and shared by those tests; a cluster that cannot start
# fails the run. One already answering in REFUGE_CEPH_DIR is reused and left
# running.
export REFUGE_CEPH_DIR="${REFUGE_CEPH_DIR:-$CARGO_TARGET_DIR/ceph-tests}"
if ! ./scripts/ceph.sh status "$REFUGE_CEPH_DIR" 2>/dev/null; then
    trap './scripts/ceph.sh stop "$REFUGE_CEPH_DIR"' EXIT
    ./scripts/ceph.sh start "$REFUGE_CEPH_DIR"
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "${features[@]}"
else
    cargo test --workspace --locked --no-fail-fast "${features[@]}"
fi
# A short run of every fuzz target from the corpus in the repo
# (docs/reliability.md); REFUGE_FUZZ_SECS=0 skips it.
if [ "${REFUGE_FUZZ_SECS:-10}" != 0 ]; then
    ./scripts/fuzz.sh "${REFUGE_FUZZ_SECS:-10}"
fi
