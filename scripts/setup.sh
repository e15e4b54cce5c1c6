#!/usr/bin/env bash
# Shared setup for scripts/demo.sh and scripts/test.sh (sourced, not run):
# installs the system packages the build needs when they are missing, and
# points cargo at one target directory outside the clone so that CI, tests
# and the demo share a single build of RocksDB.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refuge-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need=()
# bindgen (for RocksDB) needs clang and libclang; the C++ build needs g++.
command -v clang >/dev/null 2>&1 || need+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
# The tests run the node under libfaketime to move its clock (retention
# over days, clock trouble).
dpkg -s libfaketime >/dev/null 2>&1 || need+=(libfaketime)
# The tests check the systemd unit files with systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The postgres source's tests run servers of their own (initdb, pg_ctl,
# pgbench, pg_amcheck, pg_basebackup from Debian's PostgreSQL).
compgen -G "/usr/lib/postgresql/*/bin/pg_amcheck" >/dev/null || need+=(postgresql postgresql-contrib)
# mariadb sources: the server, its client and mariadb-backup.
command -v mariadb-backup >/dev/null 2>&1 || need+=(mariadb-server mariadb-backup)
# Sources read from a btrfs snapshot (the tests make a btrfs filesystem on a
# loop device).
command -v mkfs.btrfs >/dev/null 2>&1 || need+=(btrfs-progs)
# The console's tests drive a real headless Chromium, signed in with client
# certificates put into its NSS database (certutil, pk12util).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pk12util >/dev/null 2>&1 || need+=(libnss3-tools)
if ((${#need[@]})); then
    echo "setup: installing ${need[*]} with apt-get" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A headless Chromium cannot ask which client certificate to send: this
# managed policy makes it send the one it has to https://127.0.0.1 (the
# console's tests; tests/src/browser.rs). Loopback only.
policy=/etc/chromium/policies/managed/refuge-tests.json
if ! grep -q AutoSelectCertificateForUrls "$policy" 2>/dev/null; then
    echo "setup: writing the Chromium policy $policy" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO mkdir -p "$(dirname "$policy")"
    echo '{"AutoSelectCertificateForUrls": ["{\"pattern\":\"https://127.0.0.1:*\",\"filter\":{}}"]}' \
        | $SUDO tee "$policy" >/dev/null
fi

# The health tests probe the node with a gRPC health client refuge did not
# write (Python's grpcio-health-checking), and parse its metrics with
# the Prometheus project's own parser (prometheus-client).
if ! python3 -c "import grpc_health.v1, prometheus_client.openmetrics.parser" >/dev/null 2>&1; then
    echo "setup: installing grpcio and grpcio-health-checking with pip" >&2
    python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-health-checking prometheus-client >&2 \
        || { echo "setup: pip install grpcio-health-checking failed" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
