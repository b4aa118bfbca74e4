-- doc/nginx.md's whole nginx.conf is examples/nginx.conf, and it runs: nginx started with that
-- file, only its `# CHANGE` lines given this checkout's values (scripts/demo-nginx.sh up, as
-- `make demo-nginx` starts it), creates a case on the local Acquire server.
local helper = require "spec.helper"
local cjson = require "cjson"
local socket = require "socket"

local ROOT = helper.repo_root
local SCRIPT = helper.shell_quote(ROOT .. "/scripts/demo-nginx.sh")

-- The block of doc/nginx.md right after <!-- file: examples/nginx.conf -->.
local function doc_block()
  local doc = helper.read_file(ROOT .. "/doc/nginx.md")
  return doc:match("\n<!%-%- file: examples/nginx%.conf %-%->\n```nginx\n(.-\n)```\n")
end

local function lines(s)
  local t = {}
  for l in (s .. (s:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

describe("doc/nginx.md's nginx.conf #ngx", function()
  local srv, dir, url

  local function post(path, body)
    local chunks = {}
    local _, code = require("socket.http").request {
      url = url .. path, method = "POST",
      source = require("ltn12").source.string(body),
      headers = { ["content-type"] = "application/json", ["content-length"] = #body },
      sink = require("ltn12").sink.table(chunks),
      create = function()
        local s = socket.tcp()
        s:settimeout(15)
        return s
      end,
    }
    return code, table.concat(chunks)
  end

  setup(function()
    srv = helper.start_server()
    local out, code = helper.sh("cd " .. helper.shell_quote(ROOT) .. " && make -s .tmp/luajit/acquire.so")
    assert(code == 0, "building the LuaJIT module failed:\n" .. out)
    dir = helper.tmpdir()
    local port = helper.free_port()
    url = "http://127.0.0.1:" .. port
    out, code = helper.sh(("ACQUIRE_API_KEY=%s ACQUIRE_BASE_URL=%s %s up %s %d"):format(
      helper.shell_quote(srv.key), helper.shell_quote(srv.base_url), SCRIPT, helper.shell_quote(dir), port))
    assert(code == 0, "scripts/demo-nginx.sh up failed:\n" .. out)
  end)

  teardown(function()
    if dir then helper.sh(SCRIPT .. " down " .. helper.shell_quote(dir)) end
    if srv then srv:stop() end
  end)

  it("is examples/nginx.conf, byte for byte", function()
    local block = doc_block()
    assert.is_string(block, "doc/nginx.md has no ```nginx block after <!-- file: examples/nginx.conf -->")
    assert.equal(helper.read_file(ROOT .. "/examples/nginx.conf"), block)
  end)

  it("is started with only its CHANGE lines changed (and nginx's own files kept in the run's directory)", function()
    local want = lines(helper.read_file(ROOT .. "/examples/nginx.conf"))
    local got = lines(helper.read_file(dir .. "/nginx.conf"))
    local kept = {}
    for _, l in ipairs(got) do
      if not l:match("# demo%-nginx%.sh$") then kept[#kept + 1] = l end
    end
    assert.equal(#want, #kept, "lines other than the run's own were added or dropped")
    local changed = 0
    for i, w in ipairs(want) do
      if w:find("# CHANGE", 1, true) then
        local directive = w:match("^%s*([%w_]+)")
        assert.equal(directive, kept[i]:match("^%s*([%w_]+)"), "line " .. i .. " names another directive")
        assert.is_truthy(kept[i]:find("# CHANGE", 1, true), kept[i])
        if kept[i] ~= w then changed = changed + 1 end
      else
        assert.equal(w, kept[i], "line " .. i .. " is not marked CHANGE, yet differs")
      end
    end
    assert.is_true(changed >= 3, "listen and the Lua paths are this run's: " .. changed .. " lines changed")
  end)

  it("creates a case on the local Acquire server", function()
    srv:reset()
    local code, out = post("/cases?contact=597752", '{"title":"Refund"}')
    assert.equal(200, code, out .. helper.slurp(dir .. "/error.log"))
    assert.same({ id = 2071, status = "active" }, cjson.decode(out))
    local req = srv:last_request()
    assert.equal('{"title":"Refund"}', req.body)
    assert.equal("Bearer " .. srv.key, req.headers.authorization)
    assert.equal("597752", req.query.contactId)
  end)
end)
