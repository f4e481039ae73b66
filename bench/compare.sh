#!/usr/bin/env bash
# compare.sh -- ringmx-bench vs Postfix's smtp-source/smtp-sink, Postfix relay and ringmx, in
# one run on this machine (issue 3). Prints a table and writes it to bench/results/.
#
# Env (all optional): N=20000 messages, SIZE=1024 body bytes (smtp-source -l; ringmx-bench
# gets --size SIZE+150 so its whole message is no smaller), SESSIONS=50 connections,
# RINGMX_BUILD=build (where ringmx-bench and ringmx are), SKIP_POSTFIX_RELAY=1, TIMEOUT=600.
# Postfix and ringmx each run under both loads (ringmx-bench send and smtp-source); ratios
# compare them under the same load.
# Needs root for the Postfix relay part (postfix-relay.sh starts a private Postfix).
set -euo pipefail

N=${N:-20000}; SIZE=${SIZE:-1024}; SESSIONS=${SESSIONS:-50}; TIMEOUT=${TIMEOUT:-600}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/${RINGMX_BUILD:-build}
PEER=${PEER_BENCH:-$ROOT/../shared/peer-bench}
SMTP_SINK=/usr/sbin/smtp-sink SMTP_SOURCE=/usr/sbin/smtp-source
BENCH=$BUILD/ringmx-bench
[[ -x $BENCH ]] || { echo "compare.sh: ringmx-bench not built in $BUILD (ninja -C $BUILD)" >&2; exit 1; }
for b in "$SMTP_SINK" "$SMTP_SOURCE"; do [[ -x $b ]] || { echo "compare.sh: $b missing (apt install postfix)" >&2; exit 1; }; done

WORK=$(mktemp -d /tmp/ringmx-compare.XXXXXX)
PIDS=()
# /usr/bin/time does not pass signals on: stop the child it runs, then the process itself.
stop_pid() { local kids; kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true); kill $kids "$1" 2>/dev/null || true; }
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "compare.sh: $*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN{printf "%.0f", n/(b-a)}'; }
cpu() { awk '{s+=$1+$2} END{printf "%.2f", s}' "$@"; }   # files of "%U %S"
timed() { local out=$1; shift; /usr/bin/time -f "%U %S" -o "$out" "$@"; }

# The runs that write to disk start on a quiet one: the previous run's writeback (Postfix
# leaves 40,000 deleted queue files behind) would otherwise slow the next run's syncs.
settle() { sync; sleep 2; }

ROWS=()
row() { ROWS+=("$(printf '%-46s %10s %8s' "$1" "$2" "$3")"); }

