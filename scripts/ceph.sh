#!/usr/bin/env bash
# Runs a throw-away single-node Ceph cluster with its RADOS Gateway (S3) for
# the S3 backend's tests, from Debian 12's own Ceph packages (16.2, Pacific):
#
#   scripts/ceph.sh start DIR          install what is missing, create a fresh
#                                      cluster in DIR, wait until S3 answers
#   scripts/ceph.sh stop DIR           kill every daemon of it, remove DIR
#   scripts/ceph.sh stop-gateway DIR   stop only radosgw (cut the gateway)
#   scripts/ceph.sh start-gateway DIR  start radosgw again, wait until it answers
#   scripts/ceph.sh start-gateway DIR PORT   start a further radosgw of the
#                                      cluster on 127.0.0.1:PORT (same users and
#                                      buckets), wait until it answers
#   scripts/ceph.sh stop-gateway DIR PORT    stop that one only
#   scripts/ceph.sh status DIR         exit 0 if the gateway answers S3 requests
#
# The cluster is one monitor, one OSD and one radosgw, and nothing else: the
# gateway and its pools need no mgr (placement groups are created by the
# monitor), so none runs. The OSD is bluestore on a sparse file in DIR (no LVM,
# no ceph-volume), pools have a single replica. Every file of the cluster lives
# under DIR: ceph.conf, keyring, the monitor's store, the OSD, run/ (admin
# sockets and pid files), log/ (one log per daemon plus log/*.out for what a
# daemon printed before it detached). Nothing is written to /etc/ceph or
# /var/lib/ceph, so clusters in different DIRs do not collide as long as their
# ports differ. The daemons run as root (whoever runs the script) and detach
# (they are not children of the caller, and hold none of its pipes).
#
# When the gateway answers, start writes
#   DIR/s3.env       shell-sourceable: REFUGE_S3_ENDPOINT, REFUGE_S3_ACCESS_KEY,
#                    REFUGE_S3_SECRET_KEY, REFUGE_S3_REGION, REFUGE_S3_BUCKET
#   DIR/credentials  the same four values as a TOML file:
#                    endpoint, region, access_key, secret_key
# Path-style URLs (http://127.0.0.1:PORT/bucket/key) and SigV4 work.
#
# start on a DIR whose gateway already answers does nothing and exits 0; on a
# DIR whose monitor and OSD still run it only restarts the gateway; otherwise
# it wipes DIR (only if an earlier start made it, or it is empty) and begins
# again.
#
# Environment (all optional):
#   REFUGE_CEPH_MON_PORT   monitor port, msgr2 only         (default 16789)
#   REFUGE_CEPH_RGW_PORT   gateway port on 127.0.0.1        (default 17480)
#   REFUGE_CEPH_OSD_SIZE   size of the sparse OSD file, bytes (default 10 GiB)
#   REFUGE_CEPH_TIMEOUT    seconds to wait for each step    (default 120)
#   REFUGE_CEPH_BUCKET     bucket a new cluster gets        (default refuge)
#   REFUGE_S3_ACCESS_KEY / REFUGE_S3_SECRET_KEY  keys of the S3 user for a new
#                          cluster (default: generated)
# The OSD's file needs a file system with O_DIRECT (ext4, xfs, btrfs; not
# tmpfs); the OSD uses at most REFUGE_CEPH_OSD_SIZE of it, as written.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|status DIR" >&2
    echo "       $0 stop-gateway|start-gateway DIR [PORT]" >&2
    exit 2
}
[ $# -eq 2 ] || { [ $# -eq 3 ] && [[ "$1" == *-gateway ]]; } || usage
cmd=$1
PORT=${3:-}
[ -n "$2" ] || usage
# Absolute, normalised; DIR need not exist yet.
DIR=$(realpath -m -- "$2")
[ "$DIR" != / ] || { echo "ceph.sh: refusing to use / as the cluster directory" >&2; exit 2; }

CONF=$DIR/ceph.conf
MARKER=$DIR/.refuge-ceph
RGW_NAME=client.rgw.gw
TIMEOUT=${REFUGE_CEPH_TIMEOUT:-120}
BUCKET=${REFUGE_CEPH_BUCKET:-refuge}
# RGW takes whatever region the SigV4 scope names, but a CreateBucket with a
# LocationConstraint must name its zonegroup, "default" (us-east-1 fails).
REGION=default
PACKAGES=(ceph-mon ceph-osd radosgw ceph-common)

log() { echo "ceph.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- packages -------------------------------------------------------------

ensure_packages() {
    local need=() p
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    command -v curl >/dev/null 2>&1 || need+=(curl)
    ((${#need[@]})) || return 0
    log "installing ${need[*]} with apt-get"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    # Without the recommends (ceph-mgr, ceph-mds, ...): half the packages.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
}

# --- processes ------------------------------------------------------------

# True if process $1 runs with this cluster's ceph.conf on its command line.
is_ours() {
    local pid=$1 arg
    [ -r "/proc/$pid/cmdline" ] || return 1
    while IFS= read -r -d '' arg; do
        [ "$arg" = "$CONF" ] && return 0
    done 2>/dev/null <"/proc/$pid/cmdline"
    return 1
}

# The pid of daemon $1 (mon.a, osd.0, client.rgw.gw) if it is running.
daemon_pid() {
    local f=$DIR/run/$1.pid pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    is_ours "$pid" || return 1
    echo "$pid"
}

# Every process (daemons, a hung ceph or radosgw-admin) using this ceph.conf.
all_pids() {
    local p pid
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" != $$ ] || continue
        is_ours "$pid" && echo "$pid"
    done
    return 0
}

# Sends signal $1 to pids $3..., waits up to $2 seconds for them to exit.
signal_and_wait() {
    local sig=$1 secs=$2 pid deadline alive
    shift 2
    for pid in "$@"; do kill "-$sig" "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + secs))
    while :; do
        alive=()
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
                alive+=("$pid")
            fi
        done
        ((${#alive[@]})) || return 0
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Stops daemon $1: SIGTERM, then SIGKILL after 10 s.
stop_daemon() {
    local pid
    pid=$(daemon_pid "$1") || return 0
    signal_and_wait TERM 10 "$pid" || signal_and_wait KILL 10 "$pid" \
        || die "$1 (pid $pid) does not exit"
    rm -f "$DIR/run/$1.pid"
}

# Kills everything of the cluster at once: its data is about to be removed.
kill_all() {
    local pids
    mapfile -t pids < <(all_pids)
    ((${#pids[@]})) || return 0
    signal_and_wait KILL 20 "${pids[@]}" || die "processes ${pids[*]} do not exit"
    # They are dead; give init a moment to reap them so that ps no longer
    # lists them (as <defunct>).
    local pid deadline=$((SECONDS + 5))
    for pid in "${pids[@]}"; do
        while [ -e "/proc/$pid" ] && ((SECONDS < deadline)); do sleep 0.1; done
    done
}

# --- S3 -------------------------------------------------------------------

# True if an authenticated S3 request (ListBuckets) to the gateway at $1
# (default: the cluster's own) succeeds.
s3_ok() {
    [ -f "$DIR/s3.env" ] || return 1
    local REFUGE_S3_ENDPOINT REFUGE_S3_ACCESS_KEY REFUGE_S3_SECRET_KEY REFUGE_S3_REGION code
    # shellcheck disable=SC1091
    . "$DIR/s3.env"
    REFUGE_S3_ENDPOINT=${1:-$REFUGE_S3_ENDPOINT}
    # curl 7.88 signs the hash of an empty body but sends no
    # x-amz-content-sha256, which RGW then takes as UNSIGNED-PAYLOAD: say it.
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        --aws-sigv4 "aws:amz:$REFUGE_S3_REGION:s3" \
        --user "$REFUGE_S3_ACCESS_KEY:$REFUGE_S3_SECRET_KEY" \
        "$REFUGE_S3_ENDPOINT/" 2>/dev/null) || true
    [ "$code" = 200 ]
}

# Creates the bucket the tests share ($BUCKET); each test uses its own
# prefix in it.
make_bucket() {
    local REFUGE_S3_ENDPOINT REFUGE_S3_ACCESS_KEY REFUGE_S3_SECRET_KEY REFUGE_S3_REGION REFUGE_S3_BUCKET code
    # shellcheck disable=SC1091
    . "$DIR/s3.env"
    code=$(curl -s -o "$DIR/log/make-bucket.out" -w '%{http_code}' --max-time 30 -X PUT \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        --aws-sigv4 "aws:amz:$REFUGE_S3_REGION:s3" \
        --user "$REFUGE_S3_ACCESS_KEY:$REFUGE_S3_SECRET_KEY" \
        "$REFUGE_S3_ENDPOINT/$BUCKET" 2>/dev/null) || true
    [ "$code" = 200 ] || die "cannot create bucket $BUCKET (HTTP $code); see $DIR/log/make-bucket.out"
}

# True if something listens on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits until gateway $1 (default: the cluster's own) answers at $2.
wait_gateway() {
    local name=${1:-$RGW_NAME} url=${2:-} deadline=$((SECONDS + TIMEOUT))
    until s3_ok "$url"; do
        daemon_pid "$name" >/dev/null \
            || die "radosgw exited; see $DIR/log/$name.log and $DIR/log/$name.out"
        ((SECONDS < deadline)) \
            || die "radosgw does not answer S3 requests after ${TIMEOUT}s; see $DIR/log/$name.log"
        sleep 0.3
    done
}

# A further gateway of the cluster on 127.0.0.1:$1, named rgw-$1 (its own
# pid file and log, no admin socket), for a test to stop and start without
# disturbing the gateway the other tests use.
start_extra_gateway() {
    local port=$1 name=rgw-$1
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$port'"
    if ! daemon_pid "$name" >/dev/null; then
        ! port_busy "$port" || die "port $port is taken"
        radosgw -c "$CONF" -n "$RGW_NAME" --rgw-frontends "beast endpoint=127.0.0.1:$port tcp_nodelay=1" \
            --pid-file "$DIR/run/$name.pid" --log-file "$DIR/log/$name.log" --admin-socket "" \
            </dev/null >>"$DIR/log/$name.out" 2>&1 \
            || die "radosgw failed to start; see $DIR/log/$name.log and $DIR/log/$name.out"
    fi
    wait_gateway "$name" "http://127.0.0.1:$port"
}

start_gateway() {
    if s3_ok; then return 0; fi
    if ! daemon_pid "$RGW_NAME" >/dev/null; then
        local port
        port=$(sed -n 's/^rgw_frontends = beast endpoint=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$CONF")
        ! port_busy "$port" || die "port $port is taken by another process; cannot start radosgw"
        radosgw -c "$CONF" -n "$RGW_NAME" </dev/null >>"$DIR/log/$RGW_NAME.out" 2>&1 \
            || die "radosgw failed to start; see $DIR/log/$RGW_NAME.log and $DIR/log/$RGW_NAME.out"
    fi
    wait_gateway
}

# --- a new cluster --------------------------------------------------------

ceph_cli() {
    timeout 60 ceph -c "$CONF" --connect-timeout 30 "$@"
}

random_key() { # $1 characters from [A-Z0-9] (access key) or [A-Za-z0-9] (secret)
    local chars=$2 s
    s=$(head -c 8192 /dev/urandom | LC_ALL=C tr -dc "$chars")
    echo "${s:0:$1}"
}

write_conf() {
    # shellcheck disable=SC2016 # $run_dir and $name are Ceph's own variables
    local fsid=$1 mon_port=$2 rgw_port=$3 osd_size=$4 asok='$run_dir/$name.asok'
    # A unix socket path has at most 107 bytes: without room, no admin sockets.
    if [ $((${#DIR} + 30)) -gt 107 ]; then
        log "note: $DIR is too long for admin sockets; they are disabled"
        asok=""
    fi
    cat >"$CONF" <<EOF
# Made by scripts/ceph.sh for a throw-away test cluster; all of it is in $DIR.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$mon_port]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false

keyring = $DIR/keyring
run_dir = $DIR/run
admin_socket = $asok
pid_file = \$run_dir/\$name.pid
log_file = $DIR/log/\$name.log
mon_cluster_log_file = $DIR/log/cluster.log
crash_dir = $DIR/crash
mon_data = $DIR/\$name
osd_data = $DIR/\$name
rgw_data = $DIR/\$name
mgr_data = $DIR/\$name
mds_data = $DIR/\$name
osd_journal = $DIR/\$name/journal
mon_debug_dump_location = $DIR/log/\$name.tdump
rgw_luarocks_location = $DIR/luarocks
log_max_recent = 1000

# One OSD: pools with a single replica, few placement groups, no autoscaler.
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# A single monitor need not batch its changes for a second: pools and their
# placement groups come up several seconds sooner.
paxos_propose_interval = 0.05

[osd]
keyring = $DIR/\$name/keyring
osd_objectstore = bluestore
bluestore_block_path = $DIR/\$name/block.file
bluestore_block_create = true
bluestore_block_size = $osd_size
bluestore_block_db_create = false
bluestore_block_wal_create = false
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
bluestore_fsck_on_umount = false
osd_memory_target = 536870912
osd_memory_base = 268435456
osd_memory_cache_min = 67108864
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[client]
# The ceph and radosgw-admin commands: no admin socket (they would share one).
admin_socket =

[$RGW_NAME]
admin_socket = $asok
# tcp_nodelay: without it every small response on a kept-alive connection
# waits ~40 ms for the client's delayed ACK (Nagle), a reader of one chunk
# at a time gets 20 reads a second.
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw_thread_pool_size = 64
rgw_dynamic_resharding = false
rgw_enable_usage_log = false
EOF
}

wait_osd_up() {
    local deadline=$((SECONDS + TIMEOUT))
    until ceph_cli osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; do
        daemon_pid osd.0 >/dev/null || die "the OSD exited; see $DIR/log/osd.0.log and $DIR/log/osd.0.out"
        ((SECONDS < deadline)) || die "the OSD is not up after ${TIMEOUT}s; see $DIR/log/osd.0.log"
        sleep 0.3
    done
}

new_cluster() {
    local t0=$SECONDS
    local mon_port=${REFUGE_CEPH_MON_PORT:-16789}
    local rgw_port=${REFUGE_CEPH_RGW_PORT:-17480}
    local osd_size=${REFUGE_CEPH_OSD_SIZE:-$((10 * 1024 * 1024 * 1024))}
    local access=${REFUGE_S3_ACCESS_KEY:-} secret=${REFUGE_S3_SECRET_KEY:-}
    [ -n "$access" ] || access=$(random_key 20 'A-Z0-9')
    [ -n "$secret" ] || secret=$(random_key 40 'A-Za-z0-9')
    ! port_busy "$mon_port" || die "port $mon_port is taken (set REFUGE_CEPH_MON_PORT)"
    ! port_busy "$rgw_port" || die "port $rgw_port is taken (set REFUGE_CEPH_RGW_PORT)"

    mkdir -p "$DIR"
    : >"$MARKER"
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash" "$DIR/mon.a" "$DIR/osd.0" "$DIR/$RGW_NAME"
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid" "$mon_port" "$rgw_port" "$osd_size"
    log "creating a cluster in $DIR (monitor on 127.0.0.1:$mon_port)"

    # Keys: the monitor's, the admin's (ceph, radosgw-admin) and the gateway's.
    local kr=$DIR/keyring
    ceph-authtool --create-keyring "$kr" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$kr" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$kr" --gen-key -n "$RGW_NAME" --cap mon 'allow rw' --cap osd 'allow rwx' \
        --cap mgr 'allow rw' >/dev/null

    # The OSD's store is made (bluestore creates its file) while the monitor
    # starts: the store needs only the cluster's fsid and the monmap.
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
    local uuid osd_key id mkfs_pid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    osd_key=$(ceph-authtool --gen-print-key)
    ceph-authtool --create-keyring "$DIR/osd.0/keyring" -n osd.0 --add-key "$osd_key" >/dev/null
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" --monmap "$DIR/monmap" --no-mon-config \
        </dev/null >>"$DIR/log/osd.0.out" 2>&1 &
    mkfs_pid=$!

    # The monitor.
    ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring "$kr" \
        </dev/null >>"$DIR/log/mon.a.out" 2>&1 \
        || die "ceph-mon --mkfs failed; see $DIR/log/mon.a.out"
    ceph-mon -c "$CONF" -i a </dev/null >>"$DIR/log/mon.a.out" 2>&1 \
        || die "the monitor failed to start; see $DIR/log/mon.a.log and $DIR/log/mon.a.out"

    # The OSD is registered with its key, then started.
    id=$(echo "{\"cephx_secret\": \"$osd_key\"}" | ceph_cli osd new "$uuid" -i - 2>>"$DIR/log/osd.0.out") \
        || die "ceph osd new failed (is the monitor up?); see $DIR/log/mon.a.log and $DIR/log/osd.0.out"
    [ "$id" = 0 ] || die "the new OSD got id '$id', not 0"
    wait "$mkfs_pid" || die "ceph-osd --mkfs failed; see $DIR/log/osd.0.log and $DIR/log/osd.0.out"
    ceph-osd -c "$CONF" -i 0 </dev/null >>"$DIR/log/osd.0.out" 2>&1 \
        || die "the OSD failed to start; see $DIR/log/osd.0.log and $DIR/log/osd.0.out"

    # The S3 user. radosgw-admin makes the default realm/zone and their pools,
    # which waits for the OSD to be up and the pools' placement groups active.
    wait_osd_up
    timeout "$TIMEOUT" radosgw-admin -c "$CONF" user create --uid=refuge --display-name=refuge \
        --access-key="$access" --secret-key="$secret" </dev/null >/dev/null 2>>"$DIR/log/radosgw-admin.out" \
        || die "radosgw-admin user create failed; see $DIR/log/radosgw-admin.out and $DIR/log/osd.0.log"

    cat >"$DIR/s3.env.tmp" <<EOF
REFUGE_S3_ENDPOINT=http://127.0.0.1:$rgw_port
REFUGE_S3_ACCESS_KEY=$access
REFUGE_S3_SECRET_KEY=$secret
REFUGE_S3_REGION=$REGION
REFUGE_S3_BUCKET=$BUCKET
EOF
    cat >"$DIR/credentials" <<EOF
# S3 credentials of the test cluster made by scripts/ceph.sh (TOML)
endpoint = "http://127.0.0.1:$rgw_port"
region = "$REGION"
access_key = "$access"
secret_key = "$secret"
EOF
    mv "$DIR/s3.env.tmp" "$DIR/s3.env"

    log "starting radosgw on 127.0.0.1:$rgw_port"
    start_gateway
    make_bucket
    log "cluster up in $((SECONDS - t0))s; S3 settings in $DIR/s3.env"
}

cmd_start() {
    if [ -f "$MARKER" ]; then
        if s3_ok; then
            log "reusing the cluster in $DIR (its gateway answers)"
            return 0
        fi
        if daemon_pid mon.a >/dev/null && daemon_pid osd.0 >/dev/null && [ -f "$DIR/s3.env" ]; then
            log "the cluster in $DIR runs; starting its gateway"
            start_gateway
            return 0
        fi
        log "the cluster in $DIR is incomplete or down; making a new one"
        kill_all
        rm -rf -- "$DIR"
    elif [ -e "$DIR" ] && [ -n "$(ls -A -- "$DIR" 2>/dev/null)" ]; then
        die "$DIR exists, is not empty and was not made by $0; not touching it"
    fi
    ensure_packages
    # A start that fails leaves no daemon running, but keeps DIR and its logs
    # (the next start or stop removes them).
    trap 'kill_all' EXIT
    new_cluster
    trap - EXIT
}

cmd_stop() {
    [ -e "$DIR" ] || return 0
    if [ ! -f "$MARKER" ]; then
        if [ -z "$(ls -A -- "$DIR" 2>/dev/null)" ]; then
            rmdir -- "$DIR"
            return 0
        fi
        die "$DIR was not made by $0; not removing it"
    fi
    kill_all
    rm -rf -- "$DIR"
}

case $cmd in
start) cmd_start ;;
stop) cmd_stop ;;
stop-gateway)
    [ -f "$MARKER" ] || exit 0
    if [ -n "$PORT" ]; then stop_daemon "rgw-$PORT"; else stop_daemon "$RGW_NAME"; fi
    ;;
start-gateway)
    if [ ! -f "$MARKER" ] || [ ! -f "$DIR/s3.env" ]; then
        die "no cluster in $DIR (run: $0 start $DIR)"
    fi
    if ! daemon_pid mon.a >/dev/null || ! daemon_pid osd.0 >/dev/null; then
        die "the monitor or the OSD of $DIR is not running; see $DIR/log/"
    fi
    if [ -n "$PORT" ]; then start_extra_gateway "$PORT"; else start_gateway; fi
    ;;
status) s3_ok ;;
*) usage ;;
esac
