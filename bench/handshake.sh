#!/usr/bin/env bash
# handshake.sh -- TLS handshakes per second on an implicit-TLS port (465 style), full and
# resumed, with an ECDSA P-256 and an RSA-2048 certificate. The load is ringmx-bench send --tls
# --messages-per-connection 1 (one connection, one handshake, one message, QUIT), against
# (a) the ringmx side, TARGET (default: ringmx-bench sink --implicit-tls), and (b) a private
# Postfix whose smtpd listens with smtpd_tls_wrappermode=yes and the same certificate.
# Prints msgs/s, handshakes/s, CPU per handshake of each process (from /proc/PID/stat), and the
# ringmx/Postfix ratios.
#
# Env (all optional): N=4000 messages (= handshakes) per run, C=20 connections, SIZE=1024,
# SEND_THREADS=1, SERVER_THREADS=1 (sink --threads), RINGMX_BUILD=build, CERTS="ecdsa rsa",
# MODES="full resumed", CERT_DIR=tests/fixtures/tls (NAME.pem + NAME.key; made with openssl
# in the temp dir when missing), SKIP_POSTFIX=1, TIMEOUT=300, KEEP=1 (keep the temp dir), and
#   TARGET  the ringmx-side server, a command with @PORT@, @CERT@, @KEY@ replaced; it must run
#           in the foreground as one process (its CPU is read from /proc/PID/stat) and serve
#           implicit TLS on 127.0.0.1:@PORT@. Default:
#           "$BENCH sink --listen 127.0.0.1:@PORT@ --tls @CERT@,@KEY@ --implicit-tls --threads 1"
# The Postfix part needs root (its master runs as root); it is skipped otherwise.
set -euo pipefail

N=${N:-4000} C=${C:-20} SIZE=${SIZE:-1024} TIMEOUT=${TIMEOUT:-300}
SEND_THREADS=${SEND_THREADS:-1} SERVER_THREADS=${SERVER_THREADS:-1}
CERTS=${CERTS:-ecdsa rsa} MODES=${MODES:-full resumed}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/${RINGMX_BUILD:-build}
BENCH=$BUILD/ringmx-bench
CERT_DIR=${CERT_DIR:-$ROOT/tests/fixtures/tls}
TARGET=${TARGET:-"$BENCH sink --listen 127.0.0.1:@PORT@ --tls @CERT@,@KEY@ --implicit-tls --threads $SERVER_THREADS"}
POSTFIX=/usr/sbin/postfix POSTCONF=/usr/sbin/postconf
[[ -x $BENCH ]] || { echo "handshake.sh: ringmx-bench not built in $BUILD (ninja -C $BUILD)" >&2; exit 1; }
HZ=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/ringmx-handshake.XXXXXX)
chmod 755 "$WORK"
TARGET_PID="" MASTER_PID="" PF_CONF=""
log() { echo "handshake.sh: $*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

stop_pid() {	# pid: TERM, up to 5 s, then KILL
    local p=$1 i
    [[ -n $p ]] && kill -0 "$p" 2>/dev/null || return 0
    kill "$p" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
}
postfix_stop() {
    local kids p i
    [[ -n $MASTER_PID ]] || return 0
    kids=$(ps -o pid= --ppid "$MASTER_PID" 2>/dev/null || true)
    "$POSTFIX" -c "$PF_CONF" stop >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do kill -0 "$MASTER_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$MASTER_PID"
    for p in $kids; do stop_pid "$p"; done	# by PID only: the system Postfix is not ours
    MASTER_PID=""
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$TARGET_PID"
    postfix_stop
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then log "files kept in $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- certificates
mkdir -p "$WORK/certs"
for c in $CERTS; do
    if [[ -r $CERT_DIR/$c.pem && -r $CERT_DIR/$c.key ]]; then
        cp "$CERT_DIR/$c.pem" "$CERT_DIR/$c.key" "$WORK/certs/"
    else
        case $c in
        ecdsa) alg=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
        rsa) alg=(-newkey rsa:2048) ;;
        *) log "no $CERT_DIR/$c.pem and no recipe for '$c'"; exit 1 ;;
        esac
        openssl req -x509 "${alg[@]}" -nodes -days 30 -subj /CN=mx.ringmx.test \
            -addext subjectAltName=DNS:mx.ringmx.test -keyout "$WORK/certs/$c.key" \
            -out "$WORK/certs/$c.pem" 2>/dev/null
    fi
