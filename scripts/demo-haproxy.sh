#!/usr/bin/env bash
# scripts/demo-haproxy.sh: examples/haproxy.cfg and examples/haproxy.lua (the files users copy, their
# CHANGE lines given this run's values) in a real haproxy, creating one case on the Acquire server
# named by ACQUIRE_BASE_URL with ACQUIRE_API_KEY (`make demo-haproxy` runs it under
# spec/server/with-server, the local Acquire server): haproxy up on free loopback ports, POST
# /cases?contact=597752 and its answer printed, haproxy stopped and its directory removed (on any
# exit). The CHANGE lines: this checkout's lua/ and .tmp/lua5.3/ (make .tmp/lua5.3/acquire.so) on
# Lua's paths, the service file, the two binds (the service's port and the TLS listener's).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HAPROXY=${HAPROXY:-haproxy}
die() { echo "demo-haproxy: $*" >&2; exit 1; }
: "${ACQUIRE_BASE_URL:?demo-haproxy: ACQUIRE_BASE_URL (make demo-haproxy sets it)}"
: "${ACQUIRE_API_KEY:?demo-haproxy: ACQUIRE_API_KEY (make demo-haproxy sets it)}"
[ -f "$ROOT/.tmp/lua5.3/acquire.so" ] || die "no .tmp/lua5.3/acquire.so: make .tmp/lua5.3/acquire.so"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/demo-haproxy.XXXXXX") || exit 1
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(free_port); tls_port=$(free_port)
while [ "$tls_port" = "$port" ]; do tls_port=$(free_port); done
cp "$ROOT/examples/haproxy.lua" "$dir/acquire.lua"
sed -e "s|^\( *lua-prepend-path \)[^ ]*/?\.lua .*# CHANGE.*|\1$ROOT/lua/?.lua|" \
    -e "s|^\( *lua-prepend-path \)[^ ]*/?\.so cpath .*# CHANGE.*|\1$ROOT/.tmp/lua5.3/?.so cpath|" \
    -e "s|^\( *lua-load \).*# CHANGE.*|\1$dir/acquire.lua|" \
    -e "s|^\( *bind \)127\.0\.0\.1:8080 .*# CHANGE.*|\1127.0.0.1:$port|" \
    -e "s|^\( *bind \)127\.0\.0\.1:9443 .*# CHANGE.*|\1127.0.0.1:$tls_port|" \
    "$ROOT/examples/haproxy.cfg" > "$dir/haproxy.cfg"
grep -q "# CHANGE: where" "$dir/haproxy.cfg" && die "a CHANGE line was not substituted"
"$HAPROXY" -c -q -f "$dir/haproxy.cfg" || die "haproxy refused the config"
"$HAPROXY" -f "$dir/haproxy.cfg" -db </dev/null >"$dir/haproxy.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do           # up to 30 s on a loaded machine; ends when it listens
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/haproxy.log" >&2; die "haproxy exited"; }
  sleep 0.1
done
echo "demo-haproxy: haproxy $($HAPROXY -v | awk 'NR==1{print $3}') on 127.0.0.1:$port, Acquire at $ACQUIRE_BASE_URL"
echo "demo-haproxy: POST /cases?contact=597752 {\"title\":\"Refund\",\"message\":\"Hello from HAProxy\"}"
out=$(curl -s -m 30 -w '\n%{http_code}' -X POST -H 'Content-Type: application/json' \
  --data '{"title":"Refund","message":"Hello from HAProxy"}' "http://127.0.0.1:$port/cases?contact=597752")
code=${out##*$'\n'}
echo "demo-haproxy: $code ${out%$'\n'*}"
[ "$code" = 201 ] || { cat "$dir/haproxy.log" >&2; die "no case created"; }
