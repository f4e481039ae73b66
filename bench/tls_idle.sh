#!/usr/bin/env bash
# tls_idle.sh -- memory of idle TLS sessions: N clients finish a handshake on ringmx's
# implicit-TLS port, read the banner and stay idle; ringmx's RSS is read before and
# with all of them open (/proc/PID/status VmRSS).
#
# Env (all optional): N=10000 sessions, KEY=ecdsa|rsa (the fixture certificate),
# WORKERS=0, RINGMX_BUILD=build, PLAIN=1 (plaintext sessions on the mx port instead: the
# baseline of a session without TLS).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/${RINGMX_BUILD:-build}
N=${N:-10000} KEY=${KEY:-ecdsa} WORKERS=${WORKERS:-0}
W=$(mktemp -d /tmp/ringmx-tlsidle.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
P=$(free_port) MXP=$(free_port)
F=$ROOT/tests/fixtures/tls
ringmx_config "$W" "$MXP" "[127.0.0.1]:9" "workers: $WORKERS" "log: { level: warning }"
cat >>"$W/ringmx.yaml" <<YAML
tls: { certificate: $F/$KEY.pem, key: $F/$KEY.key }
limits: { max_connections: $((N + 100)), max_connections_per_ip: $((N + 100)), command_timeout: 10m }
YAML
sed -i "s|^listen: \[ \(.*\) \]|listen: [ \1, { address: \"127.0.0.1:$P\", role: submission, tls: implicit, auth: \"off\" } ]|" "$W/ringmx.yaml"
ulimit -n $((2 * N + 1000))
"$B/ringmx" -c "$W/ringmx.yaml" >"$W/log" 2>&1 &
RP=$!
wait_listen "$P" || { cat "$W/log" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$RP/status"; }
before=$(rss)
/usr/bin/python3 - "$P" "$N" "$RP" "$before" "$MXP" "${PLAIN:-}" <<'PY'
import asyncio, resource, ssl, sys
port, n, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
plain = sys.argv[6] != ""
if plain:
    port = int(sys.argv[5])
resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 1000, 2 * n + 1000))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
async def one(sem, held):
    async with sem:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=None if plain else ctx), 30)
        await asyncio.wait_for(r.readline(), 30)
        held.append(w)
async def main():
    sem, held = asyncio.Semaphore(200), []
    await asyncio.gather(*(one(sem, held) for _ in range(n)))
    await asyncio.sleep(1)
    rss = int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))
    kind = "plaintext" if plain else "TLS"
    print(f"idle {kind} sessions {len(held)}: ringmx RSS {before // 1024} MB before, "
          f"{rss // 1024} MB with them open, {(rss - before) / len(held):.1f} KB each")
    for w in held:
        w.close()
asyncio.run(main())
PY
