-- The README cannot drift: every ```lua block of README.md and of doc/*.md runs, and every
-- ```sh block of README.md is run here or accounted for. Lua 5.1-5.4 and LuaJIT.
--
-- How a ```lua block runs (README, "The examples run"):
--   * alone, in a fresh child interpreter (this one, with ./acquire.so and ./lua/), against the
--     local Acquire server, with ACQUIRE_BASE_URL and ACQUIRE_API_KEY set to its URL and key;
--   * after a prelude (LUA_INIT, so the block's line numbers are its own) that makes the globals
--       acquire = require "acquire"
--       client  = acquire.new{ account_id = "mycompany", api_key = os.getenv("ACQUIRE_API_KEY") }
--     and wraps the functions that take a config (new, configure, config, build_request,
--     build_list_request) with one rule: account_id "mycompany" (the README's placeholder
--     account) becomes base_url = the local server, when no base_url is given; the placeholder
--     key "…" becomes the local key. Any other account_id or key goes through untouched, so a
--     block that shows a misuse still raises as documented;
--   * it must exit 0, and each line `print(...) --> x` must print x from that line, every time
--     it prints (at least once). print separates its values with a tab; the comment writes a
--     tab as two or more spaces. A `-->` on a line without print cannot be checked: the block
--     must then be marked.
-- A block not meant to run has `*Not run: why.*` (an italic line a reader sees) on the line
-- just before its fence (the reason is required). Fences without a language are output and synopses: never run.
--
-- ```sh blocks of README.md: each command line (comments and blank lines aside) must be in
-- SH_COMMANDS below, which says what runs it: this spec (the block's commands that are this
-- spec's then run here, in order, with the prelude above through LUA_INIT, `acquire-case` and
-- `lua5.4` (the Lua under test) on PATH, ACQUIRE_BASE_URL and ACQUIRE_API_KEY set to the local
-- server, and `127.0.0.1:PORT` replaced by its address), a make target (which must exist), or
-- another spec file (pending while that file is not in the tree). A command that calls
-- acquire-case is always run here.
local helper = require "spec.helper"
local contains = helper.contains

local ROOT = helper.repo_root

-- ---- the blocks -----------------------------------------------------------------------------

