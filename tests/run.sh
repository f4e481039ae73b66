#!/bin/bash
# run.sh -- builds ringmx and runs every test: the C unit tests and the pytest
# integration tests, first on the normal build, then all again under ASan+UBSan.
# The last line printed is "N passed, N failed[, N skipped]".
set -u
cd "$(dirname "$0")/.."
top=$PWD
tools/install-deps.sh test || exit 1

PY=/usr/bin/python3	# Debian's python, which has pytest and dnspython
results=$(mktemp -d /tmp/ringmx-tests.XXXXXX)
trap 'rm -rf "$results"' EXIT
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$top/tests/lsan.supp

build() {	# dir, meson options...
	local dir=$1; shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@" >"$results/$(basename "$dir").setup.log" 2>&1 ||
			{ cat "$results/$(basename "$dir").setup.log"; return 1; }
	fi
	ninja -C "$dir" >"$results/$(basename "$dir").build.log" 2>&1 ||
		{ tail -50 "$results/$(basename "$dir").build.log"; return 1; }
}

phase() {	# name builddir
	local name=$1 dir=$2
	echo "== $name: unit tests"
	meson test -C "$dir" --suite unit --print-errorlogs --no-rebuild \
		--logbase "unit" >"$results/$name.unit.out" 2>&1
	grep -E '^ *[0-9]+/[0-9]+ ' "$results/$name.unit.out"
	tail -n 12 "$results/$name.unit.out" | grep -E '^(Ok|Fail|Skipped|Expected|Unexpected|Timeout):' |
		sed "s/^/$name unit /" >>"$results/counts"
	grep -q '^Fail: *0' "$results/$name.unit.out" || sed -n '/stdout:/,$p' "$results/$name.unit.out" | tail -80
	echo "== $name: integration tests"
	RINGMX_BUILD=$dir timeout 1200 $PY -m pytest -q -p no:cacheprovider tests/integration \
		--junitxml="$results/$name.junit.xml" 2>&1 | tail -n 40
}

total_pass=0 total_fail=0 total_skip=0
count() {	# adds the counts of one phase
	local name=$1
	local ok fail skip
	ok=$(awk -v n="$name" '$1==n && $3=="Ok:" {print $4}' "$results/counts")
	fail=$(awk -v n="$name" '$1==n && ($3=="Fail:" || $3=="Timeout:") {s+=$4} END {print s+0}' "$results/counts")
	skip=$(awk -v n="$name" '$1==n && $3=="Skipped:" {print $4}' "$results/counts")
	total_pass=$((total_pass + ${ok:-0})) total_fail=$((total_fail + ${fail:-0}))
	total_skip=$((total_skip + ${skip:-0}))
	if [ -f "$results/$name.junit.xml" ]; then
		read -r t f e s < <($PY - "$results/$name.junit.xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
suites = [r] if r.tag == "testsuite" else list(r)
g = lambda k: sum(int(x.get(k, 0)) for x in suites)
print(g("tests"), g("failures"), g("errors"), g("skipped"))
PYEOF
)
		total_pass=$((total_pass + t - f - e - s)) total_fail=$((total_fail + f + e))
		total_skip=$((total_skip + s))
	else
		total_fail=$((total_fail + 1))	# pytest never wrote its report: count it as a failure
	fi
}

touch "$results/counts"
if build build; then
	phase normal build
	count normal
else
	echo "build failed"; total_fail=$((total_fail + 1))
fi
if build build-asan -Db_sanitize=address,undefined -Djemalloc=false -Db_lundef=false; then
	phase asan build-asan
	count asan
else
	echo "sanitizer build failed"; total_fail=$((total_fail + 1))
fi
echo "== format: clang-format --dry-run --Werror"
if git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror >"$results/format.out" 2>&1; then
	echo "format: ok"; total_pass=$((total_pass + 1))
else
	head -20 "$results/format.out"; echo "format: FAILED"; total_fail=$((total_fail + 1))
fi

echo "== fuzz: every libFuzzer target for a few seconds"
tests/fuzz/run.sh "${FUZZ_SECONDS:-10}" | tee "$results/fuzz.out" | grep -v '^[0-9]* passed'
read -r fp ff < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$results/fuzz.out")
total_pass=$((total_pass + ${fp:-0})) total_fail=$((total_fail + ${ff:-1}))

if [ "$total_skip" -gt 0 ]; then
	echo "$total_pass passed, $total_fail failed, $total_skip skipped"
else
	echo "$total_pass passed, $total_fail failed"
fi
[ "$total_fail" -eq 0 ]
