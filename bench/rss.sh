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
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
port=$(free_port)
ringmx_config "$WORK" "$port" "[127.0.0.1]:9" "workers: 0" "log: { level: error }" \
    "queue: { retry: [ 1h ] }"
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
