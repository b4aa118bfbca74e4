-- make install: for each Lua (LUA=5.1, 5.2, 5.3, 5.4, luajit), `make install PREFIX=<tmp>`
-- puts acquire.so in lib/lua/<abi>/, acquire/ngx.lua in share/lua/<abi>/, and an acquire-case
-- whose shebang is that Lua's interpreter; run from a directory outside the clone, with no
-- LUA_PATH or LUA_CPATH (env -i), that acquire-case finds the installed module and creates a
-- case against the local Acquire server.
--
-- make install builds acquire.so for the LUA it is given, in the directory it runs in: here
-- that is a copy of the repository, so ./acquire.so (built for the Lua running the specs,
-- and loaded by them) is never replaced. The running interpreter's Lua must install; another
-- Lua whose interpreter or headers are missing is pending (make test LUA=5.1 installs them).
-- Tagged #rock: it does not depend on the Lua running busted, so make test-all runs it once,
-- in the 5.4 pass (with the rock and nginx specs).
local helper = require "spec.helper"
local cjson = require "cjson"

local ROOT = helper.repo_root
local sh, q = helper.sh, helper.shell_quote

local LUAS = {
  { lua = "5.4", bin = "lua5.4", abi = "5.4", header = "/usr/include/lua5.4/lua.h" },
  { lua = "5.1", bin = "lua5.1", abi = "5.1", header = "/usr/include/lua5.1/lua.h" },
  { lua = "5.2", bin = "lua5.2", abi = "5.2", header = "/usr/include/lua5.2/lua.h" },
  { lua = "5.3", bin = "lua5.3", abi = "5.3", header = "/usr/include/lua5.3/lua.h" },
  { lua = "luajit", bin = "luajit", abi = "5.1", header = "/usr/include/luajit-2.1/lua.h" },
}
local RUNNING = rawget(_G, "jit") and "luajit" or _VERSION:match("%d+%.%d+")

-- The environment the installed script runs in: nothing but PATH and the server's address
-- and key (no LUA_PATH, LUA_CPATH, LUA_INIT, HOME).
local PATH = "PATH=/usr/local/bin:/usr/bin:/bin"

local exists = helper.exists

local function lines(path)
  local t = {}
  for l in helper.read_file(path):gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

-- make in the copy, with nothing of the outer make's (make test sets LUA_BIN for busted:
-- left in the environment, it would win over LUA's interpreter).
local function make(dir, args)
  return sh(("cd %s && env -u LUA_BIN -u LUA_INTERP -u LUA_CFLAGS -u LUA_INCDIR -u MAKEFLAGS "
    .. "-u MAKELEVEL -u MFLAGS -u PREFIX -u DESTDIR make -s install %s"):format(q(dir), args))
end

describe("make install #rock", function()
  local srv, tmp, src, outside

  lazy_setup(function()
    srv = helper.start_server()
    tmp = helper.tmpdir()
    src, outside = tmp .. "/src", tmp .. "/elsewhere"
    local out, code = sh(("mkdir -p %s %s && cd %s && tar --exclude=./.git --exclude='*.o' "
      .. "--exclude='*.so' --exclude=./luarocks-tree --exclude=./.tmp -cf - . | tar -xf - -C %s")
      :format(q(src), q(outside), q(ROOT), q(src)))
    assert.equal(0, code, out)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    helper.rmrf(tmp)
  end)

  for _, l in ipairs(LUAS) do
    local interp = sh("command -v " .. l.bin):match("^(/%S+)")
    local ready = interp and exists(l.header)
    if not ready and l.lua ~= RUNNING then
      pending(("LUA=%s: no %s or no %s (make deps LUA=%s installs them)")
        :format(l.lua, l.bin, l.header, l.lua))
    else
      it(("LUA=%s: installs for %s; the installed acquire-case creates a case"):format(l.lua, l.bin),
        function()
        assert.is_truthy(ready, "no " .. l.bin .. " or no " .. l.header)
        local prefix = tmp .. "/prefix-" .. l.lua
        local out, code = make(src, ("PREFIX=%s LUA=%s"):format(q(prefix), l.lua))
        assert.equal(0, code, out)

        local so = prefix .. "/lib/lua/" .. l.abi .. "/acquire.so"
        local ngx = prefix .. "/share/lua/" .. l.abi .. "/acquire/ngx.lua"
        local cli = prefix .. "/bin/acquire-case"
        assert.is_true(exists(so), so .. " missing")
        assert.equal(helper.read_file(ROOT .. "/lua/acquire/ngx.lua"), helper.read_file(ngx))
        local script = lines(cli)
        assert.equal("#!" .. interp, script[1])
        assert.equal(lines(ROOT .. "/bin/acquire-case")[2], script[3])   -- the rest is bin/'s

        -- The interpreter of the shebang, with the script's second line, finds the
        -- installed module first, loads it and reads its version.
        local r = helper.run({ "env", "-i", PATH, interp, "-e", script[2] .. [[
          for t in package.cpath:gmatch("[^;]+") do
            local f = io.open((t:gsub("%?", "acquire")))
            if f then f:close() io.write(t, "\n") break end
          end
          io.write(require("acquire")._VERSION, "\n")]] }, { dir = outside })
        assert.equal(0, r.code, r.out .. r.err)
        assert.equal(prefix .. "/lib/lua/" .. l.abi .. "/?.so\n0.1.0\n", r.out)

        srv:reset()
        r = helper.run({ "env", "-i", PATH, "ACQUIRE_BASE_URL=" .. srv.base_url,
          "ACQUIRE_API_KEY=" .. srv.key, cli, "597752", "--title", "installed " .. l.lua },
          { dir = outside })
        assert.equal(0, r.code, r.out .. r.err)
        local case = cjson.decode(r.out)
        case = case.data or case
        assert.equal(2071, case.id)
        assert.equal("installed " .. l.lua, case.title)
        local reqs = srv:requests()
        assert.equal(1, #reqs)
        assert.equal("Bearer " .. srv.key, reqs[1].headers["authorization"])
        assert.equal("597752", reqs[1].query.contactId)
      end)
    end
  end

  it("DESTDIR stages the install; the script names PREFIX's paths, not DESTDIR's", function()
    local stage = tmp .. "/stage"
    local lua = RUNNING
    local abi = (lua == "luajit") and "5.1" or lua
    local out, code = make(src, ("DESTDIR=%s PREFIX=/opt/lua-acquire LUA=%s"):format(q(stage), lua))
    assert.equal(0, code, out)
    local base = stage .. "/opt/lua-acquire"
    assert.is_true(exists(base .. "/lib/lua/" .. abi .. "/acquire.so"))
    assert.is_true(exists(base .. "/share/lua/" .. abi .. "/acquire/ngx.lua"))
    local second = lines(base .. "/bin/acquire-case")[2]
    assert.is_truthy(second:find("[==[/opt/lua-acquire/lib/lua/" .. abi .. "/?.so;]==]", 1, true), second)
    assert.is_truthy(second:find("[==[/opt/lua-acquire/share/lua/" .. abi .. "/?.lua;", 1, true), second)
    assert.is_falsy(second:find(stage, 1, true), second)
  end)
end)
