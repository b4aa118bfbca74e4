#!/usr/bin/env bash
# scripts/demo-nginx.sh: examples/nginx.conf (the file users copy, its CHANGE lines given this run's values) in a
# real nginx, creating cases on the Acquire server named by ACQUIRE_BASE_URL with ACQUIRE_API_KEY
# (`make demo-nginx` runs it under spec/server/with-server, the local Acquire server).
#
#   scripts/demo-nginx.sh              the demo: nginx up on a free loopback port, one case created
#                                      by POST /cases?contact=597752 and printed, nginx stopped and
#                                      its directory removed (on any exit, Ctrl-C included)
#   scripts/demo-nginx.sh up DIR PORT  nginx from examples/nginx.conf in DIR (an empty directory),
#                                      listening on 127.0.0.1:PORT; returns once it listens
#   scripts/demo-nginx.sh down DIR     stops that nginx (master and workers) and removes DIR
#
# How the example is parameterised: DIR/nginx.conf is examples/nginx.conf (the whole file, as
# doc/nginx.md shows it) with only its lines marked `# CHANGE` given this run's values (`listen
# 127.0.0.1:PORT`, this checkout's lua/ and .tmp/luajit/ (make .tmp/luajit/acquire.so) on Lua's
# paths, the nameserver of /etc/resolv.conf; the `account_id` line stays: ACQUIRE_BASE_URL wins),
# and, right after `http {`, lines marked `# demo-nginx.sh` that keep nginx's files in DIR (the
# access log, the temporary directories). The pid file (DIR) and, when started as root, `user
# root` (workers as nobody could not read a checkout under /root) are given with -g, the error
# log with -e: none of them is in the example. spec/07-ngx_spec.lua and spec/30-nginx_doc_spec.lua
# run the example through `up` and `down`.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXAMPLE=$ROOT/examples/nginx.conf
NGINX=${NGINX:-nginx}

die() { echo "demo-nginx: $*" >&2; exit 1; }

# A path inside nginx's config, double-quoted.
q() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }

# The first nameserver of /etc/resolv.conf, in nginx's notation (an IPv6 one in brackets).
nameserver() {
    local ns
    ns=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null)
    case $ns in
        "") ;;
        *:*) printf '[%s]' "${ns%%%*}" ;;
        *) printf '%s' "$ns" ;;
    esac
}

multiarch() { gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu; }

# nginx's main-context settings that belong to this run, not to the example.
globals() {
    local g
    g="pid $(q "$1/nginx.pid");"
    [ "$(id -u)" = 0 ] && g="$g user root;"
    printf '%s' "$g"
}

# examples/nginx.conf for DIR and PORT on stdout: the CHANGE lines substituted, DIR's files added.
write_conf() {  # DIR PORT
    local dir=$1 port=$2 ns d extra=""
    ns=$(nameserver)
    extra="    access_log $(q "$dir/access.log");    # demo-nginx.sh"
    for d in client_body proxy fastcgi uwsgi scgi; do
        extra="$extra
    ${d}_temp_path $(q "$dir/tmp/$d");    # demo-nginx.sh"
    done
    awk -v port="$port" -v ns="$ns" -v extra="$extra" \
        -v lpath="$(q "$ROOT/lua/?.lua;;")" \
        -v cpath="$(q "$ROOT/.tmp/luajit/?.so;/usr/lib/$(multiarch)/lua/5.1/?.so;;")" '
        function put(value,   indent, comment) {
            indent = $0; sub(/[^ \t].*$/, "", indent)
            comment = substr($0, index($0, "# CHANGE"))
            print indent $1 " " value ";    " comment
        }
        /# CHANGE/ && $1 == "listen" { put("127.0.0.1:" port); next }
        /# CHANGE/ && $1 == "lua_package_path" { put(lpath); next }
        /# CHANGE/ && $1 == "lua_package_cpath" { put(cpath); next }
        /# CHANGE/ && $1 == "resolver" && ns != "" { put(ns " ipv6=off"); next }
        { print }
        /^http \{/ { print extra }
    ' "$EXAMPLE"
}

# The nginx command line for DIR, with ARGS after it.
run_nginx() {  # DIR ARGS...
    local dir=$1; shift
    "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g "$(globals "$dir")" "$@"
}

up() {  # DIR PORT
    local dir=$1 port=$2 m
    [ -d "$dir" ] || die "up: no directory $dir"
    [ -z "$(ls -A "$dir")" ] || die "up: $dir is not empty"
    case $port in ''|*[!0-9]*) die "up: bad port '$port'" ;; esac
    for m in ndk_http_module.so ngx_http_lua_module.so; do
        [ -r "/usr/lib/nginx/modules/$m" ] ||
            die "no /usr/lib/nginx/modules/$m: scripts/deps.sh nginx libnginx-mod-http-lua installs it"
    done
    [ -r "$ROOT/.tmp/luajit/acquire.so" ] || die "no .tmp/luajit/acquire.so: make .tmp/luajit/acquire.so"
    [ -n "${ACQUIRE_API_KEY:-}" ] || die "ACQUIRE_API_KEY is not set"
    # nginx's workers read DIR (mktemp -d makes it 0700); as root they run as root (globals).
    write_conf "$dir" "$port" >"$dir/nginx.conf" && chmod 755 "$dir" && mkdir "$dir/tmp" || exit 1
    # nginx checks the config, opens its port, then goes into the background (its default,
    # `daemon on`): a failure to start is this command's status, with what nginx said.
    if ! run_nginx "$dir" </dev/null >"$dir/stdout" 2>&1; then
        cat "$dir/stdout" "$dir/error.log" >&2 2>/dev/null
        return 1
    fi
    local _
    for _ in $(seq 100); do
        [ -s "$dir/nginx.pid" ] && return 0
        sleep 0.05
    done
    die "up: nginx wrote no pid file"
}

