#!/usr/bin/env bash
# make rock: both rockspecs (lua-acquire-scm-1, the development one, and
# lua-acquire-0.1.0-1, the release's) pass luarocks lint; each is packed into a
# source rock from this checkout's committed files; each source rock installs
# into fresh trees for Lua 5.4 and 5.1 with lua-cjson, argparse and luv declared
# as provided by the system (Debian's), exports only luaopen_acquire, installs acquire.ngx and
# acquire-case, and creates a case through each install against the local
# Acquire server.
#
# What it does not prove: that the v0.1.0 tag exists and holds these files.
# Both rockspecs' sources are the git repository (the release's at its tag);
# with no network, and before the tag is made, each is packed from
# `git archive HEAD` through a file:// source instead: the same build and the
# same files as the tag's, if the tag is this commit. Releasing is then
#   git tag v0.1.0 && git push origin v0.1.0
#   luarocks pack lua-acquire-0.1.0-1.rockspec && luarocks upload lua-acquire-0.1.0-1.rockspec
# README's Install commands (luarocks make, for 5.4 and for LuaJIT with nginx
# loading the result) are run as written by spec/05-rock_spec.lua (make test).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl_inc=${CURL_INCDIR:-/usr/include/$(gcc -print-multiarch)}
released=(lua-acquire-[0-9]*-1.rockspec)
[ ${#released[@]} -eq 1 ] || { echo "rock: expected one release rockspec, found: ${released[*]}" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)-1"$/\1/p' "${released[0]}")
rockspecs="lua-acquire-scm-1.rockspec lua-acquire-$version-1.rockspec"

for spec in $rockspecs; do
    luarocks lint "$spec"
done
echo "rock: luarocks lint clean: $rockspecs"

git archive --format=tar.gz --prefix=lua-acquire/ -o "$work/lua-acquire.tar.gz" HEAD
# lua-cjson, argparse and luv come from Debian (lua-cjson, lua-argparse, lua-luv);
# tell LuaRocks, which cannot see them.
echo 'rocks_provided = { ["lua-cjson"] = "2.1.0-1", argparse = "0.7.1-1", luv = "1.44.2-1" }' > "$work/config.lua"

for spec in $rockspecs; do
    name=${spec%.rockspec}            # lua-acquire-scm-1, lua-acquire-0.1.0-1
    rv=${name#lua-acquire-}           # scm-1, 0.1.0-1
    mkdir -p "$work/$rv"
    # The whole source table (url, and the release's tag) becomes the archive.
    sed -e "/^source = {/,/^}/c\\source = {\\n   url = \"file://$work/lua-acquire.tar.gz\",\\n   dir = \"lua-acquire\",\\n}" \
        "$spec" > "$work/$rv/$spec"
    (cd "$work/$rv" && luarocks pack "$spec" >/dev/null)
    rock="$work/$rv/$name.src.rock"
    [ -s "$rock" ] || { echo "rock: luarocks pack made no $name.src.rock" >&2; exit 1; }
    echo "rock: packed $name.src.rock ($(stat -c %s "$rock") bytes)"

    for v in 5.4 5.1; do
        tree="$work/tree-$rv-$v"
        LUAROCKS_CONFIG="$work/config.lua" luarocks --lua-version="$v" --tree="$tree" \
            install "$rock" CURL_INCDIR="$curl_inc" >"$work/install.log" 2>&1 \
            || { cat "$work/install.log" >&2; exit 1; }
        so="$tree/lib/lua/$v/acquire.so"
        for f in "$so" "$tree/share/lua/$v/acquire/ngx.lua" "$tree/bin/acquire-case" \
                 "$tree/lib/luarocks/rocks-$v/lua-acquire/$rv/$spec"; do
            [ -f "$f" ] || { echo "rock: $name on Lua $v: $f missing" >&2; exit 1; }
        done
        syms=$(nm -D --defined-only "$so" | awk '$2 ~ /^[TDBR]$/ {print $3}')
        [ "$syms" = luaopen_acquire ] || { echo "rock: $name on Lua $v exports: $syms" >&2; exit 1; }
        out=$(cd "$work" && LUA_CPATH="$tree/lib/lua/$v/?.so;;" PYTHON="${PYTHON:-python3}" \
            "$root/spec/server/with-server" "lua$v" -e '
            local acquire = require "acquire"
            if package.searchpath then assert(package.searchpath("acquire", package.cpath):find("tree%-"), "not the installed module") end
            local res = assert(acquire.create_case(597752, { title = "rock" }))
            print(acquire._VERSION, res.data.id, res.data.title)' 2>"$work/run.log") \
            || { cat "$work/run.log" >&2; exit 1; }
        [ "$out" = "$version	2071	rock" ] || { echo "rock: $name on Lua $v: unexpected output: $out" >&2; exit 1; }
        echo "rock: $name on Lua $v: installed from the source rock, created case 2071"
    done
done
