-- make bench, the Lua rows. Each mode prints "key value" lines.
--   bench.lua acquire URL CALLS      (b) client:create_case in a loop
--   bench.lua floor FIXTURE CALLS    cjson.decode alone, for (a+)
--   bench.lua luasocket URL CALLS    (c) socket.http + cjson
--   bench.lua luacurl URL CALLS      (d) Debian's lua-curl + cjson, handle reused
--   bench.lua decode FIXTURE CALLS   acquire.decode_response against cjson.decode
--   bench.lua batch SLOW_URL SWEEP COLD
--                                    200 items, 20 ms each: at concurrency 1..64 (the median of
--                                    SWEEP rounds), then COLD rounds at 64 of a warm batch beside a
--                                    cold one (a new client), interleaved
--   bench.lua rss URL                RSS after 1,000 and 100,000 calls, 1,000 batches of 100
local socket = require "socket"
local now = socket.gettime
local mode, a1, a2, a3 = ...
local KEY = "test-key"
local OPTS = { title = "Refund", message = "I'm reopening the closed case" }
local BODY = '{"title":"Refund","message":{"type":"message","message":"I\'m reopening the closed case",'
  .. '"translateLangKey":""}}'
local PATH = "/api/v1/crm/messenger/chat/create?contactId=597752"

local out = require("bench.stats").out
local function read(path) local f = assert(io.open(path, "rb")); local s = f:read("*a"); f:close(); return s end
local function rss_kib()
  local f = assert(io.open("/proc/self/statm"))
  local _, res = f:read("*n", "*n")
  f:close()
  return res * 4
end

-- Times fn over n calls after a warm-up, in 5 rounds; returns the best
-- round's microseconds per call (the least disturbed by the rest of the machine).
local function per_call(n, fn)
  for _ = 1, math.min(200, n) do fn() end
  local best, m = math.huge, math.max(1, math.floor(n / 5))
  for _ = 1, 5 do
    collectgarbage()
    local t = now()
    for _ = 1, m do fn() end
    best = math.min(best, (now() - t) * 1e6 / m)
  end
  return best
end

if mode == "acquire" then
  local acquire = require "acquire"
  local c = acquire.new{ base_url = a1, api_key = KEY }
  out("us", per_call(tonumber(a2), function()
    local res = c:create_case(597752, OPTS)
    if not res or res.data.id ~= 2071 then error("bad response") end
  end))
elseif mode == "floor" or mode == "decode" then
  local cjson = require "cjson"
  local body = read(a1)
  local n = tonumber(a2)
  out("cjson_us", per_call(n, function() return cjson.decode(body) end))
  if mode == "decode" then
    local acquire = require "acquire"
    out("decode_us", per_call(n, function() return acquire.decode_response(200, nil, body) end))
  end
elseif mode == "luasocket" then
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local cjson = require "cjson"
  local headers = { ["content-type"] = "application/json", ["accept"] = "application/json",
                    ["authorization"] = "Bearer " .. KEY, ["content-length"] = #BODY }
  out("us", per_call(tonumber(a2), function()
    local chunks = {}
    local _, code = http.request{ url = a1 .. PATH, method = "POST", headers = headers,
      source = ltn12.source.string(BODY), sink = ltn12.sink.table(chunks) }
    if code ~= 200 then error("bad status " .. tostring(code)) end
    local res = cjson.decode(table.concat(chunks))
    if res.data.id ~= 2071 then error("bad response") end
  end))
elseif mode == "luacurl" then
  local curl = require "curl"
  local cjson = require "cjson"
  local e = curl.easy_init()
  local chunks, n = {}, 0
  e:setopt(curl.OPT_URL, a1 .. PATH)
  e:setopt(curl.OPT_POST, 1)
  e:setopt(curl.OPT_POSTFIELDS, BODY)
  e:setopt(curl.OPT_HTTPHEADER, { "Content-Type: application/json", "Accept: application/json",
                                   "Authorization: Bearer " .. KEY, "Expect:" })
  e:setopt(curl.OPT_NOSIGNAL, 1)
  e:setopt(curl.OPT_WRITEFUNCTION, function(s) n = n + 1; chunks[n] = s; return #s end)
  out("us", per_call(tonumber(a2), function()
    n = 0
    for i = #chunks, 1, -1 do chunks[i] = nil end
    assert(e:perform())
    local res = cjson.decode(table.concat(chunks))
    if res.data.id ~= 2071 then error("bad response") end
  end))
elseif mode == "batch" then
  local acquire = require "acquire"
  local sweep, cold_rounds = tonumber(a2 or 1), tonumber(a3 or 1)
  local CONC = { 1, 2, 4, 8, 16, 32, 64 }
  local items = {}
  for i = 1, 200 do items[i] = { 597752, OPTS } end
  -- fn() makes the batch; -> wall ms, CPU ms of this process (libcurl's and its threads' included)
  local function timed(fn)
    collectgarbage()
    local t, cpu = now(), os.clock()
    local results = fn()
    local wall, used = (now() - t) * 1000, (os.clock() - cpu) * 1000
    for i = 1, 200 do if not results[i].res then error(tostring(results[i].err)) end end
    return wall, used
  end
  local quantile = require("bench.stats").quantile
  local warm = acquire.new{ base_url = a1, api_key = KEY }
  local function warm_batch(conc) return warm:create_cases(items, { concurrency = conc }) end
  local function cold_batch()               -- a new client: its setup, connections, first batch
    local c = acquire.new{ base_url = a1, api_key = KEY }
    local results = c:create_cases(items, { concurrency = 64 })
    c:close()
    return results
  end
  warm_batch(64)                             -- open the 64 connections the warm client keeps
  local ms = {}
  for _ = 1, sweep do
    for _, conc in ipairs(CONC) do
      ms[conc] = ms[conc] or {}
      table.insert(ms[conc], (timed(function() return warm_batch(conc) end)))
    end
  end
  out("batch_sweep_rounds", sweep)
  for _, conc in ipairs(CONC) do out("batch_ms_" .. conc, quantile(ms[conc], 0.5)) end
  local m = { warm = {}, cold = {}, warm_cpu = {}, cold_cpu = {} }
  for r = 1, cold_rounds do
    for k = 0, 1 do                          -- which goes first alternates
      local kind = (r + k) % 2 == 0 and "warm" or "cold"
      local wall, cpu = timed(kind == "warm" and function() return warm_batch(64) end or cold_batch)
      table.insert(m[kind], wall)
      table.insert(m[kind .. "_cpu"], cpu)
    end
  end
  out("batch64_rounds", cold_rounds)
  for _, key in ipairs{ "warm", "cold", "warm_cpu", "cold_cpu" } do
    for _, q in ipairs{ 25, 50, 75 } do out("batch64_" .. key .. "_p" .. q, quantile(m[key], q / 100)) end
  end
elseif mode == "rss" then
  local acquire = require "acquire"
  local c = acquire.new{ base_url = a1, api_key = KEY }
  local function calls(n) for _ = 1, n do assert(c:create_case(597752, OPTS)) end end
  calls(1000)
  collectgarbage(); collectgarbage()
  out("rss_kib_1k", rss_kib())
  calls(99000)
  collectgarbage(); collectgarbage()
  out("rss_kib_100k", rss_kib())
  local items = {}
  for i = 1, 100 do items[i] = { 597752, OPTS } end
  for _ = 1, 1000 do c:create_cases(items, { concurrency = 8 }) end
  collectgarbage(); collectgarbage()
  out("rss_kib_batches", rss_kib())
else
  error("unknown mode " .. tostring(mode))
end
