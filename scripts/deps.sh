#!/bin/sh
# Installs Debian packages for a make target, only those missing:
#
#   scripts/deps.sh [-t TARGET] PACKAGE...
#
# The lists are the Makefile's (DEPS_BUILD, DEPS_DEMO, DEPS_TEST, NGX_PKGS...):
# each target asks for what it needs and nothing else. Before installing, it
# prints the packages asked for and everything apt-get will install with them,
# and, if apt-get would remove or replace an installed package, names it
# first (luajit2, OpenResty's LuaJIT that nginx's Lua module needs, conflicts
# with Debian's luajit and replaces libluajit-5.1-2). DEPS_NO_REMOVE=1: stop
# there instead, installing nothing. DEPS_DRY_RUN=1: print all that, install
# nothing. Runs apt-get update first when anything is missing (not in a dry
# run as non-root); needs root or sudo then.
set -eu
target=deps
if [ "${1:-}" = -t ]; then target=${2:?usage: scripts/deps.sh [-t TARGET] PACKAGE...}; shift 2; fi

missing=""
for p in "$@"; do
    case " $missing " in *" $p "*) continue;; esac
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

dry=${DEPS_DRY_RUN:-}
SUDO=""
if [ "$(id -u)" != 0 ] && [ "$dry" != 1 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "deps ($target): need root (or sudo) to install:$missing" >&2; exit 1; }
    SUDO=sudo
fi
echo "deps ($target): missing:$missing"
if [ "$(id -u)" = 0 ] || [ "$dry" != 1 ]; then $SUDO apt-get update -qq; fi
# What apt-get will do, simulated: what it installs, and what it removes.
plan=$(apt-get -s install --no-install-recommends $missing)
installs=$(printf '%s\n' "$plan" | awk '/^Inst / { printf " %s", $2 }')
removes=$(printf '%s\n' "$plan" | awk '/^Remv / { printf " %s", $2 }')
echo "deps ($target): apt-get installs:$installs"
if [ -n "$removes" ]; then
    echo "deps ($target): and REMOVES these installed packages:$removes"
    case " $missing " in
        *" luajit2 "*|*" libluajit2-5.1-dev "*)
            echo "deps ($target): (luajit2 is OpenResty's LuaJIT, which nginx's Lua module needs: it conflicts with"
            echo "deps ($target):  Debian's luajit and replaces libluajit-5.1-2, same ABI; apt-get install luajit undoes it)";;
    esac
    if [ "${DEPS_NO_REMOVE:-}" = 1 ]; then
        echo "deps ($target): DEPS_NO_REMOVE=1: nothing installed" >&2
        exit 1
    fi
fi
if [ "$dry" = 1 ]; then
    echo "deps ($target): DEPS_DRY_RUN=1: nothing installed"
    exit 0
fi
# The specs start their own nginx: keep the package's service from starting
# on port 80 while it installs.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy=1
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
[ -n "$policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit 0
