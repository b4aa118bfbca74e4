-- The rock. README.md's Install blocks run exactly as written, each in a copy of the
-- repository (minus .git and build products) and into a private tree:
--   install-lua54:  `luarocks --lua-version=5.4 make ...`; a fresh lua5.4 loads acquire from
--                   that tree and creates a case against the local server;
--   install-luajit: `luarocks --lua-version=5.1 make ... LUA_INCDIR=/usr/include/luajit-2.1`;
--                   a real nginx whose lua_package_path/cpath name only that tree (and ;;)
--                   loads acquire and acquire.ngx from it and creates a case through acquire.ngx.
-- Both blocks into one tree leave 5.4's acquire-case the one in its bin/ (the nginx rock,
-- lua-acquire-ngx, installs no command). And every rockspec lists every C source; scm-1 and
-- the release's 0.1.0-1 build alike.
-- The #rock specs (busted --exclude-tags=rock skips them) run in make test-all's 5.4 pass.
--
-- LuaRocks' builtin backend compiles in the source directory and leaves acquire.so and the .o
-- files there; run in the repository itself, it would replace the acquire.so that `make` built
-- (and that the other specs have loaded): hence the copies.
local helper = require "spec.helper"

local ROOT = helper.repo_root
local sh, q = helper.sh, helper.shell_quote
local VERSION = "0.1.0"
local ROCKSPECS = { "lua-acquire-scm-1.rockspec", "lua-acquire-" .. VERSION .. "-1.rockspec" }
local NGX_ROCKSPEC = "lua-acquire-ngx-scm-1.rockspec"      -- the nginx rock: no acquire-case

local exists = helper.exists

-- A rockspec's variables (it is a Lua chunk of assignments), on any Lua.
local function load_rockspec(name)
  local env, text = {}, helper.read_file(ROOT .. "/" .. name)
  local chunk
  if rawget(_G, "setfenv") then
    chunk = assert(rawget(_G, "loadstring")(text, "@" .. name))
    rawget(_G, "setfenv")(chunk, env)
  else
    chunk = assert(load(text, "@" .. name, "t", env))
  end
  chunk()
  return env
end

-- The shell commands of README.md's block `name`: the ```sh fence right after the line
-- <!-- block: name -->.
local function readme_block(name)
  local readme = helper.read_file(ROOT .. "/README.md")
  local at = readme:find("\n<!%-%- block: " .. name:gsub("%-", "%%-") .. " %-%->\n")
  assert(at, "README.md has no <!-- block: " .. name .. " -->")
  local body = readme:match("^\n<!%-%- block: [%w-]+ %-%->\n```sh\n(.-\n)```\n", at)
  assert(body, "README.md's block " .. name .. " is not followed by a ```sh fence")
  return body
end

-- A copy of the repository in dir.
local function copy_repo(dir)
  local out, code = sh(("mkdir -p %s && cd %s && tar --exclude=./.git --exclude='*.o' --exclude='*.so' "
    .. "--exclude=./luarocks-tree --exclude=./.tmp -cf - . | tar -xf - -C %s"):format(q(dir), q(ROOT), q(dir)))
  assert(code == 0, out)
end

