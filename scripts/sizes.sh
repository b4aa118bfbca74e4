#!/bin/sh
# make check-sizes: the sizes a reader can hold (issue 18): no C function over 100 lines, no
# file in src/, lua/ or bin/ over 600, bin/acquire-case at most 150, acquire.ngx at most 400.
cd "$(dirname "$0")/.." || exit 1
fail=0
for f in lua_acquire.c src/*.c; do
  awk -v f="$f" '
    /^[A-Za-z].*\) *\{$/ { name = $0; start = NR; next }
    /^\}/ && start { n = NR - start + 1; if (n > 100) { printf "%s:%d: %d lines: %s\n", f, start, n, name; bad = 1 } start = 0 }
    END { exit bad }' "$f" || fail=1
done
for f in src/*.c src/*.h lua/acquire/*.lua lua/acquire/cli/*.lua bin/acquire-case; do
  n=$(wc -l < "$f")
  max=600
  case "$f" in bin/acquire-case) max=150 ;; lua/acquire/ngx.lua) max=400 ;; esac
  if [ "$n" -gt "$max" ]; then echo "$f: $n lines (at most $max)"; fail=1; fi
done
[ "$fail" = 0 ] && echo "check-sizes: C functions <= 100 lines, files <= 600, bin/acquire-case <= 150, ngx.lua <= 400: ok"
exit "$fail"
