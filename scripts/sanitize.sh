#!/bin/sh
# make sanitize: the spec suite run by the plain lua5.4 with the ASan+UBSan
# build of acquire.so, the sanitizer runtime preloaded.
#
#   scripts/sanitize.sh .tmp/asan/acquire.so [busted arguments...]
#
# SAN_CC names the compiler that built it (gcc: its libasan is preloaded).
# The rock and nginx specs are left out: the first installs a rock built
# without sanitizers into its own tree, the second runs the LuaJIT build
# inside nginx; neither loads this acquire.so.
set -eu

so=${1:?usage: scripts/sanitize.sh path/to/sanitized/acquire.so [busted args...]}
shift
cc=${SAN_CC:-gcc}
[ -f "$so" ] || { echo "sanitize: $so is missing" >&2; exit 1; }
dir=$(cd "$(dirname "$so")" && pwd -P)
root=$(pwd -P)
asan=$("$cc" -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "sanitize: $cc has no libasan.so" >&2; exit 1; }

# Leak detection is on in every lua5.4 process: busted itself, and the Lua
# children some specs start (those load ./acquire.so, uninstrumented, but
# their mallocs go through ASan, so a leak still shows). It is off in the
# other children (sh, mktemp, date, the python3 test server...), which are
# not ours and leak at exit by design. ASan reads the per-program options from
# the file include_if_exists names, %b being the program's name. Lua and
# libcurl leave nothing unreachable at exit, so no suppression list is needed.
printf 'detect_leaks=1\n' > "$dir/lua5.4.asan-options"

# LeakSanitizer scans no thread-local storage (use_tls=0): its tracer, which stops every thread at
# exit, reads the dynamic TLS blocks the __tls_get_addr interceptor recorded, and with Debian 12's
# glibc and gcc 12 one of them now and then holds a bogus range ("DTLS 3 at 0xc3-0x10000011c5"
# with LSAN_OPTIONS=log_threads=1), which it scans and crashes on ("Tracer caught signal 11 ...
# LeakSanitizer has encountered a fatal error"): whether it does moves with the process's memory
# layout, so a change anywhere could make a spec's child crash it in most runs (README.md's
# acquire.cqueues block did, 6 runs in 10). Without TLS as a root a leak is still found (fewer
# roots: more reports, never fewer); the loader's own records then show, and lsan.supp names them.
export LSAN_OPTIONS="use_tls=0:suppressions=$root/scripts/lsan.supp:print_suppressions=0"
export LD_PRELOAD="$asan"
export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=1:include_if_exists=$dir/%b.asan-options"
# The build has -fno-sanitize-recover: the first UBSan report ends the run.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export QUALITY_ASAN_SO="$dir/$(basename "$so")" QUALITY_ROOT="$root"

# Before any spec, busted's -e: acquire must be mapped from the sanitized
# build (busted's --cpath comes first; .busted's ./?.so is then not used), not
# ./acquire.so, with both sanitizer runtimes in the process. /proc/self/maps
# says what is loaded, not what the search path would find. The module stays
# loaded; package.loaded forgets it so the specs require it as usual.
check='
local so, root = os.getenv("QUALITY_ASAN_SO"), os.getenv("QUALITY_ROOT")
require "acquire"
local f = assert(io.open("/proc/self/maps"))
local maps = f:read("a")
f:close()
local function mapped(p) return maps:find(" " .. p .. "\n", 1, true) ~= nil end
assert(mapped(so), "sanitize: acquire was not loaded from " .. so .. " (cpath " .. package.cpath .. ")")
assert(not mapped(root .. "/acquire.so"), "sanitize: ./acquire.so is loaded, not the sanitized build")
assert(maps:find("/libasan.so", 1, true), "sanitize: no ASan runtime in the process")
assert(maps:find("/libubsan.so", 1, true), "sanitize: no UBSan runtime in the process")
package.loaded.acquire = nil
io.stderr:write("sanitize: the specs load ", so, " (ASan + UBSan, leak detection on)\n")
'

# Each spec file its own busted, SANITIZE_JOBS at a time (scripts/test.sh).
# LeakSanitizer's own tracer, which stops every thread at exit to look for leaks, crashed now and
# then ("Tracer caught signal 11 ... LeakSanitizer has encountered a fatal error": about one file
# in a run of 34, a different one each time) until use_tls=0 above took away what it crashed on:
# should it crash again, that is no leak report and no finding, so such a file runs again, twice at
# most (a leak it reports still fails it).
BUSTED="lua5.4 /usr/bin/busted --cpath=$dir/?.so" TEST_NAME=sanitize TEST_JOBS=${SANITIZE_JOBS:-2} \
  TEST_RETRY_IF="LeakSanitizer has encountered a fatal error" \
  TEST_SKIP="spec/29-docs_spec.lua" \
  exec ./scripts/test.sh -e "$check" --exclude-tags=rock,ngx,haproxy,nvim,once "$@"
