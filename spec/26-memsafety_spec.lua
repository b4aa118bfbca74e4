-- Memory safety (issue: memory safety). Finding 1: libcurl before 8.1.0 reads and reallocates
-- freed memory when an easy handle is reused and an answer begins its header block with a
-- folded line (curl issue 11101; Debian 12's 7.88.1 has it). Every transfer now runs on a
-- fresh easy handle (transport.c). spec/folded.lua is the generator: here in-process (seen by
-- make memcheck and make sanitize) and, in the plain suite, in a child under valgrind.
require "acquire"                   -- loads before the server starts: a missing build fails here
local helper = require "spec.helper"
local folded = require "spec.folded"

local SEED = tonumber(os.getenv("SPEC_SEED")) or os.time()

-- Are we already under valgrind or ASan? Then the in-process run is the proof.
local function instrumented()
  local maps = helper.slurp("/proc/self/maps")
  return maps:find("vgpreload", 1, true) or maps:find("libasan", 1, true)
end

describe("memory safety", function()
  local srv = helper.server()
  local ctl = {
    reset = function() srv:reset() end,
    fault = function(rule) srv:fault(rule) end,
    client = function(over) return srv:client(over) end,
  }

  it("a folded first header line after a normal answer, on every path (generator, in-process)", function()
    local bad = folded(ctl, SEED, 24)
    assert.is_nil(bad)
  end)

  it("the folded answer reads as a malformed answer, the request may have reached Acquire", function()
    local c = srv:client{ max_retries = 3 }
    assert.truthy(c:create_case(597752, { message = "first" }))
    srv:fault{ action = "raw", close = false, times = 1,
               body = "HTTP/1.1 400 Bad Request\r\n x: y\r\nContent-Length: 2\r\n\r\n{}" }
    local res, err = c:create_case(597752, { message = "second" })
    assert.is_nil(res)
    assert.is_true(err.maybe_created)
    assert.equal(1, err.attempts)                       -- never resent
    assert.matches("malformed", err.message)
    assert.equal(2, srv:stats().requests)
  end)

  it("the same generator in a child under valgrind: no invalid read, no leak", function()
    if instrumented() then pending("already under valgrind or ASan: the in-process run is the proof") return end
    if not helper.sh("command -v valgrind"):find("valgrind", 1, true) then
      error("valgrind is missing (make deps installs it)")
    end
    local code = ([[
      local acquire = require "acquire"
      local socket_http = require "socket.http"
      local ltn12 = require "ltn12"
      local cjson = require "cjson"
      local ctl_url = %q
      local function call(path, body)
        local out = {}
        assert(socket_http.request{ url = ctl_url .. path, method = "POST", sink = ltn12.sink.table(out),
          source = ltn12.source.string(body), headers = { ["content-length"] = #body } })
      end
      local ctl = {
        reset = function() call("/_control/reset", "{}") end,
        fault = function(rule) call("/_control/fault", cjson.encode(rule)) end,
        client = function(over)
          local cfg = { base_url = %q, api_key = %q, timeout = 5, connect_timeout = 2 }
          for k, v in pairs(over) do cfg[k] = v end
          return acquire.new(cfg)
        end,
      }
      local bad = require("spec.folded")(ctl, %d, 8)
      if bad then io.stderr:write(bad, "\n") os.exit(1) end
    ]]):format("http://" .. srv.host .. ":" .. srv.control_port, srv.base_url, srv.key, SEED)
    local path = helper.tmpfile(code)
    local r = helper.run({ "valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                           "--errors-for-leak-kinds=definite,indirect",
                           "--show-leak-kinds=definite,indirect", helper.interpreter(), path },
                         { env = { LUA_CPATH = "./?.so;;", LUA_PATH = "./?.lua;./lua/?.lua;;" }, limit = 120 })
    os.remove(path)
    assert.equal(0, r.code, ("seed %d: valgrind says:\n%s"):format(SEED, r.err))
  end)
end)
