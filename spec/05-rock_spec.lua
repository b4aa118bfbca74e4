-- The rock: `luarocks make` builds and installs lua-acquire into a private
-- tree, and a fresh lua5.4 loads it from there and creates a case against the
-- local server. Tagged #rock (busted --exclude-tags=rock skips it).
--
-- LuaRocks' builtin backend compiles in the source directory and leaves
-- acquire.so and the .o files there; run in the repository itself, it would
-- replace the acquire.so that `make` built (and that the other specs have
-- loaded). So the build runs in a copy of the repository root, minus .git and
-- build products.
local helper = require "spec.helper"

local ROOT = helper.repo_root
local sh, q = helper.sh, helper.shell_quote

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- A C file added to src/ and forgotten in the rockspec builds with make and fails only under
-- LuaRocks: the rockspec's sources are exactly lua_acquire.c and src/*.c.
describe("the rockspec", function()
  it("lists every C source of the module, and nothing else", function()
    local listed = {}
    for f in helper.read_file(ROOT .. "/lua-acquire-scm-1.rockspec"):gmatch('"([%w_/]+%.c)"') do
      listed[#listed + 1] = f
    end
    table.sort(listed)
    local present = { "lua_acquire.c" }
    for f in sh("cd " .. q(ROOT) .. " && ls src/*.c"):gmatch("%S+") do present[#present + 1] = f end
    table.sort(present)
    assert.same(present, listed)
  end)
end)

describe("the rock #rock", function()
  local srv, tmp, tree, build_out, build_code, so_path

  lazy_setup(function()
    srv = helper.start_server()
    tmp = helper.tmpdir()
    tree = tmp .. "/tree"
    local src = tmp .. "/src"
    local copy = ("mkdir -p %s && cd %s && tar --exclude=./.git --exclude='*.o' --exclude='*.so' "
      .. "--exclude=./luarocks-tree --exclude=./.tmp -cf - . | tar -xf - -C %s")
      :format(q(src), q(ROOT), q(src))
    local cout, ccode = sh(copy)
    assert.equal(0, ccode, cout)
    build_out, build_code = sh(("cd %s && luarocks make --lua-version=5.4 --deps-mode=none --tree=%s "
      .. "CURL_INCDIR=/usr/include/x86_64-linux-gnu lua-acquire-scm-1.rockspec")
      :format(q(src), q(tree)))
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

  it("builds and installs with luarocks make", function()
    assert.equal(0, build_code, build_out)
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