-- Runs README's block `name` with sh -ex in a copy of the repository under tmp, as a reader
-- would, but for two things: apt-get is a stand-in that only checks that the packages it is
-- given are installed (make deps installed them; no root needed, nothing installed), and
-- LuaRocks' configuration (LUAROCKS_CONFIG, HOME) names one tree, `tree`, instead of
-- Debian's /usr/local: the block's luarocks command is unchanged, only where it installs.
-- -> output, exit status, the block
local function run_block(tmp, name, tree)
  local dir, shims, home = tmp .. "/src-" .. name, tmp .. "/shims", tmp .. "/home"
  copy_repo(dir)
  sh(("mkdir -p %s %s"):format(q(shims), q(home)))
  helper.write_file(shims .. "/apt-get", [[#!/bin/sh
# spec/05's apt-get: the block's packages must be installed already; nothing is installed.
[ "$1" = install ] || { echo "apt-get stand-in: only install, got: $*" >&2; exit 1; }
shift
for p in "$@"; do
  case $p in -*) continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || { echo "apt-get stand-in: $p is not installed" >&2; exit 1; }
done
echo "apt-get stand-in: installed: $*"
]])
  sh("chmod 755 " .. q(shims .. "/apt-get"))
  local config = helper.write_file(tmp .. "/luarocks-" .. name .. ".lua",
    ("rocks_trees = { { name = \"spec\", root = %q } }\n"):format(tree))
  local block = readme_block(name)
  local script = helper.write_file(tmp .. "/" .. name .. ".sh", block)
  local r = helper.run({ "env", "PATH=" .. shims .. ":" .. os.getenv("PATH"), "LUAROCKS_CONFIG=" .. config,
    "HOME=" .. home, "sh", "-ex", script }, { dir = dir, merge = true, limit = 300 })
  return r.out, r.code, block
end

