#!/bin/bash
# run.sh [SECONDS] -- builds every libFuzzer target with clang (ASan+UBSan) and runs
# each for SECONDS (default 10). Prints one "fuzz NAME: ok|FAILED" line per target
# and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/../.."
seconds=${1:-10}
out=build-fuzz
mkdir -p "$out"

# target: the sources it needs besides itself
declare -A sources=(
	[address]="core/address.c"
	[dns_answer]="dns/dnswire.c"
	[smtp_server]="core/smtp_server.c core/address.c"
	[smtp_client]="core/smtp_client.c core/address.c"
	[journal_replay]="queue/journal.c queue/queue.c queue/crc32c.c"
	[tls]="tls/cert.c tls/dane.c tls/tls_client.c tls/tls_conn.c tls/tls_server.c"
)
# target: the libraries it links besides the sanitizers
declare -A libs=(
	[tls]="-lwolfssl"
)

pass=0 fail=0
for src in tests/fuzz/fuzz_*.c; do
	name=$(basename "$src" .c)
	name=${name#fuzz_}
	if [ -z "${sources[$name]+x}" ]; then
		echo "fuzz $name: FAILED (no entry in tests/fuzz/run.sh)"
		fail=$((fail + 1))
		continue
	fi
	bin=$out/fuzz_$name
	# shellcheck disable=SC2086
	if ! clang -g -O1 -std=gnu11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -I. "$src" ${sources[$name]} -o "$bin" ${libs[$name]:-} \
		>"$out/$name.build.log" 2>&1; then
		echo "fuzz $name: FAILED (build)"; tail -20 "$out/$name.build.log"
		fail=$((fail + 1))
		continue
	fi
	corpus=$out/corpus-$name
	mkdir -p "$corpus"
	seeds=()
	[ -d "tests/fuzz/seeds/$name" ] && seeds=("tests/fuzz/seeds/$name")
	if (cd "$out" && timeout $((seconds + 60)) "./fuzz_$name" -max_total_time="$seconds" \
		-rss_limit_mb=2048 "corpus-$name" "${seeds[@]/#/../}" >"$name.log" 2>&1); then
		echo "fuzz $name: ok ($(grep -o 'Done [0-9]* runs' "$out/$name.log" | tail -1))"
		pass=$((pass + 1))
	else
		echo "fuzz $name: FAILED"; tail -40 "$out/$name.log"
		fail=$((fail + 1))
	fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