done
chmod 644 "$WORK"/certs/*

# ticks PID...: utime+stime of those processes (all their threads), in clock ticks
ticks() { local p s=0 f; for p in "$@"; do f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue; set -- $f; s=$((s + ${12} + ${13})); done; echo $s; }
# Postfix: master's own and reaped children's time (cutime, cstime) plus its live children
pf_all_ticks() {
    local f s kids
    f=$(cut -d')' -f2- "/proc/$MASTER_PID/stat"); set -- $f
    s=$((${12} + ${13} + ${14} + ${15}))
    kids=$(ps -o pid= --ppid "$MASTER_PID" | tr '\n' ' ')
    # shellcheck disable=SC2086
    echo $((s + $(ticks $kids)))
}
# pid:ticks of each live smtpd of the private instance (they live through a run: max_use,
# max_idle are high, so none exits and takes its time along)
pf_smtpd_ticks() { local p; for p in $(ps -o pid=,comm= --ppid "$MASTER_PID" | awk '$2 == "smtpd" {print $1}'); do echo "$p:$(ticks "$p")"; done; }
pf_smtpd_delta() {	# before-file after-file -> ticks
    awk -F: -v before="$1" 'FILENAME == before { b[$1] = $2; next } { s += $2 - b[$1] } END { print s + 0 }' "$1" "$2"
}
jget() { /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$@"; }

ROWS=()
row() { ROWS+=("$(printf '%-16s %-6s %-8s %9s %9s %9s %14s %14s %14s' "$@")"); }

# load PORT MODE TAG: one run of the load generator; sets L_MSGS L_HS L_RES L_SEND_US, or
# returns 1 (L_ERR: its first error) when it failed
load() {
    local port=$1 mode=$2 tag=$3 extra=()
    [[ $mode == full ]] && extra=(--no-resume)
    if ! /usr/bin/time -f "%U %S" -o "$WORK/$tag.cpu" timeout "$TIMEOUT" "$BENCH" send \
        --server "127.0.0.1:$port" --tls --messages-per-connection 1 --connections "$C" \
        --messages "$N" --size "$SIZE" --threads "$SEND_THREADS" --json "${extra[@]}" \
        >"$WORK/$tag.json" 2>"$WORK/$tag.err"; then
        log "load against port $port ($mode) failed:"; tail -3 "$WORK/$tag.err" >&2
        L_ERR=$(/usr/bin/python3 -c 'import json, sys
d = json.load(open(sys.argv[1])); e = d["first_errors"]
print(d["ok"], "ok,", d["conn_errors"], "connection errors:", e[0]["text"] if e else "?")' "$WORK/$tag.json" 2>/dev/null || echo "no report")
        log "$L_ERR"
        return 1
    fi
    L_MSGS=$(jget "$WORK/$tag.json" msgs_per_s)
    L_HS=$(jget "$WORK/$tag.json" handshakes_per_s)
    local hs res; hs=$(jget "$WORK/$tag.json" handshakes); res=$(jget "$WORK/$tag.json" handshakes_resumed)
    L_RES=$(awk -v h="$hs" -v r="$res" 'BEGIN { printf "%.0f%%", h ? 100 * r / h : 0 }')
    L_NHS=$hs
    L_SEND_US=$(awk -v n="$hs" '{ printf "%.0f", ($1 + $2) / n * 1e6 }' "$WORK/$tag.cpu")
}
per_hs() { awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN { printf "%.0f", t / hz / n * 1e6 }'; }

# (a) the ringmx side
run_target() {	# cert mode
    local cert=$1 mode=$2 port cmd t0 t1
    port=$(free_port)
    cmd=${TARGET//@PORT@/$port}; cmd=${cmd//@CERT@/$WORK/certs/$cert.pem}; cmd=${cmd//@KEY@/$WORK/certs/$cert.key}
    bash -c "exec $cmd" >"$WORK/target.out" 2>&1 &
    TARGET_PID=$!
    wait_listen "$port" || { cat "$WORK/target.out" >&2; log "TARGET did not listen: $cmd"; return 1; }
    t0=$(ticks "$TARGET_PID")
    if ! load "$port" "$mode" "t-$cert-$mode"; then
        stop_pid "$TARGET_PID"; TARGET_PID=""; row "ringmx-side" "$cert" "$mode" "failed: $L_ERR"; return 0
    fi
    t1=$(ticks "$TARGET_PID")
    stop_pid "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; TARGET_PID=""
    row "ringmx-side" "$cert" "$mode" "$L_MSGS" "$L_HS" "$L_RES" "$(per_hs $((t1 - t0)) "$L_NHS")" "-" "$L_SEND_US"
    eval "R_${cert}_${mode}=$L_HS RC_${cert}_${mode}=$(per_hs $((t1 - t0)) "$L_NHS")"
}

# (b) a private Postfix: own config_directory, queue and data under $WORK, smtpd only on
# loopback ports (one per certificate), mail discarded after queueing (fsync stays on).
postfix_start() {
    local q=$WORK/pf/spool d=$WORK/pf/lib c s
    PF_CONF=$WORK/pf/etc
    mkdir -p "$PF_CONF" "$q" "$d"; chown postfix "$d"
    cp -a /etc/postfix/postfix-files /etc/postfix/postfix-script /etc/postfix/post-install "$PF_CONF"/
    [[ -d /etc/postfix/postfix-files.d ]] && cp -a /etc/postfix/postfix-files.d "$PF_CONF"/
    [[ -f /etc/postfix/dynamicmaps.cf ]] && cp -a /etc/postfix/dynamicmaps.cf "$PF_CONF"/
    [[ -d /etc/postfix/dynamicmaps.cf.d ]] && cp -a /etc/postfix/dynamicmaps.cf.d "$PF_CONF"/
    cat >"$PF_CONF/main.cf" <<EOF
# private TLS handshake benchmark instance generated by bench/handshake.sh
compatibility_level = 3.6
queue_directory = $q
data_directory = $d
meta_directory = $PF_CONF
maillog_file = $WORK/pf/maillog
maillog_file_prefixes = $WORK
syslog_name = hsbench
myhostname = mx.ringmx.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
mynetworks = 127.0.0.0/8
relay_domains = example.test
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
default_transport = discard:bench
relay_transport = discard:bench
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
default_process_limit = 200
max_use = 1000000
max_idle = 3600s
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
tls_random_source = dev:/dev/urandom
smtpd_tls_loglevel = 0
smtpd_tls_received_header = no
smtpd_tls_session_cache_timeout = 3600s
smtp_tls_security_level = none
EOF
    s=$'\n'
    for c in $CERTS; do
        PF_PORT[$c]=$(free_port)
        s+="127.0.0.1:${PF_PORT[$c]} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"
        s+=" -o smtpd_tls_security_level=encrypt -o smtpd_tls_chain_files=$WORK/certs/$c.key,$WORK/certs/$c.pem"$'\n'
    done
    cat >"$PF_CONF/master.cf" <<EOF
$s
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    local bad; bad=$("$POSTCONF" -c "$PF_CONF" -n 2>&1 >/dev/null || true)
    [[ -z $bad ]] || { echo "$bad" >&2; log "postconf found problems in the generated main.cf"; return 1; }
    # postfix(1) reports fatal errors to syslog unless stderr is a terminal: script(1) gives one
    if ! script -qec "$POSTFIX -c $PF_CONF start" /dev/null >"$WORK/pf/start.log" 2>&1 </dev/null; then
        cat "$WORK/pf/start.log" >&2; tail -20 "$WORK/pf/maillog" >&2 || true; return 1
    fi
    for ((i = 0; i < 100; i++)); do
        [[ -s $q/pid/master.pid ]] && MASTER_PID=$(tr -dc 0-9 <"$q/pid/master.pid") && kill -0 "$MASTER_PID" 2>/dev/null && break
        sleep 0.1
    done
    [[ -n $MASTER_PID ]] || { log "postfix master.pid not found"; return 1; }
    for c in $CERTS; do wait_listen "${PF_PORT[$c]}" || { tail -20 "$WORK/pf/maillog" >&2; return 1; }; done
    log "private postfix master pid=$MASTER_PID, config $PF_CONF"
}

run_postfix() {	# cert mode
    local cert=$1 mode=$2 a0 a1 sm
    pf_smtpd_ticks >"$WORK/smtpd.before"; a0=$(pf_all_ticks)
    if ! load "${PF_PORT[$cert]}" "$mode" "p-$cert-$mode"; then
        row "postfix" "$cert" "$mode" "failed: $L_ERR"; return 0
    fi
    sleep 0.5	# the queue manager's discards of the last messages
    pf_smtpd_ticks >"$WORK/smtpd.after"; a1=$(pf_all_ticks)
    sm=$(pf_smtpd_delta "$WORK/smtpd.before" "$WORK/smtpd.after")
    row "postfix" "$cert" "$mode" "$L_MSGS" "$L_HS" "$L_RES" "$(per_hs "$sm" "$L_NHS")" \
        "$(per_hs $((a1 - a0)) "$L_NHS")" "$L_SEND_US"
    eval "P_${cert}_${mode}=$L_HS PC_${cert}_${mode}=$(per_hs "$sm" "$L_NHS")"
}

log "N=$N C=$C SIZE=$SIZE certs: $CERTS, modes: $MODES; TARGET: $TARGET"
for c in $CERTS; do for m in $MODES; do run_target "$c" "$m"; done; done
declare -A PF_PORT
if [[ ${SKIP_POSTFIX:-0} == 1 || $(id -u) != 0 ]]; then
    log "Postfix part skipped (SKIP_POSTFIX=1 or not root)"
elif postfix_start; then
    for c in $CERTS; do for m in $MODES; do run_postfix "$c" "$m"; done; done
    postfix_stop
else
    log "private Postfix did not start; its part is skipped"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "handshake.sh  date=$(date -u +%Y-%m-%dT%H%MZ)  commit=$COMMIT  nproc=$(nproc)  kernel=$(uname -r)"
echo "N=$N C=$C SIZE=$SIZE SEND_THREADS=$SEND_THREADS; one message per connection, implicit TLS"
printf '%-16s %-6s %-8s %9s %9s %9s %14s %14s %14s\n' server cert mode msgs/s hs/s resumed \
    "server_us/hs" "pf_all_us/hs" "send_us/hs"
printf '%s\n' "${ROWS[@]}"
for c in $CERTS; do for m in $MODES; do
    r=R_${c}_${m} p=P_${c}_${m} rc=RC_${c}_${m} pc=PC_${c}_${m}
    echo "ratio ringmx-side/postfix $c $m: handshakes/s $(ratio "${!r:-}" "${!p:-}"), server CPU per handshake $(ratio "${!rc:-}" "${!pc:-}")"
done; done
