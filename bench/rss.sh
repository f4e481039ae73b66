#!/bin/bash
# rss.sh -- ringmx's resident memory with N messages queued (default 100,000 of 1 KB):
# the route points at a closed port, so everything accepted stays queued (deferred).
# Prints "rss_kb_idle=… rss_kb_queued=… queue_memory=… messages=…".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/${RINGMX_BUILD:-build}
N=${N:-100000} SIZE=${SIZE:-1024}
WORK=$(mktemp -d /tmp/ringmx-rss.XXXXXX)
PID=""
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/ringmx.yaml" <<YAML
hostname: rss.test
workers: 0
spool_dir: $WORK/spool
control_socket: $WORK/ctl.sock
log: { level: error }
listen: [ { address: "127.0.0.1:$port", role: mx, tls: none, auth: "off" } ]
relay_domains: [ example.test ]
mynetworks: [ 127.0.0.0/8 ]
routes: { "*": "[127.0.0.1]:9" }
queue: { retry: [ 1h ] }
YAML
"$BUILD/ringmx" -c "$WORK/ringmx.yaml" 2>"$WORK/log" &
PID=$!
for _ in $(seq 100); do [[ -S $WORK/ctl.sock ]] && break; sleep 0.1; done
idle=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
"$BUILD/ringmx-bench" send --server "127.0.0.1:$port" --connections 50 --messages "$N" \
	--size "$SIZE" --to-domain example.test --json >"$WORK/send.json"
sleep 1
queued=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
stats=$("$BUILD/ringmxctl" -c "$WORK/ringmx.yaml" stats)
echo "rss_kb_idle=$idle rss_kb_queued=$queued" \
	"queue_memory=$(awk '$1=="queue_memory" {print $2}' <<<"$stats")" \
	"messages=$(awk '$1=="queue_messages" {print $2}' <<<"$stats") size=$SIZE"
