-- Chaos through acquire.ngx: the same invariant as 11-chaos_spec.lua (spec/chaos.lua checks it),
-- with the bytes moved by cosockets inside a real nginx. The handler takes { markers = {...},
-- config = {...} }, runs one create_case per marker in light threads at once (so pooled
-- connections are shared and reused across behaviours), and answers each result as JSON.
--   CHAOS_SEED=n, CHAOS_NGX_CALLS=n (default 300)
local chaos = require "spec.chaos"
local nginx = require "spec.nginx"
local cjson = require "cjson"

local SEED = tonumber(os.getenv("CHAOS_SEED")) or os.time()
local CALLS = tonumber(os.getenv("CHAOS_NGX_CALLS")) or 300

local HANDLER = [[
  local cjson = require "cjson"
  ngx.req.read_body()
  local q = cjson.decode(ngx.req.get_body_data())
  local client = require("acquire.ngx").new(q.config)
  local threads, out = {}, {}
  for i, m in ipairs(q.markers) do
    threads[i] = ngx.thread.spawn(function()
      local t0 = ngx.now()
      local ok, res, err = pcall(client.create_case, client, 597752, { title = m })
      ngx.update_time()
      local r = { marker = m, elapsed = ngx.now() - t0 }
      if not ok then
        r.raised = tostring(res)
      elseif res then
        r.res = { data = { id = res.data and res.data.id, title = res.data and res.data.title } }
      else
        local copy = {}
        for k, v in pairs(err) do copy[k] = v end
        r.err, r.text = copy, tostring(err)
      end
      return r
    end)
  end
  for i, th in ipairs(threads) do
    local ok, r = ngx.thread.wait(th)
    out[i] = ok and r or { marker = q.markers[i], raised = tostring(r) }
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(out))
]]

-- err as the handler saw it: its fields, and tostring as it printed
local function err_of(r)
  if type(r.err) ~= "table" then return nil end
  for k, v in pairs(r.err) do if v == cjson.null then r.err[k] = nil end end
  return setmetatable(r.err, { __tostring = function() return r.text end })
end

describe("chaos through acquire.ngx #ngx #chaos", function()
  local srv, n, cfg

  setup(function()
    math.randomseed(SEED)
    srv = chaos.start(SEED)
    cfg = chaos.client_config(srv)
    cfg.debug = nil
    n = nginx.start(function(ngx_)
      return nginx.config(ngx_, { http = ([[
  server {
    listen 127.0.0.1:%d;
    location = /cases { content_by_lua_block { %s } }
  }]]):format(ngx_.port, HANDLER) })
    end)
  end)
  teardown(function()
    if n then nginx.stop(n) end
    if srv then srv:stop() end
  end)

  it("never created twice, maybe_created whenever it may be (seed " .. SEED .. ")", function()
    chaos.reset(srv)
    local calls, done = {}, 0
    -- acquire.ngx's timeout bounds the whole call, retries included
    local bound = cfg.timeout + chaos.SLACK
    while done < CALLS do
      local k = math.min(CALLS - done, math.random(1, 12))
      local markers = {}
      for i = 1, k do markers[i] = ("chaos-ngx-%d-%d"):format(SEED, done + i) end
      done = done + k
      local code, text = n:post("/cases", cjson.encode{ markers = markers, config = cfg }, 30)
      assert(code == 200, ("nginx answered %s: %s (seed %d)"):format(tostring(code), tostring(text), SEED))
      for _, r in ipairs(cjson.decode(text)) do
        calls[#calls + 1] = { path = "acquire.ngx", marker = r.marker, elapsed = r.elapsed,
                              bound = bound, res = r.res, err = err_of(r),
                              raised = r.raised ~= cjson.null and r.raised or nil }
      end
    end
    local ok, why = chaos.check(calls, chaos.log(srv), SEED)
    assert(ok, why)
  end)

  it("never crashed a handler (nginx's error log)", function()
    local log = n:log()
    assert.is_nil(log:find("%[error%]") and log:find("lua entry thread aborted"), log)
    assert.is_nil(log:find("%[alert%]"), log)
  end)
end)