# Waits up to $2 tenths of a second for process $1 to be gone.
gone() {
    local _
    for _ in $(seq "$2"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}

down() {  # DIR
    local dir=$1 master kids k
    # only a directory `up` made: an empty one is removed, anything else left alone
    grep -q '# demo-nginx.sh$' "$dir/nginx.conf" 2>/dev/null || { rmdir "$dir" 2>/dev/null; return 0; }
    master=$(cat "$dir/nginx.pid" 2>/dev/null)
    if [ -n "$master" ] && kill -0 "$master" 2>/dev/null; then
        kids=$(cat "/proc/$master/task/$master/children" 2>/dev/null)
        kill -TERM "$master" 2>/dev/null            # nginx's fast shutdown: workers too
        gone "$master" 50 || kill -9 "$master" 2>/dev/null
        for k in $kids; do
            gone "$k" 20 || kill -9 "$k" 2>/dev/null
        done
        for k in $master $kids; do
            gone "$k" 20 || { echo "demo-nginx: process $k outlived kill -9" >&2; return 1; }
        done
    fi
    rm -rf "$dir"
}

child=""
stop_child() { [ -z "$child" ] || { kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; }; }

demo() {
    local port body status tries=0 err
    [ -n "${ACQUIRE_BASE_URL:-}" ] ||
        die "ACQUIRE_BASE_URL is not set (make demo-nginx runs this under spec/server/with-server)"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/demo-nginx.XXXXXX") || exit 1   # global: the EXIT trap reads it
    trap 'trap "" INT TERM; down "$dir"' EXIT   # a second signal cannot cut the cleanup short
    trap 'stop_child; exit 130' INT
    trap 'stop_child; exit 143' TERM
    while :; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        err=$(up "$dir" "$port" 2>&1) && break
        tries=$((tries + 1))
        # another process took the port between choosing it and nginx binding it: again
        if [ $tries -lt 3 ] && [[ $err == *"Address already in use"* ]]; then
            down "$dir" && mkdir -m 700 "$dir" && continue
        fi
        echo "$err" >&2
        exit 1
    done
    echo "demo-nginx: nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') (master pid $(cat "$dir/nginx.pid")) runs examples/nginx.conf on 127.0.0.1:$port"
    echo "demo-nginx: its acquire.ngx client creates cases at ACQUIRE_BASE_URL=$ACQUIRE_BASE_URL"
    echo
    echo "\$ curl -X POST 'http://127.0.0.1:$port/cases?contact=597752' -d '{\"title\":\"Refund\"}'"
    # curl in the background, waited for: a signal to this script (with-server passes INT and
    # TERM on) is handled at once, not once curl is done
    curl -sS --max-time 20 -X POST "http://127.0.0.1:$port/cases?contact=597752" \
        -d '{"title":"Refund"}' -o "$dir/answer" -w '%{http_code}' >"$dir/status" &
    child=$!
    wait "$child" || { tail -n 20 "$dir/error.log" >&2; exit 1; }
    child=""
    body=$(cat "$dir/answer")
    status=$(cat "$dir/status")
    echo "$body"
    echo "(HTTP $status)"
    echo
    if [ "$status" != 200 ]; then
        echo "demo-nginx: expected HTTP 200; nginx's error log:" >&2
        tail -n 20 "$dir/error.log" >&2
        exit 1
    fi
    local master
    master=$(cat "$dir/nginx.pid")
    trap "" INT TERM; trap - EXIT
    down "$dir"
    if kill -0 "$master" 2>/dev/null || [ -e "$dir" ]; then
        die "nginx (pid $master) or $dir is still there"
    fi
    echo "demo-nginx: nginx stopped (master and workers), $dir removed"
}

case ${1:-} in
    "") demo ;;
    up) [ $# -eq 3 ] || die "usage: $0 up DIR PORT"; up "$2" "$3" ;;
    down) [ $# -eq 2 ] || die "usage: $0 down DIR"; down "$2" ;;
    *) die "usage: $0 [up DIR PORT | down DIR]" ;;
esac
