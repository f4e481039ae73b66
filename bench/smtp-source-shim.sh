#!/usr/bin/env bash
# smtp-source-shim.sh -- runs ringmx-bench send with smtp-source's options, so that
# ../shared/peer-bench/postfix-relay.sh (SMTP_SOURCE=this) drives Postfix with the same load
# as ringmx gets in compare.sh: reused connections, PIPELINING, --size SIZE+150.
# Maps -s S, -l L, -m N, -r R, -f FROM, -t TO and HOST:PORT; -M and -d are implied or unused.
# Env: BENCH (the ringmx-bench binary).
set -euo pipefail
args=()
while getopts "s:l:m:r:M:f:t:d" opt; do
    case $opt in
    s) args+=(--connections "$OPTARG") ;;
    l) args+=(--size $((OPTARG + 150))) ;;
    m) args+=(--messages "$OPTARG") ;;
    r) args+=(--rcpts "$OPTARG") ;;
    f) args+=(--from "$OPTARG") ;;
    t) args+=(--to "$OPTARG") ;;
    M | d) ;;
    *) echo "smtp-source-shim.sh: unknown option" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[[ $# == 1 ]] || { echo "smtp-source-shim.sh: expected HOST:PORT" >&2; exit 2; }
exec "${BENCH:?BENCH must name ringmx-bench}" send "${args[@]}" --server "$1"
