#!/usr/bin/env bash
# ringmx-target.sh PORT CERT KEY -- runs ringmx (in the foreground, as this process) with one
# implicit-TLS listener on 127.0.0.1:PORT using CERT/KEY, taking mail for example.test from
# anyone and queueing it durably (sync always); delivery goes to a closed local port, so it
# stays queued, as Postfix's discard transport takes mail off the table in handshake.sh. For
# bench/handshake.sh: TARGET="bench/ringmx-target.sh @PORT@ @CERT@ @KEY@".
#
# Env (optional): RINGMX_BUILD=build, WORKERS=0, LISTEN_TLS=implicit (or may: STARTTLS).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/${RINGMX_BUILD:-build}
# beside the certificate: handshake.sh copies it into its own temp dir, which it removes
W=$(cd "$(dirname "$2")" && pwd)/ringmx-$1
rm -rf "$W"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
ringmx_config "$W" "$(free_port)" "[127.0.0.1]:9" "workers: ${WORKERS:-0}" "log: { level: warning }"
cat >>"$W/ringmx.yaml" <<YAML
tls: { certificate: $2, key: $3 }
limits: { max_connections_per_ip: 10000 }
YAML
sed -i "s|^listen: \[ \(.*\) \]|listen: [ \1, { address: \"127.0.0.1:$1\", role: mx, tls: ${LISTEN_TLS:-implicit}, auth: \"off\" } ]|" "$W/ringmx.yaml"
exec "$B/ringmx" -c "$W/ringmx.yaml"
