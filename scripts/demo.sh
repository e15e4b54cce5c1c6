#!/usr/bin/env bash
# The refuge demo: installs missing system packages, builds, then on
# loopback with fresh certificates starts a node, backs up a sample tree,
# changes it, backs up again, restores both points in time and checks them
# byte for byte. Leaves everything in $DEMO_DIR (default: a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "demo: building (the first build compiles RocksDB: 15-20 minutes)" >&2
cargo build --workspace --bins --locked
BIN="$CARGO_TARGET_DIR/debug"
DEMO_DIR="${DEMO_DIR:-$(mktemp -d /tmp/refuge-demo.XXXXXX)}"
mkdir -p "$DEMO_DIR"
cd "$DEMO_DIR"
step() { printf '\n== %s\n' "$*"; }

step "certificates: a CA, the node, and a client for tenant 'finance', host 'db1'"
"$BIN/refuge" certs init certs
"$BIN/refuge" certs issue --dir certs --tenant finance --host db1

step "the tenant's encryption key (the node never sees it; keep a copy offline)"
"$BIN/refuge" key create --tenant finance --out certs/finance.key

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17443)
cat > node.toml <<TOML
listen = "127.0.0.1:$PORT"
data_dir = "store"
[tls]
ca = "certs/ca.pem"
cert = "certs/node.pem"
key = "certs/node.key"
TOML
cat > agent.toml <<TOML
state_dir = "agent-state"

[node]
address = "127.0.0.1:$PORT"
ca = "certs/ca.pem"
cert = "certs/finance-db1.pem"
key = "certs/finance-db1.key"

[encryption]
key_file = "certs/finance.key"

[[source]]
name = "data"
path = "sample"
TOML

step "starting refuged on 127.0.0.1:$PORT (log: $DEMO_DIR/node.log)"
"$BIN/refuged" --config node.toml >node.log 2>&1 &
NODE=$!
trap 'kill $NODE 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

step "a sample tree: a 64 MiB file, small files, an empty file, a symlink"
mkdir -p sample/docs
head -c $((64 * 1024 * 1024)) /dev/urandom > sample/big.bin
for i in $(seq 1 50); do echo "note $i" > "sample/docs/note $i.txt"; done
: > sample/empty
ln -s docs/"note 1.txt" sample/link

step "backup 1"
"$BIN/refuge-agent" -c agent.toml backup
cp -a sample state1
sleep 1

step "change the tree: insert into the middle of big.bin, edit, add, delete, rename"
python3 - <<'PY' 2>/dev/null || { head -c 100 /dev/urandom >> sample/big.bin; }
p = "sample/big.bin"
b = open(p, "rb").read()
m = len(b) // 2
open(p, "wb").write(b[:m] + b"inserted in the middle" + b[m:])
PY
echo "edited" >> "sample/docs/note 2.txt"
echo "new file" > sample/docs/added.txt
rm "sample/docs/note 3.txt"
mv "sample/docs/note 4.txt" sample/renamed.txt

step "backup 2 (only the changed chunks travel)"
"$BIN/refuge-agent" -c agent.toml backup

step "restore points"
"$BIN/refuge" -c agent.toml snapshots
FIRST_TIME=$("$BIN/refuge" -c agent.toml snapshots --json | grep -m1 '"time"' | sed 's/.*"time": "\(.*\)".*/\1/')

step "restore the point in time $FIRST_TIME (--at) and the latest, and compare"
"$BIN/refuge" -c agent.toml restore --at "$FIRST_TIME" --target restored1
"$BIN/refuge" -c agent.toml restore latest --target restored2
diff -r state1 restored1
diff -r sample restored2
echo
echo "demo: OK — both restore points are byte-identical to the source trees (in $DEMO_DIR)"