# (1a) ceiling, ours: ringmx-bench send [--bdat] -> ringmx-bench sink
ceiling_ringmx() {	# [--bdat]
    local port; port=$(free_port)
    /usr/bin/time -f "%U %S" -o "$WORK/rs.cpu" "$BENCH" sink --listen "127.0.0.1:$port" --expect "$N" >"$WORK/rs.out" &
    PIDS+=($!); local sp=$!
    wait_listen "$port" || { log "ringmx-bench sink did not listen"; return 1; }
    local t0=$EPOCHREALTIME
    timed "$WORK/rb.cpu" timeout "$TIMEOUT" "$BENCH" send --server "127.0.0.1:$port" \
        --connections "$SESSIONS" --messages "$N" --size $((SIZE + 150)) "$@" >"$WORK/rb.out"
    local t1=$EPOCHREALTIME
    wait "$sp"
    local r c; r=$(rate "$N" "$t0" "$t1"); c=$(cpu "$WORK/rs.cpu" "$WORK/rb.cpu")
    row "ringmx-bench send${1:+ $1} -> ringmx-bench sink" "$r" "$c"
    if [[ $# == 0 ]]; then R_RB=$r C_RB=$c; else R_RBB=$r; fi
}

# (1b) ceiling, Postfix's tools; PERSIST=1 adds smtp-source -d (reuse connections)
ceiling_postfix() {
    local persist=$1 port; port=$(free_port)
    local d=(); [[ $persist == 1 ]] && d=(-d)
    # no -M: smtp-sink would exit before its last 250 and smtp-source would fail
    /usr/bin/time -f "%U %S" -o "$WORK/ps.cpu" "$SMTP_SINK" -u nobody -c "127.0.0.1:$port" 1024 >/dev/null 2>&1 &
    PIDS+=($!); local sp=$!
    wait_listen "$port" || { log "smtp-sink did not listen"; return 1; }
    local t0=$EPOCHREALTIME
    timed "$WORK/pb.cpu" timeout "$TIMEOUT" "$SMTP_SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" "${d[@]}" \
        -M client.example.test -f sender@example.test -t rcpt@example.test "127.0.0.1:$port"
    local t1=$EPOCHREALTIME
    kill $(ps -o pid= --ppid "$sp") 2>/dev/null || true; wait "$sp" || true
    local r c; r=$(rate "$N" "$t0" "$t1"); c=$(cpu "$WORK/ps.cpu" "$WORK/pb.cpu")
    row "smtp-source${d:+ -d} -> smtp-sink" "$r" "$c"
    if [[ -z ${R_PF:-} ]] || (( r > R_PF )); then R_PF=$r; C_PF=$c; fi
}

# (2) Postfix relay, by the peer script (needs root). LOAD=bench drives it with ringmx-bench
# send (through smtp-source-shim.sh), the load ringmx gets in (3); else with smtp-source.
postfix_relay() {
    local load=$1 label=smtp-source src=() pa pr
    settle
    if [[ ${SKIP_POSTFIX_RELAY:-0} == 1 || $(id -u) != 0 ]]; then
        row "postfix relay (skipped: SKIP_POSTFIX_RELAY or not root)" "-" "-"; return 0; fi
    [[ $load == bench ]] && { label="ringmx-bench send"; src=(SMTP_SOURCE="$ROOT/bench/smtp-source-shim.sh" BENCH="$BENCH"); }
    if ! env "${src[@]}" N=$N SIZE=$SIZE SESSIONS=$SESSIONS MTA_PORT=$(free_port) \
        SINK_PORT=$(free_port) TIMEOUT=$TIMEOUT "$PEER/postfix-relay.sh" >"$WORK/pf.out" 2>"$WORK/pf.err"; then
        tail -5 "$WORK/pf.err" >&2; row "postfix relay, $label load (failed, see above)" "-" "-"; return 0; fi
    pa=$(sed -n 's/^postfix-accept msgs_per_s=\([0-9.]*\).*/\1/p' "$WORK/pf.out")
    pr=$(sed -n 's/^postfix-relay msgs_per_s=\([0-9.]*\).*/\1/p' "$WORK/pf.out")
    row "$label -> postfix (accept)" "$pa" "-"
    row "$label -> postfix -> smtp-sink (relay)" "$pr" "-"
    if [[ $load == bench ]]; then R_PBA=$pa R_PBR=$pr; else R_PA=$pa R_PR=$pr; fi
}

# (3) ringmx: the same load -> ringmx -> ringmx-bench sink. Accept rate (until the load
# generator is done) and relay rate (until the sink has every message), like postfix-relay.sh.
ringmx_start() {	# port sink_port
    ringmx_config "$WORK/rmx" "$1" "[127.0.0.1]:$2" "workers: 0" "log: { level: warning }" \
        "queue: { sync: always }"
    "$RMX" -c "$WORK/rmx/ringmx.yaml" >>"$WORK/rmx/log" 2>&1 &
    RMX_PID=$!; PIDS+=("$RMX_PID")
    wait_listen "$1" && kill -0 "$RMX_PID" 2>/dev/null
}

ringmx_run() {	# label, then the load command (its last arg is the server address)
    local label=$1; shift
    local port sport t0 t1 t2 sink
    settle
    port=$(free_port); sport=$(free_port)
    "$BENCH" sink --listen "127.0.0.1:$sport" --expect "$N" >"$WORK/rmx/sink.out" 2>&1 &
    sink=$!; PIDS+=("$sink")
    wait_listen "$sport" || { row "$label -> ringmx (sink did not start)" "-" "-"; return 0; }
    if ! ringmx_start "$port" "$sport"; then
        tail -3 "$WORK/rmx/log" >&2; row "$label -> ringmx (failed to start, log above)" "-" "-"
        kill "$sink" 2>/dev/null; return 0
    fi
    t0=$EPOCHREALTIME
    if ! timeout "$TIMEOUT" "$@" "127.0.0.1:$port" >"$WORK/rmx/load.out" 2>&1; then
        tail -4 "$WORK/rmx/load.out" >&2; row "$label -> ringmx (load failed, see above)" "-" "-"
        kill "$RMX_PID" "$sink" 2>/dev/null; return 0
    fi
    t1=$EPOCHREALTIME
    timeout "$TIMEOUT" tail --pid="$sink" -s 0.01 -f /dev/null  # -s: tail polls once a second by default
    t2=$EPOCHREALTIME
    LAST_ACCEPT=$(rate "$N" "$t0" "$t1"); LAST_RELAY=$(rate "$N" "$t0" "$t2")
    row "$label -> ringmx (accept)" "$LAST_ACCEPT" "-"
    row "$label -> ringmx -> sink (relay)" "$LAST_RELAY" "-"
    kill "$RMX_PID" 2>/dev/null; wait "$RMX_PID" 2>/dev/null || true
    rm -rf "$WORK/rmx/spool"
}

ringmx_compare() {
    RMX=$BUILD/ringmx
    if [[ ! -x $RMX ]]; then row "ringmx (skipped: $RMX not built)" "-" "-"; return 0; fi
    mkdir -p "$WORK/rmx"
    ringmx_run "ringmx-bench send" "$BENCH" send --connections "$SESSIONS" --messages "$N" \
        --size $((SIZE + 150)) --to-domain example.test --server
    R_RA=$LAST_ACCEPT R_RR=$LAST_RELAY
    ringmx_run "smtp-source" "$SMTP_SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" \
        -M client.example.test -f sender@example.test -t rcpt@example.test
    R_RS=$LAST_ACCEPT R_RSR=$LAST_RELAY
}

log "N=$N SIZE=$SIZE SESSIONS=$SESSIONS bench=$BENCH"
ceiling_ringmx
ceiling_ringmx --bdat
ceiling_postfix 0
ceiling_postfix 1
postfix_relay source
postfix_relay bench
ringmx_compare

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a/b }'; }
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
{
    echo "ringmx compare  date=$STAMP  commit=$COMMIT  nproc=$(nproc)  kernel=$(uname -r)"
    echo "N=$N SIZE=$SIZE (ringmx-bench --size $((SIZE + 150))) SESSIONS=$SESSIONS"
    printf '%-46s %10s %8s\n' "path" "msgs/s" "cpu_s"
    printf '%s\n' "${ROWS[@]}"
    echo "ratio ringmx-bench/smtp-source (best mode), rate: $(ratio "$R_RB" "$R_PF")  cpu: $(ratio "$C_RB" "$C_PF")"
    echo "ratio ringmx accept / postfix accept, same load: $(ratio "${R_RA:-}" "${R_PBA:-}") (ringmx-bench), $(ratio "${R_RS:-}" "${R_PA:-}") (smtp-source)"
    echo "ratio ringmx relay / postfix relay, same load: $(ratio "${R_RR:-}" "${R_PBR:-}") (ringmx-bench), $(ratio "${R_RSR:-}" "${R_PR:-}") (smtp-source)"
    echo "ratio ringmx relay / ceiling (ringmx-bench send -> sink): $(ratio "${R_RR:-}" "${R_RB:-}")"
    echo "ratio ringmx relay / ceiling with --bdat: $(ratio "${R_RR:-}" "${R_RBB:-}")"
} | tee "$WORK/table"
mkdir -p "$ROOT/bench/results"
cp "$WORK/table" "$ROOT/bench/results/$STAMP-$COMMIT.txt"
log "written to bench/results/$STAMP-$COMMIT.txt"
