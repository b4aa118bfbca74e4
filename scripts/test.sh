#!/usr/bin/env bash
# The spec runner of make test, make check, make test-all, make memcheck and
# make sanitize: each spec file is its own busted process, TEST_JOBS of them
# at a time, the longest first.
#
#   scripts/test.sh [busted options...] [spec files or directories...]
#
# Arguments that name existing files or directories are the specs to run (by
# default every spec/*_spec.lua); every other argument goes to each busted
# (e.g. --exclude-tags=rock,once, or -t ngx). Environment:
#   BUSTED       the busted command (default: lua5.4 /usr/bin/busted); its words
#                are split on spaces, so `valgrind ... lua5.4 /usr/bin/busted` works
#   TEST_JOBS    files run at once (default 6: most specs wait on local servers)
#   TEST_LIMIT   seconds a file may take before it is killed (default 900)
#   TEST_NAME    what the total line calls this run (default: test)
#   TEST_RETRY_IF  a grep -E pattern: a file that fails with it in its output (a failure of
#                the tool running the specs, not of a spec) runs again, twice at most, and says so
#   PYTHON       the specs' servers' python3 (default /usr/bin/python3, Debian's: a shim
#                first on PATH, pyenv's, costs about 1 s of CPU per server started)
#
# As each file ends, its busted summary line is printed, followed by the file
# and its wall time:
#   12 successes / 0 failures / 0 errors / 0 pending : 3.1 seconds  spec/01-config_spec.lua (3.4 s)
# and, if it failed, its whole output, indented. A file that ends without a summary (a
# crash, a syntax error, the time limit) gets one with 1 error, so that a sum
# of the summary lines (.ci/run's) counts it. Last comes the total:
#   test: 689 successes / 0 failures / 0 errors / 3 pending in 20 files, 48 s wall
# and the exit status is 1 if any file failed, else 0.
#
# The order: each file's last wall time (.tmp/spec-times-*, kept per
# TEST_NAME and BUSTED interpreter), else SLOW's order below, else the largest file first.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

read -r -a busted_cmd <<< "${BUSTED:-lua5.4 /usr/bin/busted}"
jobs_max=${TEST_JOBS:-6}
limit=${TEST_LIMIT:-900}
name=${TEST_NAME:-test}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi
export PYTHON

# The slowest files, slowest first, as measured on a 2-core machine (a fresh
# clone has no .tmp/spec-times yet).
SLOW="18-install 05-rock 11-chaos 08-cli 07-ngx 22-journal 20-ngx_proxy 19-proxy 21-bulk 23-journal_lib 06-faults
13-reliability 26-memsafety 16-reconcile 14-chaos_ngx 35-chaos_haproxy 10-batch 04-client 17-readme 24-noproxy 15-server_cases 09-security"

args=() files=()
for a in "$@"; do
  if [ -d "$a" ]; then
    while IFS= read -r f; do files+=("$f"); done < <(find "$a" -name '*_spec.lua' | sort)
  elif [ -f "$a" ]; then
    files+=("$a")
  else
    args+=("$a")
  fi
