#!/usr/bin/env bash
# relay.sh -- one relay run, ringmx only: ringmx-bench send -> ringmx -> ringmx-bench sink,
# with the accept rate, the relay rate (until the sink has all) and the CPU per message of
# each of the three processes (ringmx's from /proc/PID/stat, so io-wq threads count).
#
# Env (all optional): N=50000 messages, SIZE=1174 (ringmx-bench --size), C=50 connections,
# SYNC=always|none (queue.sync), WORKERS=0 (one per CPU), RINGMX_BUILD=build (ringmx-bench),
# RMX=$RINGMX_BUILD/ringmx (another ringmx binary, for A/B runs), SENDARGS / SINKARGS (more
# flags, e.g. SENDARGS=--bdat, SINKARGS=--no-chunking), PERF=1 (perf record -g of ringmx
# into ./perf.data).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/${RINGMX_BUILD:-build}
RMX=${RMX:-$B/ringmx}
N=${N:-50000} SIZE=${SIZE:-1174} C=${C:-50} SYNC=${SYNC:-always} WORKERS=${WORKERS:-0}
W=$(mktemp -d /tmp/ringmx-relay.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
P=$(free_port) S=$(free_port)
ringmx_config "$W" "$P" "[127.0.0.1]:$S" "workers: $WORKERS" "log: { level: warning }" \
    "queue: { sync: $SYNC }"
# shellcheck disable=SC2086
/usr/bin/time -f "sink %U %S" -o "$W/sink.cpu" "$B/ringmx-bench" sink --listen "127.0.0.1:$S" \
    --expect "$N" ${SINKARGS:-} >"$W/sink.out" 2>&1 &
SP=$!
"$RMX" -c "$W/ringmx.yaml" >"$W/log" 2>&1 &
RP=$!
wait_listen "$S" && wait_listen "$P" || { cat "$W/log" >&2; exit 1; }
[[ -n ${PERF:-} ]] && { perf record -g -p "$RP" -o perf.data 2>/dev/null & PERFP=$!; }
t0=$EPOCHREALTIME
# shellcheck disable=SC2086
/usr/bin/time -f "send %U %S" -o "$W/send.cpu" "$B/ringmx-bench" send --server "127.0.0.1:$P" \
    --connections "$C" --messages "$N" --size "$SIZE" --to-domain example.test ${SENDARGS:-} \
    >"$W/send.out" 2>&1
t1=$EPOCHREALTIME
timeout 120 tail --pid="$SP" -s 0.01 -f /dev/null
t2=$EPOCHREALTIME
read -r -a stat <"/proc/$RP/stat"
[[ -n ${PERF:-} ]] && { kill -INT "$PERFP"; wait "$PERFP" || true; }
kill "$RP"; wait "$RP" || true
awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$t2" -v u="${stat[13]}" -v s="${stat[14]}" 'BEGIN {
    printf "accept %.0f/s relay %.0f/s ringmx cpu %.2fs (%.1f us/msg)\n",
        n / (b - a), n / (c - a), (u + s) / 100, (u + s) / 100 / n * 1e6 }'
awk -v n="$N" '{ printf "%s %.2fs (%.1f us/msg)\n", $1, $2 + $3, ($2 + $3) / n * 1e6 }' \
    "$W/send.cpu" "$W/sink.cpu"
grep -i "lost" "$W/send.out" || true
