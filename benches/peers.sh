#!/usr/bin/env bash
# Side by side: restic and borg on the refuge-bench data set.
# Usage: refuge-bench --size 2GiB --runs 1 --keep --dir DIR, then
#        benches/peers.sh DIR/refuge-bench.*/run1   (needs restic, borgbackup, time from Debian)
set -euo pipefail
D="$1"; cd "$D"
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$D/restic-repo" BORG_REPO="$D/borg-repo" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
T() { /usr/bin/time -f "%e s wall, %M KiB peak RSS, %U+%S s CPU" "$@"; }
echo "== restic $(restic version | cut -d' ' -f2)"
restic init -q
echo "-- initial backup"; T restic backup -q data
echo "-- second backup (no change)"; T restic backup -q data
echo "-- restore"; T restic restore -q latest --target restic-out
du -sb restic-repo | cut -f1 | sed 's/^/repo bytes: /'
rm -rf restic-out
echo "== borg $(borg --version | cut -d' ' -f2)"
borg init -e none
echo "-- initial backup (lz4 default)"; T borg create ::one data
echo "-- second backup (no change)"; T borg create ::two data
echo "-- restore"; mkdir -p borg-out; (cd borg-out && T borg extract ::two)
du -sb borg-repo | cut -f1 | sed 's/^/repo bytes: /'
rm -rf borg-out
