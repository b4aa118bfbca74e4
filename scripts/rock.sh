#!/usr/bin/env bash
# make rock: lint the rockspec, pack a source rock from this checkout, install
# it into fresh trees for Lua 5.4 and 5.1 with lua-cjson declared as provided
# by the system (Debian's), and create a case through each install against
# the local Acquire server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl_inc=${CURL_INCDIR:-/usr/include/x86_64-linux-gnu}

luarocks lint lua-acquire-scm-1.rockspec
echo "rock: rockspec lint clean"

# The rockspec's source is the git repository; with no network, pack from
# this checkout instead: the same files, through a file:// source.
git archive --format=tar.gz --prefix=lua-acquire/ -o "$work/lua-acquire.tar.gz" HEAD
sed -e "s|^   url = .*|   url = \"file://$work/lua-acquire.tar.gz\",\n   dir = \"lua-acquire\",|" \
    lua-acquire-scm-1.rockspec > "$work/lua-acquire-scm-1.rockspec"
(cd "$work" && luarocks pack lua-acquire-scm-1.rockspec >/dev/null)
rock="$work/lua-acquire-scm-1.src.rock"
[ -s "$rock" ] || { echo "rock: luarocks pack made no source rock" >&2; exit 1; }
echo "rock: packed $(basename "$rock") ($(stat -c %s "$rock") bytes)"

for v in 5.4 5.1; do
    tree="$work/tree-$v"
    # lua-cjson comes from Debian; tell LuaRocks, which cannot see it.
    cat > "$work/config-$v.lua" <<CFG
rocks_provided = { ["lua-cjson"] = "2.1.0-1" }
CFG
    LUAROCKS_CONFIG="$work/config-$v.lua" luarocks --lua-version="$v" --tree="$tree" \
        install "$rock" CURL_INCDIR="$curl_inc" >"$work/install-$v.log" 2>&1 \
        || { cat "$work/install-$v.log" >&2; exit 1; }
    so="$tree/lib/lua/$v/acquire.so"
    [ -f "$so" ] && [ -x "$tree/bin/acquire-case" ] || { echo "rock: $v install incomplete" >&2; exit 1; }
    syms=$(nm -D --defined-only "$so" | awk '$2 ~ /^[TDBR]$/ {print $3}')
    [ "$syms" = luaopen_acquire ] || { echo "rock: $v exports: $syms" >&2; exit 1; }
    out=$(cd "$work" && LUA_CPATH="$tree/lib/lua/$v/?.so;;" PYTHON="${PYTHON:-python3}" \
        "$root/spec/server/with-server" "lua$v" -e '
        local acquire = require "acquire"
        if package.searchpath then assert(package.searchpath("acquire", package.cpath):find("tree%-"), "not the installed module") end
        local res = assert(acquire.create_case(597752, { title = "rock" }))
        print(acquire._VERSION, res.data.id, res.data.title)' 2>"$work/run-$v.log") || { cat "$work/run-$v.log" >&2; exit 1; }
    [ "$out" = "0.1.0	2071	rock" ] || { echo "rock: Lua $v: unexpected output: $out" >&2; exit 1; }
    echo "rock: Lua $v: installed from the source rock, created case 2071"
done