-- A C file added to src/ and forgotten in a rockspec builds with make and fails only under
-- LuaRocks: the rockspecs' sources are exactly lua_acquire.c and src/*.c.
describe("the rockspecs", function()
  local present = { "lua_acquire.c" }
  for f in sh("cd " .. q(ROOT) .. " && ls src/*.c"):gmatch("%S+") do present[#present + 1] = f end
  table.sort(present)

  for _, name in ipairs { ROCKSPECS[1], ROCKSPECS[2], NGX_ROCKSPEC } do
    it(name .. " lists every C source of the module, and nothing else", function()
      local listed = {}
      for f in helper.read_file(ROOT .. "/" .. name):gmatch('"([%w_/]+%.c)"') do listed[#listed + 1] = f end
      table.sort(listed)
      assert.same(present, listed)
    end)
  end

  it("build alike: the release's differs from scm-1 only in its version and source", function()
    local scm, rel = load_rockspec(ROCKSPECS[1]), load_rockspec(ROCKSPECS[2])
    assert.equal("scm-1", scm.version)
    assert.equal(VERSION .. "-1", rel.version)
    assert.same({ url = scm.source.url, tag = "v" .. VERSION }, rel.source)
    for k, v in pairs(scm) do
      if k ~= "version" and k ~= "source" then assert.same(v, rel[k], k) end
    end
    for k in pairs(rel) do assert.is_not_nil(scm[k], k) end
  end)

  it("the release's version is the module's, the changelog's and the license's", function()
    assert.equal(VERSION, require("acquire")._VERSION)
    assert.is_truthy(helper.read_file(ROOT .. "/CHANGELOG.md"):find("\n## " .. VERSION:gsub("%.", "%%.") .. " "))
    assert.equal("MIT", load_rockspec(ROCKSPECS[2]).description.license)
    assert.is_truthy(helper.read_file(ROOT .. "/LICENSE"):find("^MIT License\n"))
  end)
end)

describe("the rock, README's install-lua54 #rock", function()
  local srv, tmp, tree, build_out, build_code, block, so_path

  lazy_setup(function()
    srv = helper.start_server()
    tmp = helper.tmpdir()
    tree = tmp .. "/tree"
    build_out, build_code, block = run_block(tmp, "install-lua54", tree)
    so_path = tree .. "/lib/lua/5.4/acquire.so"
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    helper.rmrf(tmp)
  end)

  -- Runs Lua code in a fresh lua5.4 whose package.cpath starts with the
  -- tree's, from a directory where ./?.so finds nothing; env: name -> value.
  local function child(code, env)
    local script = helper.write_file(tmp .. "/child.lua", ("package.cpath = %q .. package.cpath\n%s")
      :format(tree .. "/lib/lua/5.4/?.so;", code))
    local r = helper.run({ "lua5.4", script }, { dir = tmp, env = env, merge = true })
    return r.out, r.code
  end

  it("builds and installs with README's commands", function()
    assert.equal(0, build_code, block .. build_out)
    assert.is_truthy(block:find("luarocks --lua-version=5.4 make --deps-mode=none ", 1, true), block)
    assert.is_truthy(build_out:find("lua-acquire scm-1 is now installed in " .. tree, 1, true), build_out)
    assert.is_true(exists(so_path), so_path .. " missing")
    assert.is_true(exists(tree .. "/lib/luarocks/rocks-5.4/lua-acquire/scm-1/lua-acquire-scm-1.rockspec"))
  end)

  it("is found in the tree by a fresh lua5.4 and has _VERSION 0.1.0", function()
    local out, code = child([[
      local acquire = require "acquire"
      io.write(acquire._VERSION, "\n", package.searchpath("acquire", package.cpath), "\n")
    ]])
    assert.equal(0, code, out)
    assert.equal("0.1.0\n" .. so_path .. "\n", out)
  end)

  it("creates a case against the local server", function()
    srv:reset()
    local out, code = child([[
      local acquire = require "acquire"
      local c = acquire.new{ base_url = os.getenv("ACQUIRE_BASE_URL"), api_key = os.getenv("ACQUIRE_API_KEY") }
      local res, err = c:create_case(597752, { title = "from the rock", message = "hello" })
      c:close()
      if not res then io.write("ERR ", tostring(err), "\n") os.exit(1) end
      io.write(res.data.id, " ", res.data.title, " ", res.data.description, "\n")
    ]], { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key })
    assert.equal(0, code, out)
    assert.equal("2071 from the rock hello\n", out)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.equal('{"title":"from the rock","message":{"type":"message","message":"hello","translateLangKey":""}}',
      reqs[1].body)
    assert.equal("Bearer " .. srv.key, reqs[1].headers["authorization"])
    assert.equal("597752", reqs[1].query.contactId)
  end)

  it("creates a case through acquire.create_case configured from the environment", function()
    srv:reset()
    local out, code = child([[
      local acquire = require "acquire"
      local res, err = acquire.create_case("597752", { title = "env" })
      if not res then io.write("ERR ", tostring(err), "\n") os.exit(1) end
      io.write(res.data.id, " ", res.data.title, "\n")
    ]], { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key })
    assert.equal(0, code, out)
    assert.equal("2071 env\n", out)
    assert.equal(1, srv:stats().requests)
  end)
end)

describe("the rock for nginx, README's install-luajit #rock", function()
  local nginx = require "spec.nginx"
  local cjson = require "cjson"
  local srv, tmp, tree, build_out, build_code, block, n

  lazy_setup(function()
    srv = helper.start_server()
    tmp = helper.tmpdir()
    tree = tmp .. "/tree"
    build_out, build_code, block = run_block(tmp, "install-luajit", tree)
  end)

  lazy_teardown(function()
    nginx.stop(n)
    if srv then srv:stop() end
    helper.rmrf(tmp)
  end)

  it("builds against LuaJIT's headers into the 5.1 tree", function()
    assert.equal(0, build_code, block .. build_out)
    assert.is_truthy(block:find("LUA_INCDIR=/usr/include/luajit-2.1 ", 1, true), block)
    assert.is_truthy(build_out:find("-I/usr/include/luajit-2.1", 1, true), build_out)
    assert.is_true(exists(tree .. "/lib/lua/5.1/acquire.so"))
    assert.is_true(exists(tree .. "/share/lua/5.1/acquire/ngx.lua"))
    assert.is_true(exists(tree .. "/share/lua/5.1/acquire/journal.lua"))
    assert.is_truthy(build_out:find("lua-acquire-ngx scm-1 is now installed in " .. tree, 1, true), build_out)
    assert.is_false(exists(tree .. "/bin/acquire-case"), "the nginx rock installs no acquire-case")
  end)

  it("differs from the rock of lua-acquire-scm-1 only in its name, description, dependencies and command", function()
    local scm, ngx = load_rockspec(ROCKSPECS[1]), load_rockspec(NGX_ROCKSPEC)
    assert.equal("lua-acquire-ngx", ngx.package)
    assert.same({ "lua >= 5.1", "lua-cjson" }, ngx.dependencies)
    local modules = {}                  -- the command's parts (acquire.cli.*) go with the command
    for name, m in pairs(scm.build.modules) do
      if not name:find("^acquire%.cli%.") then modules[name] = m end
    end
    assert.same(modules, ngx.build.modules)
    assert.is_nil(ngx.build.modules["acquire.cli.run"])
    assert.same(scm.source, ngx.source)
    assert.equal(scm.version, ngx.version)
    assert.is_nil(ngx.build.install)
  end)

  -- nginx's Lua paths: the tree's, then LuaJIT's defaults (;;), as README says; nothing of the
  -- checkout's.
  it("is loaded by a real nginx, which creates a case through acquire.ngx", function()
    assert.equal(0, build_code, build_out)
    n = nginx.start(function(ng)
      return nginx.config(ng, {
        lua_path = tree .. "/share/lua/5.1/?.lua;;", lua_cpath = tree .. "/lib/lua/5.1/?.so;;",
        http = ([[
  server {
    listen 127.0.0.1:%d;
    location = /version { content_by_lua_block {
      local acquire = require "acquire"
      require "acquire.ngx"
      ngx.say(acquire._VERSION, " ", package.searchpath("acquire", package.cpath), " ",
              package.searchpath("acquire.ngx", package.path))
    } }
    location = /case { content_by_lua_block {
      local client = require("acquire.ngx").new{ base_url = "%s", api_key = os.getenv("ACQUIRE_API_KEY") }
      local res, err = client:create_case(597752, { title = "from nginx" })
      if not res then ngx.say("ERR ", tostring(err)) return end
      ngx.say(res.data.id, " ", res.data.title)
    } }
  }]]):format(ng.port, srv.base_url) })
    end, { env = "ACQUIRE_API_KEY=" .. srv.key })

    local code, out = n:post("/version", "")
    assert.equal(200, code, out .. n:log())
    assert.equal(("%s %s/lib/lua/5.1/acquire.so %s/share/lua/5.1/acquire/ngx.lua\n"):format(VERSION, tree, tree), out)

    srv:reset()
    code, out = n:post("/case", "")
    assert.equal(200, code, out .. n:log())
    assert.equal("2071 from nginx\n", out)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.equal("Bearer " .. srv.key, reqs[1].headers["authorization"])
    assert.equal(cjson.encode({ title = "from nginx" }), reqs[1].body)
  end)
end)

describe("both rocks in one tree, README's install-lua54 then install-luajit #rock", function()
  local srv, tmp, tree, out54, code54, outjit, codejit

  lazy_setup(function()
    srv = helper.start_server()
    tmp = helper.tmpdir()
    tree = tmp .. "/tree"
    out54, code54 = run_block(tmp, "install-lua54", tree)
    outjit, codejit = run_block(tmp, "install-luajit", tree)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    helper.rmrf(tmp)
  end)

  it("leave each Lua its module, and 5.4's acquire-case working", function()
    assert.equal(0, code54, out54)
    assert.equal(0, codejit, outjit)
    assert.is_true(exists(tree .. "/lib/lua/5.4/acquire.so"))
    assert.is_true(exists(tree .. "/lib/lua/5.1/acquire.so"))
    local cmd = helper.read_file(tree .. "/bin/acquire-case")
    assert.is_truthy(cmd:find("lua5.4", 1, true), cmd)
    assert.is_nil(cmd:find("lua5.1", 1, true), cmd)
    srv:reset()
    local r = helper.run({ tree .. "/bin/acquire-case", "597752", "--title", "both rocks" },
      { dir = tmp, env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key }, merge = true })
    assert.equal(0, r.code, r.out)
    assert.is_truthy(r.out:find('"id":2071', 1, true), r.out)
    assert.equal('{"title":"both rocks"}', srv:last_request().body)
  end)
end)