-- -> { { file, line (of the opening fence), lang, text, skip = reason | nil, marked = bool } }
local function blocks_of(path)
  local list, open, prev = {}, nil, nil
  local n = 0
  for line in (helper.read_file(path) .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if open then
      if line:match("^" .. open.fence .. "`*%s*$") then
        open.text = table.concat(open.lines, "\n") .. "\n"
        list[#list + 1] = open
        open = nil
      else
        open.lines[#open.lines + 1] = line
      end
    else
      local fence, info = line:match("^(```+)%s*(.-)%s*$")
      if fence then
        local marked = prev and prev:match("^%s*%*Not run") ~= nil
        open = { file = path:sub(#ROOT + 2), line = n, fence = fence, lang = info:match("^(%S*)"),
                 lines = {}, marked = marked,
                 skip = prev and prev:match("^%s*%*Not run[^:]*:%s*(.-%S)%s*%*%s*$") }
      end
    end
    prev = line
  end
  assert(not open, path .. ": a fence opened at line " .. (open and open.line or 0) .. " never closes")
  return list
end

local function docs()
  local files = { ROOT .. "/README.md" }
  local p = io.popen("ls " .. helper.shell_quote(ROOT) .. "/doc/*.md 2>/dev/null")
  for f in p:lines() do files[#files + 1] = f end
  p:close()
  return files
end

local SH = { sh = true, bash = true, shell = true, console = true }
local KNOWN = { lua = true, sh = true, bash = true, shell = true, console = true, json = true,
                [""] = true, text = true, nginx = true, ini = true, yaml = true, diff = true }

-- ---- the prelude ----------------------------------------------------------------------------

local PRELUDE = [==[
-- spec/17-readme_spec.lua's prelude for README blocks (LUA_INIT)
local acquire = require "acquire"
local base_url, key = os.getenv("README_BASE_URL"), os.getenv("README_API_KEY")
local function map(config)
  if type(config) ~= "table" then return config end
  local c = {}
  for k, v in pairs(config) do c[k] = v end
  if c.account_id == "mycompany" and c.base_url == nil then c.account_id, c.base_url = nil, base_url end
  if c.api_key == "\226\128\166" then c.api_key = key end             -- "…"
  return c
end
for _, name in ipairs({ "new", "configure", "config" }) do
  local f = acquire[name]
  acquire[name] = function(config, ...) local r = { f(map(config), ...) } return unpack(r) end
end
for _, name in ipairs({ "build_request", "build_list_request" }) do
  local f = acquire[name]
  acquire[name] = function(a, b, config, ...) local r = { f(a, b, map(config), ...) } return unpack(r) end
end
local prints = os.getenv("README_PRINTS")
if prints then
  local out = assert(io.open(prints, "w"))
  local real = print
  local concat, select, tostring = table.concat, select, tostring
  print = function(...)
    local info = debug.getinfo(2, "Sl")
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    local s = concat(parts, "\t")
    local script = rawget(_G, "arg")         -- the global: 5.1 gives a chunk a local `arg` of its own
    if info and script and script[0] and info.source == "@" .. script[0] then
      out:write(info.currentline, " ", #s, "\n", s, "\n")
      out:flush()
    end
    return real(...)
  end
end
_G.acquire = acquire
_G.client = acquire.new{ account_id = "mycompany", api_key = os.getenv("ACQUIRE_API_KEY") }
]==]
PRELUDE = "local unpack = table.unpack or unpack\n" .. PRELUDE

-- print records: { [line] = { text, ... } }
local function read_prints(path)
  local s, at, got = helper.slurp(path), 1, {}
  while at <= #s do
    local line, len, nl = s:match("^(%d+) (%d+)\n()", at)
    if not line then break end
    line, len = tonumber(line), tonumber(len)
    got[line] = got[line] or {}
    table.insert(got[line], s:sub(nl, nl + len - 1))
    at = nl + len + 1
  end
  return got
end

-- "2071\tactive" and "2071   active" read alike: a tab, or a run of 2+ spaces, is one separator
local function norm(s)
  return (s:gsub("\t", "  "):gsub("  +", "  "))
end

-- The expectations of a block: { { line (in the block), code, want } }
local function expectations(b)
  local list = {}
  for i, l in ipairs(b.lines) do
    local code, want = l:match("^(.-)%s*%-%->%s?(.-)%s*$")
    if code then list[#list + 1] = { line = i, code = code, want = want } end
  end
  return list
end

local function where(b, i) return ("%s:%d"):format(b.file, b.line + (i or 0)) end

-- ---- the sh commands, and what runs them -------------------------------------------------------

local SPEC17 = "spec/17-readme_spec.lua"
local SH_COMMANDS = {
  -- Quick start: make server runs until Ctrl-C (the reader's); the rest runs here, with
  -- 127.0.0.1:PORT the local server's address and lua5.4 the Lua under test
  ["make server"] = { make = "server" },
  -- the two commands: CI runs them (.ci/run: make demo; make test-all is make test on every Lua)
  ["make demo"] = { make = "demo", note = ".ci/run runs make demo" },
  ["make test"] = { make = "test", note = ".ci/run runs make test on every Lua (make test-all)" },
  ["export ACQUIRE_BASE_URL=http://127.0.0.1:PORT ACQUIRE_API_KEY=test-key"] = { spec = SPEC17 },
  ["make build"] = { make = "build", note = "this suite runs on the module make test built" },
  ["LUA_CPATH=\"$PWD/?.so;;\" lua5.4 examples/quickstart.lua"] = { spec = SPEC17 },
  -- Install: spec/05 runs each luarocks block as written (apt-get by a stand-in that checks the
  -- packages are installed), alone and both into one tree; spec/18 runs make install for every Lua
  ["apt-get install gcc libc6-dev libcurl4-openssl-dev lua5.4 liblua5.4-dev lua-cjson lua-argparse luarocks"] =
    { spec = "spec/05-rock_spec.lua", make = "deps", note = "spec/05 checks every package is installed" },
  ["luarocks --lua-version=5.4 make --deps-mode=none CURL_INCDIR=/usr/include/$(gcc -print-multiarch) lua-acquire-scm-1.rockspec"] =
    { spec = "spec/05-rock_spec.lua", note = "spec/05 runs the block as written, into a private tree" },
  ["apt-get install gcc libc6-dev libcurl4-openssl-dev libluajit2-5.1-dev lua-cjson luarocks"] =
    { spec = "spec/05-rock_spec.lua", make = "deps", note = "spec/05 checks every package is installed" },
  ["luarocks --lua-version=5.1 make --deps-mode=none LUA_INCDIR=/usr/include/luajit-2.1 "
    .. "CURL_INCDIR=/usr/include/$(gcc -print-multiarch) lua-acquire-ngx-scm-1.rockspec"] =
    { spec = "spec/05-rock_spec.lua", note = "spec/05 runs it, then a real nginx loads the tree" },
  ["make install"] = { spec = "spec/18-install_spec.lua", make = "install" },
  ["make install LUA=luajit PREFIX=/opt/acquire"] = { spec = "spec/18-install_spec.lua", make = "install",
    note = "spec/18 installs for every Lua, LuaJIT among them, into a temporary PREFIX" },
  -- Command line: run here, against the local server through the environment
  ["acquire-case 597752 --title Refund --message \"I'm reopening the closed case\""] = { spec = SPEC17 },
  ["acquire-case 597752 --output summary"] = { spec = SPEC17 },
  ["echo '{\"threadId\":1683,\"sessionId\":3711819272}' | acquire-case 597752 --json -"] = { spec = SPEC17 },
  -- Bulk imports: run here, in a directory of mktemp's under this spec's own (TMPDIR)
  ["cd \"$(mktemp -d)\""] = { spec = SPEC17 },
  ["printf 'contactId,title,fields.plan\\n597752,\"Refund, urgent\",gold\\n597752,Second,silver\\n' > contacts.csv"] =
    { spec = SPEC17 },
  ["acquire-case --batch --csv --journal import.journal --rate 20 < contacts.csv"] = { spec = SPEC17 },
}

-- The command lines of a sh block: comments and blank lines aside, trailing comments cut.
local function commands(b)
  local list = {}
  for i, l in ipairs(b.lines) do
    local cmd = l:gsub("%s+#.*$", ""):gsub("^#.*$", ""):gsub("^%s+", ""):gsub("%s+$", "")
    if cmd ~= "" then list[#list + 1] = { line = i, cmd = cmd } end
  end
  return list
end

local function make_targets()
  local targets = {}
  local files = { ROOT .. "/Makefile" }
  local p = io.popen("ls " .. helper.shell_quote(ROOT) .. "/mk/*.mk 2>/dev/null")
  for f in p:lines() do files[#files + 1] = f end
  p:close()
  for _, f in ipairs(files) do
    for line in helper.read_file(f):gmatch("[^\n]+") do
      local names = line:match("^([%w%-_%. ]+):") or line:match("^%.PHONY:(.*)$")
      if names and not line:match("^[%w_]+%s*[:?+]?=") then
        for name in names:gmatch("[%w%-_%.]+") do targets[name] = true end
      end
    end
  end
  return targets
end

local function exists(rel)
  local f = io.open(ROOT .. "/" .. rel)
  if f then f:close() end
  return f ~= nil
end

-- ---- the specs -------------------------------------------------------------------------------

describe("the README and doc/*.md", function()
  local srv = helper.server()
  local dir, prelude

  setup(function()
    dir = helper.tmpdir()
    prelude = helper.write_file(dir .. "/prelude.lua", PRELUDE)
    -- acquire-case on PATH, as the rock and make install put it there
    helper.write_file(dir .. "/acquire-case", ("#!/bin/sh\nexec %s %s \"$@\"\n"):format(
      helper.shell_quote(helper.interpreter()), helper.shell_quote(ROOT .. "/bin/acquire-case")))
    os.execute("chmod +x " .. helper.shell_quote(dir .. "/acquire-case"))
    -- lua5.4 in a block is the Lua under test (on its PATH, as acquire-case is), by its path:
    -- the interpreter may be called lua5.4 itself
    local interp = helper.sh("command -v " .. helper.shell_quote(helper.interpreter())):match("[^\n]+")
    assert(interp and interp:match("^/"), "no path for " .. helper.interpreter())
    helper.write_file(dir .. "/lua5.4", ("#!/bin/sh\nexec %s \"$@\"\n"):format(helper.shell_quote(interp)))
    os.execute("chmod +x " .. helper.shell_quote(dir .. "/lua5.4"))
  end)

  teardown(function() helper.rmrf(dir) end)

  local function env(extra)
    local e = { LUA_INIT = "@" .. prelude, README_BASE_URL = srv.base_url, README_API_KEY = srv.key }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  local all = {}
  for _, f in ipairs(docs()) do
    for _, b in ipairs(blocks_of(f)) do all[#all + 1] = b end
  end

  it("mark every block they do not run with a reason, and name no language this spec does not know", function()
    for _, b in ipairs(all) do
      assert(KNOWN[b.lang], where(b) .. ": a ```" .. b.lang .. " block: run it here, or name it in KNOWN")
      assert(not b.marked or (b.skip and b.skip ~= ""),
        where(b, -1) .. ": `*Not run: why.*` needs its reason, on one line")
    end
  end)

  for _, b in ipairs(all) do
    if b.lang == "lua" and not b.skip then
      it("runs the lua block at " .. where(b), function()
        local printed = helper.tmpfile()
        local code, out, err = helper.run_lua(b.text, { env = env {
          ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key, README_PRINTS = printed } })
        local got = read_prints(printed)
        os.remove(printed)
        local report = ("\n--- block (%s) ---\n%s--- stdout ---\n%s--- stderr ---\n%s"):format(
          where(b), b.text, out, err)
        assert(code == 0, where(b) .. ": exited " .. tostring(code) .. report)
        for _, e in ipairs(expectations(b)) do
          assert(e.code:find("print%s*%("), where(b, e.line) .. ": `--> " .. e.want
            .. "` on a line without print(...) cannot be checked: print it, or mark the block not run")
          local texts = got[e.line]
          assert(texts and #texts > 0, where(b, e.line) .. ": printed nothing, expected " .. e.want .. report)
          for _, t in ipairs(texts) do
            assert(norm(t) == norm(e.want), ("%s: printed %q, the README says %q%s"):format(
              where(b, e.line), t, e.want, report))
          end
        end
      end)
    end
  end

  local targets = make_targets()
  for _, b in ipairs(all) do
    if SH[b.lang] and b.file == "README.md" and not b.skip then
      it("accounts for every command of the sh block at " .. where(b), function()
        local here = {}
        for _, c in ipairs(commands(b)) do
          local by = SH_COMMANDS[c.cmd]
          assert(by, where(b, c.line) .. ": `" .. c.cmd .. "` is run by nothing: run it in "
            .. SPEC17 .. " or say in SH_COMMANDS what runs it (or mark the block not run)")
          if by.make then
            assert(targets[by.make], where(b, c.line) .. ": no make target '" .. by.make .. "'")
            local t = c.cmd:match("^make%s+([%w%-_]+)")
            if t then assert(targets[t], where(b, c.line) .. ": no make target '" .. t .. "'") end
          end
          assert(by.spec == SPEC17 or not c.cmd:find("acquire-case", 1, true), where(b, c.line)
            .. ": a command that calls acquire-case runs here, against the local server")
          if by.spec == SPEC17 then here[#here + 1] = c.cmd end
        end
        if #here > 0 then
          -- this spec's commands of the block, in order, as one script: 127.0.0.1:PORT is the
          -- local server's address (as make server prints it); ACQUIRE_BASE_URL and
          -- ACQUIRE_API_KEY point at it, as make server's export line does
          local addr = srv.base_url:match("^https?://(.*)$")
          local script = table.concat(here, "\n"):gsub("127%.0%.0%.1:PORT", addr) .. "\n"
          local r = helper.run({ "sh", "-ec", script }, { env = env {
            PATH = dir .. ":" .. os.getenv("PATH"), TMPDIR = dir,
            ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key,
            LUA_CPATH = ROOT .. "/?.so;;", LUA_PATH = ROOT .. "/lua/?.lua;;" } })
          assert(r.code == 0, ("%s: the block exited %s\n--- script ---\n%s--- stdout ---\n%s--- stderr ---\n%s")
            :format(where(b), tostring(r.code), script, r.out, r.err))
        end
      end)
    end
  end

  it("names specs that exist for the commands others run", function()
    local missing = {}
    for cmd, by in pairs(SH_COMMANDS) do
      if by.spec and by.spec ~= SPEC17 and not exists(by.spec) then
        missing[#missing + 1] = by.spec .. " (for `" .. cmd .. "`)"
      end
    end
    if #missing > 0 then pending("not in this tree yet: " .. table.concat(missing, ", ")) end
  end)
end)

describe("errors, as the README says", function()
  local acquire = require "acquire"
  local _, err = acquire.decode_response(404, nil, '{"message":"Contact not found"}')

  it("concatenate as their tostring, on either side", function()
    assert.equal("failed: acquire: http 404: Contact not found", "failed: " .. err)
    assert.equal("acquire: http 404: Contact not found!", err .. "!")
    assert.equal("acquire: http 404: Contact not found 1", err .. " " .. 1)
    assert.equal(tostring(err) .. tostring(err), err .. err)
    local ok, msg = pcall(function() return err .. nil end)
    assert.is_false(ok)
    contains(msg, "attempt to concatenate a nil value")
    ok, msg = pcall(function() return {} .. err end)
    assert.is_false(ok)
    contains(msg, "attempt to concatenate a table value")
  end)

  it("go through assert as the README says for this Lua", function()
    -- in a child: busted's own assert is luassert's
    local code, out = helper.run_lua([[
      local acquire = require "acquire"
      local _, err = acquire.decode_response(404, nil, '{"message":"Contact not found"}')
      local ok, e = pcall(function() return assert(nil, err) end)
      print(ok, e == err, type(e), tostring(e))
    ]])
    assert.equal(0, code)
    local v = _VERSION:match("%d+%.%d+")
    if rawget(_G, "jit") or v == "5.3" or v == "5.4" then
      assert.equal("false\ttrue\ttable\tacquire: http 404: Contact not found\n", out)   -- err itself
    else
      assert.matches("^false\tfalse\tstring\t.*bad argument #2 to 'assert' %(string expected, got table%)\n$", out)
    end
  end)

  it("read as one line from the standalone interpreter (5.3, 5.4, LuaJIT), or are lost (5.1, 5.2)", function()
    local code, _, stderr = helper.run_lua([[
      local acquire = require "acquire"
      local _, err = acquire.decode_response(404, nil, '{"message":"Contact not found"}')
      assert(nil, err)
    ]])
    assert.equal(1, code)
    local first = stderr:match("^[^\n]*")
    if rawget(_G, "jit") or _VERSION == "Lua 5.3" or _VERSION == "Lua 5.4" then
      assert.matches("^[%w%.]+: acquire: http 404: Contact not found$", first)
    else
      assert.matches(": bad argument #2 to 'assert' %(string expected, got table%)$", first)
    end
  end)
end)

describe("require 'acquire.ngx' outside nginx", function()
  it("raises one line that says where it runs and what to use instead", function()
    local code, _, stderr = helper.run_lua([[
      local ok, e = pcall(require, "acquire.ngx")
      io.stderr:write(tostring(ok), "\n", tostring(e), "\n")
    ]])
    assert.equal(0, code)
    assert.equal("false\nacquire.ngx needs nginx's Lua (ngx_lua/OpenResty); outside nginx use acquire.new\n",
      stderr)
  end)
end)
