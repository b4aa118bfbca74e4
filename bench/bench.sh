#!/usr/bin/env bash
# make bench: the client against a real nginx on loopback, beside the floor
# (plain libcurl) and the peers. Writes BENCHMARKS.md and bench/batch.png.
# BENCH_SMOKE=1: a few hundred calls, no report (CI, so it cannot rot).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
SMOKE=${BENCH_SMOKE:-0}
CALLS=${BENCH_CALLS:-$([ "$SMOKE" = 1 ] && echo 300 || echo 20000)}
SWEEP=$([ "$SMOKE" = 1 ] && echo 1 || echo 3)    # rounds of the concurrency sweep (the median)
COLD=${BENCH_COLD_ROUNDS:-$([ "$SMOKE" = 1 ] && echo 2 || echo 40)}   # warm/cold rounds at 64
work=$(mktemp -d)
chmod 755 "$work"                          # nginx workers run as nobody
out="$work/results.txt"
nginx_pid=""
cleanup() {
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
note() { echo "bench: $*" >&2; }
rec() { while read -r k v; do echo "$1$k $v" | tee -a "$out" >&2; done; }

port=$(free_port); slow=$(free_port); length=$(free_port)
mkdir -p "$work/tmp" "$work/logs"
cp spec/fixtures/api/create-case-response.json "$work/fixture.json"
sed -e "s|@PREFIX@|$work|g; s|@PORT@|$port|g; s|@SLOW_PORT@|$slow|g; s|@LENGTH_PORT@|$length|g; s|@FIXTURE@|$work/fixture.json|g" \
    bench/nginx.conf.in > "$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf" -e "$work/error.log" &
nginx_pid=$!
for _ in $(seq 1 200); do curl -s -o /dev/null -X POST "http://127.0.0.1:$port/" && break; sleep 0.05; done
url="http://127.0.0.1:$port"
note "nginx bench server on $url (and :$slow with 20 ms of ngx.sleep, :$length with Content-Length)"

# BENCH_BULK_ONLY=1: only the bulk rows (issue 21), spliced into BENCHMARKS.md's "Bulk imports"
# section; BENCH_BULK_SIZES, BENCH_BULK_ROUNDS, BENCH_BULK_ROOT (another checkout: "before").
BULK_SIZES=${BENCH_BULK_SIZES:-$([ "$SMOKE" = 1 ] && echo 200,1000 || echo 10000,100000,1000000)}
BULK_ROUNDS=${BENCH_BULK_ROUNDS:-$([ "$SMOKE" = 1 ] && echo 1 || echo 5)}
bulk() {
  make -s build LUA=5.4 >/dev/null
  BULK_TPUT_ROWS=${BENCH_BULK_TPUT_ROWS:-$([ "$SMOKE" = 1 ] && echo 300 || echo 10000)} \
    lua5.4 bench/bulk.lua "$url" "$BULK_SIZES" "$BULK_ROUNDS" "${BENCH_BULK_ROOT:-.}" | rec ""
}
# The event-loop rows (issue 19, bench/pending.lua): BENCH_PENDING_CALLS pending calls in a cqueues loop
# beside create_cases at concurrency 16 and 64, one start_case beside create_case, and (not in the smoke run)
# create_case beside the build of BENCH_OLD_REV (before the call engine), each in BENCH_PENDING_ROUNDS
# interleaved rounds. BENCH_PENDING_ONLY=1: only these, spliced into BENCHMARKS.md's "Event loops" section.
PENDING_CALLS=${BENCH_PENDING_CALLS:-$([ "$SMOKE" = 1 ] && echo 200 || echo 1000)}
PENDING_ROUNDS=${BENCH_PENDING_ROUNDS:-$([ "$SMOKE" = 1 ] && echo 1 || echo 21)}
OLD_REV=${BENCH_OLD_REV:-28ec896}
pending_rows() {
  make -s build LUA=5.4 >/dev/null
  mkdir -p .tmp/bench/5.4 && cp acquire.so .tmp/bench/5.4/
  local cpath="$root/.tmp/bench/5.4/?.so;;"
  LUA_CPATH="$cpath" lua5.4 bench/pending.lua tput "$url" "$PENDING_CALLS" "$PENDING_ROUNDS" 16,64 | rec ""
  LUA_CPATH="$cpath" lua5.4 bench/pending.lua single "$url" "$PENDING_CALLS" "$PENDING_ROUNDS" | rec ""
  [ "$SMOKE" = 1 ] && return 0
  local old=".tmp/bench/old-$OLD_REV"             # the old tree from git, built once
  if [ ! -f "$old/acquire.so" ]; then
    rm -rf "$old" && mkdir -p "$old"
    git archive "$OLD_REV" | tar -x -C "$old"
    make -s -C "$old" build LUA=5.4 >/dev/null
  fi
  lua5.4 bench/pending.lua old "$url" $((2 * PENDING_CALLS)) "$PENDING_ROUNDS" "$root/.tmp/bench/5.4" "$root/$old" | rec ""
}
if [ "${BENCH_PENDING_ONLY:-0}" = 1 ]; then
  pending_rows
  [ "$SMOKE" = 1 ] || { lua5.4 bench/report.lua "$out" pending BENCHMARKS.md; note "BENCHMARKS.md: event-loop rows"; }
  exit 0
fi

# The HAProxy rows (issue 19, bench/haproxy.lua): a Lua service creating a case with acquire.haproxy
# beside the same POST by hand over core.tcp, in a real haproxy (Lua 5.3), against the bench server's
# Content-Length port (the hand-written reader reads no chunks), driven at concurrency
# BENCH_HAPROXY_CONC for BENCH_HAPROXY_SECONDS a round, BENCH_HAPROXY_ROUNDS interleaved rounds.
# BENCH_HAPROXY_ONLY=1: only these, spliced into BENCHMARKS.md's "Event loops" section.
HAPROXY_ROUNDS=${BENCH_HAPROXY_ROUNDS:-$([ "$SMOKE" = 1 ] && echo 1 || echo 9)}
HAPROXY_SECONDS=${BENCH_HAPROXY_SECONDS:-$([ "$SMOKE" = 1 ] && echo 1 || echo 4)}
HAPROXY_CONC=${BENCH_HAPROXY_CONC:-16}
haproxy_rows() {
  lua5.4 bench/haproxy.lua "http://127.0.0.1:$length" "$HAPROXY_ROUNDS" "$HAPROXY_SECONDS" "$HAPROXY_CONC" | rec ""
}
if [ "${BENCH_HAPROXY_ONLY:-0}" = 1 ]; then
  haproxy_rows
  [ "$SMOKE" = 1 ] || { lua5.4 bench/report.lua "$out" haproxy BENCHMARKS.md; note "BENCHMARKS.md: HAProxy rows"; }
  exit 0
fi

if [ "${BENCH_BULK_ONLY:-0}" = 1 ]; then
  bulk
  [ "$SMOKE" = 1 ] || { lua5.4 bench/report.lua "$out" bulk BENCHMARKS.md; note "BENCHMARKS.md: bulk rows"; }
  exit 0
fi

echo "calls $CALLS" >> "$out"
wrk_s=$([ "$SMOKE" = 1 ] && echo 1 || echo 5)
wrk -t1 -c8 -d"${wrk_s}s" -s bench/wrk_post.lua "$url/api/v1/crm/messenger/chat/create?contactId=597752" \
  | awk '/Requests\/sec/ {print "wrk_rps", $2}' | rec ""
wrk -t1 -c1 -d"${wrk_s}s" -s bench/wrk_post.lua "$url/api/v1/crm/messenger/chat/create?contactId=597752" \
  | awk '/Requests\/sec/ {print "wrk1_rps", $2}' | rec ""

mkdir -p .tmp/bench
cc -O2 -Wall -Wextra -Werror -o .tmp/bench/curl_post bench/curl_post.c $(pkg-config --libs libcurl)
.tmp/bench/curl_post "$url/api/v1/crm/messenger/chat/create?contactId=597752" "$CALLS" \
  | awk '{print "a_us", $2}' | rec ""
.tmp/bench/curl_post "$url/api/v1/crm/messenger/chat/create?contactId=597752" "$CALLS" module \
  | awk '{print "amod_us", $2}' | rec ""
lua5.4 bench/bench.lua floor "$work/fixture.json" "$CALLS" | rec "floor_"
# the cost of a fresh easy handle per transfer (src/transport.c), interleaved rounds
cc -O2 -Wall -Wextra -Werror -o .tmp/bench/handles bench/handles.c $(pkg-config --libs libcurl)
hcalls=$([ "$SMOKE" = 1 ] && echo 50 || echo 1000); hrounds=$([ "$SMOKE" = 1 ] && echo 3 || echo 21)
printf 'handles_calls %s\nhandles_rounds %s\n' "$hcalls" "$hrounds" >> "$out"
.tmp/bench/handles "$url/api/v1/crm/messenger/chat/create?contactId=597752" "$hcalls" "$hrounds" | rec ""

for v in 5.4 5.1 luajit; do
  make -s build LUA=$v >/dev/null
  mkdir -p ".tmp/bench/$v" && cp acquire.so ".tmp/bench/$v/"
  bin=$([ $v = luajit ] && echo luajit || echo "lua$v")
  LUA_CPATH="$root/.tmp/bench/$v/?.so;;" $bin bench/bench.lua acquire "$url" "$CALLS" | rec "b_${v}_"
done
make -s build LUA=5.4 >/dev/null
export LUA_CPATH="$root/.tmp/bench/5.4/?.so;;"
lua5.4 bench/bench.lua luasocket "$url" "$CALLS" | rec "c_"
lua5.1 bench/bench.lua luacurl "$url" "$CALLS" | rec "d_5.1_"
LUA_CPATH="$root/.tmp/bench/5.1/?.so;;" lua5.1 bench/bench.lua acquire "$url" "$CALLS" | rec "b51again_"
lua5.4 bench/bench.lua decode "$work/fixture.json" "$CALLS" | rec "dec_"
lua5.4 bench/bench.lua batch "http://127.0.0.1:$slow" "$SWEEP" "$COLD" | rec ""
bulk
pending_rows
haproxy_rows
if [ "$SMOKE" != 1 ]; then
  lua5.4 bench/bench.lua rss "$url" | rec ""
  lua5.4 bench/report.lua "$out" > BENCHMARKS.md
  lua5.4 bench/report.lua "$out" plot > "$work/batch.dat"
  gnuplot -e "datafile='$work/batch.dat'; outfile='bench/batch.png'" bench/batch.gp
  note "wrote BENCHMARKS.md and bench/batch.png"
else
  note "smoke run: no report"
fi
