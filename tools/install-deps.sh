#!/bin/sh
# install-deps.sh [build|test|bench] -- installs the Debian 12 packages ringmx needs.
# Idempotent: quiet, and no apt-get at all, when everything is already there.
set -eu

build="meson ninja-build pkg-config gcc libc6-dev liburing-dev libwolfssl-dev libunbound-dev
libjemalloc-dev libfyaml-dev libcrypt-dev libevent-dev dns-root-data"
test="$build python3 python3-pytest python3-dnspython python3-aiosmtpd swaks postfix
unbound nsd ldnsutils clang clang-format libclang-rt-14-dev iproute2 procps git
openssl testssl.sh libnet-ssleay-perl libio-socket-ssl-perl"
bench="$test time"

case "${1:-build}" in
build) want=$build ;;
test) want=$test ;;
bench) want=$bench ;;
*) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "install-deps.sh: missing packages:$missing; run this script as root" >&2
	exit 1
fi
echo "install-deps.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# postfix asks debconf questions and would start the system instance: neither is wanted
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends $missing >/dev/null
