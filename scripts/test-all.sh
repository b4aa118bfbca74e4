#!/usr/bin/env bash
# make test-all: `make test` on each Lua named, TEST_ALL_JOBS (default 2) passes
# at a time.
#
#   scripts/test-all.sh LUA...        e.g. scripts/test-all.sh 5.4 5.1 luajit 5.2 5.3
#
# acquire.so is built per Lua, so two passes cannot share a tree: the first Lua
# named runs here, each other one in its own copy of the tree,
# .tmp/test-all/LUA/ (the checkout without .git and .tmp, copied afresh each run;
# its own .tmp, with its builds and the runner's spec times, is kept). The
# packages are checked (and installed, if missing) for every Lua first, one
# Lua after the other. Each pass's output is printed whole as it ends, under
# "== Lua LUA", with its per-file summary lines (which .ci/run sums) and its
# total. Exit status 1 if any pass failed. Name the Lua with the longest pass
# (5.4: it alone runs the nginx specs) first. Environment: MAKE (default make),
# TEST_ALL_JOBS, and whatever make test reads (TEST_JOBS, BUSTED_ARGS...).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -gt 0 ] || { echo "usage: scripts/test-all.sh LUA..." >&2; exit 2; }
make=${MAKE:-make}
jobs_max=${TEST_ALL_JOBS:-2}
root=$PWD

# apt-get cannot run twice at once: every Lua's packages before any pass starts
for v in "$@"; do
  $make --no-print-directory deps LUA="$v" || { echo "test-all: make deps LUA=$v failed"; exit 1; }
done

out=$(mktemp -d)
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  for p in $(jobs -p); do kill -- "$p" 2>/dev/null; done
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

copy_tree() {   # $1: the copy's directory
  mkdir -p "$1"
  find "$1" -mindepth 1 -maxdepth 1 ! -name .tmp -exec rm -rf {} +
  tar -C "$root" --exclude=./.git --exclude=./.tmp -cf - . | tar -C "$1" -xf -
}

mkfifo "$out/done"
exec 3<> "$out/done"
declare -A pid_of=()
running=0 failed=""
reap() {
  local v rc
  read -r v <&3
  wait "${pid_of[$v]}" 2>/dev/null
  rc=$(cat "$out/$v.rc" 2>/dev/null || echo 1)
  echo "== Lua $v"
  cat "$out/$v.out"
  [ "$rc" = 0 ] || failed="$failed $v"
  running=$((running - 1))
}

first=$1
for v in "$@"; do
  while [ "$running" -ge "$jobs_max" ]; do reap; done
  dir=$root
  if [ "$v" != "$first" ]; then
    dir=$root/.tmp/test-all/$v
    copy_tree "$dir"
  fi
  echo "test-all: Lua $v started$([ "$dir" = "$root" ] || echo " in ${dir#"$root"/}")"
  ( cd "$dir" && $make --no-print-directory test LUA="$v" > "$out/$v.out" 2>&1 < /dev/null 3>&-
    echo $? > "$out/$v.rc"
    echo "$v" >&3 ) &
  pid_of[$v]=$!
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do reap; done

if [ -n "$failed" ]; then echo "test-all: failed on Lua$failed"; exit 1; fi
echo "test-all: passed on Lua $*"
exit 0