done
if [ ${#files[@]} -eq 0 ]; then
  for f in spec/*_spec.lua; do
    # TEST_SKIP: files this run leaves out (make sanitize: the docs spec, which touches no C
    # memory and whose process LeakSanitizer's tracer crashes in at exit)
    case " ${TEST_SKIP:-} " in *" $f "*) continue ;; esac
    files+=("$f")
  done
fi

mkdir -p .tmp
interp=$(basename "${busted_cmd[0]}")
times=.tmp/spec-times-${name%% *}-$interp
[ -f "$times" ] || : > "$times"

# Order: recorded seconds, else a rank from SLOW (after every recorded file),
# else the size in bytes (after those).
order=$(for f in "${files[@]}"; do
  t=$(awk -v f="$f" '$2 == f { t = $1 } END { print t }' "$times")
  if [ -n "$t" ]; then echo "1 $t $f"; continue; fi
  rank=0 r=0
  for s in $SLOW; do r=$((r + 1)); case "$f" in *"/$s"_spec.lua) rank=$r;; esac; done
  if [ "$rank" -gt 0 ]; then echo "2 $((1000 - rank)) $f"; else echo "3 $(wc -c < "$f") $f"; fi
done | sort -k1,1n -k2,2gr | awk '{ print $3 }')

out=$(mktemp -d)
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  for p in $(jobs -p); do kill -- "$p" 2>/dev/null; done
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s.%N)
declare -A pid_file=() file_start=()
total_s=0 total_f=0 total_e=0 total_p=0 nfiles=0
failed=()

finish() {   # $1: a spec file whose process has ended
  local f=$1 key rc line wall s fl e p
  key=$(echo "$f" | tr '/' '_')
  rc=$(cat "$out/$key.rc" 2>/dev/null || echo 1)
  wall=$(awk -v a="${file_start[$f]}" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$out/$key.out" | grep -E '^[0-9]+ success(es)? / ' | tail -n 1)
  if [ -z "$line" ]; then
    why="no summary from busted, exit status $rc"
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && why="killed after TEST_LIMIT=$limit s"
    line="0 successes / 0 failures / 1 errors / 0 pending : 0 seconds ($why)"
    rc=${rc/#0/1}
  fi
  read -r s fl e p < <(echo "$line" | awk '{ print $1, $4, $7, $10 }')
  total_s=$((total_s + s)) total_f=$((total_f + fl)) total_e=$((total_e + e)) total_p=$((total_p + p))
  nfiles=$((nfiles + 1))
  echo "$line  $f (${wall} s)"
  [ -f "$out/$key.first" ] && echo "  ($f ran again: $(wc -l < "$out/$key.first") run(s) before ended with \"$(head -n 1 "$out/$key.first")\")"
  if [ "$rc" != 0 ]; then
    failed+=("$f")
    # indented: a sum of the summary lines (.ci/run's) counts the file once
    echo "---- $f failed (exit status $rc); its output:"
    sed 's/^/    /' "$out/$key.out"
    echo "---- end of $f"
  else
    # only a passing run's time orders the next run
    { grep -v " $f\$" "$times"; echo "$wall $f"; } > "$times.new" && mv "$times.new" "$times"
  fi
}

# Each file's process writes the file's name to a fifo as it ends: reading
# it waits for the next one to end.
mkfifo "$out/done"
exec 3<> "$out/done"
running=0
reap() {
  local f
  read -r f <&3
  wait "${pid_file[$f]}" 2>/dev/null
  unset "pid_file[$f]"
  running=$((running - 1))
  finish "$f"
}

echo "$name: ${#files[@]} spec files, $jobs_max at a time: ${busted_cmd[*]} ${args[*]}"
for f in $order; do
  while [ "$running" -ge "$jobs_max" ]; do reap; done
  key=$(echo "$f" | tr '/' '_')
  ( timeout -s KILL "$limit" "${busted_cmd[@]}" "${args[@]}" "$f" > "$out/$key.out" 2>&1 < /dev/null 3>&-
    rc=$?
    # a failure of the tool's own (TEST_RETRY_IF), not of the spec: the file once more
    tries=0
    while [ "$rc" != 0 ] && [ "$tries" -lt 2 ] && [ -n "${TEST_RETRY_IF:-}" ] &&
          grep -qE "$TEST_RETRY_IF" "$out/$key.out"; do
      grep -E -m1 "$TEST_RETRY_IF" "$out/$key.out" >> "$out/$key.first"
      timeout -s KILL "$limit" "${busted_cmd[@]}" "${args[@]}" "$f" > "$out/$key.out" 2>&1 < /dev/null 3>&-
      rc=$? tries=$((tries + 1))
    done
    echo $rc > "$out/$key.rc"
    echo "$f" >&3 ) &
  pid_file[$f]=$!
  file_start[$f]=$(date +%s.%N)
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do reap; done

wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
echo "$name: $total_s successes / $total_f failures / $total_e errors / $total_p pending in $nfiles files, $wall s wall"
if [ ${#failed[@]} -gt 0 ]; then
  echo "$name: FAILED: ${failed[*]}"
  exit 1
fi
exit 0
