#!/bin/sh
# Installs the Debian packages lua-acquire needs to build, demo and test,
# only those missing. Runs apt-get update first when anything is missing.
set -eu
PACKAGES="make gcc libc6-dev pkg-config libcurl4-openssl-dev ca-certificates openssl git
lua5.4 liblua5.4-dev lua-cjson lua-argparse lua-luv lua-busted lua-socket luarocks python3 valgrind curl
nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev tinyproxy"
[ $# -gt 0 ] && PACKAGES="$PACKAGES $*"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "deps: need root (or sudo) to install:$missing" >&2; exit 1; }
    SUDO=sudo
fi
echo "deps: installing$missing"
# The specs start their own nginx: keep the package's service from starting
# on port 80 while it installs.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy=1
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
[ -n "$policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit 0
