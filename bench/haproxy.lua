-- make bench, the HAProxy rows (issue 19), for bench.sh: prints "key value" lines.
--
--   lua5.4 bench/haproxy.lua URL ROUNDS SECONDS CONC
--
-- A real haproxy (Debian's 2.6, Lua 5.3, one thread), started by spec/haproxy.lua's launcher with
-- bench/haproxy_service.lua's two services against URL (the nginx bench server): "module"
-- (acquire.haproxy's create_case) and "raw" (the same POST by hand over core.tcp). First both send
-- a request to a listener here, and their bytes must be equal. Then a load generator (cqueues,
-- CONC keep-alive connections to haproxy's frontend, each a request after another) drives each
-- way for SECONDS, in ROUNDS interleaved rounds (module, raw, raw, module…), after a warm-up.
-- A round: requests/s, haproxy's CPU (user + sys of its process, /proc/PID/stat) µs a request,
-- and wall ms a request (CONC × its wall / its requests). Summaries as bench/pending.lua's:
-- "<key>_p50", "_p25", "_p75", "_min", "_max"; ratios are each round pair's raw / module.
local cqueues = require "cqueues"
local csocket = require "cqueues.socket"
local launcher = require "spec.haproxy"
local helper = require "spec.helper"

local url, rounds, seconds, conc = ...
assert(url, "usage: haproxy.lua URL ROUNDS SECONDS CONC")
rounds, seconds, conc = tonumber(rounds) or 5, tonumber(seconds) or 3, tonumber(conc) or 16
local KEY = "test-key"
local ID = "2071"                                  -- the fixture's case id: each answer's body
local now = cqueues.monotime

local stats = require "bench.stats"
local out, summary = stats.out, stats.summary

-- One HTTP/1.1 response's status and body off a cqueues socket (binary mode).
local function read_response(s)
  local line = s:read("*l")
  local status = line and tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
  if not status then return nil, "no status line: " .. tostring(line) end
  local length
  repeat
    local h = s:read("*l")
    if not h then return nil, "the headers ended early" end
    h = h:gsub("\r$", "")
    local n, v = h:match("^([^:]+):%s*(.-)%s*$")
    if n and n:lower() == "content-length" then length = tonumber(v) end
  until h == ""
  local body = length and length > 0 and s:read(length) or ""
  return status, body
end

-- A listener that answers one request with the fixture's response: the request's bytes.
local capture = {}
do
  local fixture = helper.read_file(helper.repo_root .. "/spec/fixtures/api/create-case-response.json")
  local l = assert(csocket.listen("127.0.0.1", 0))
  l:listen()
  local _, _, port = l:localname()
  capture.port = port
  function capture.one()
    local s = assert(l:accept(10), "the service did not connect to the capture listener")
    s:setmode("b", "b")
    local head = {}
    local length
    repeat
      local h = assert(s:read("*l"))
      head[#head + 1] = h .. "\n"
      local n, v = h:gsub("\r$", ""):match("^([^:]+):%s*(.-)%s*$")
      if n and n:lower() == "content-length" then length = tonumber(v) end
    until h:gsub("\r$", "") == ""
    local body = length and s:read(length) or ""
    s:write("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ",
      #fixture, "\r\n\r\n", fixture)
    s:flush()
    s:close()
    return table.concat(head) .. body
  end
end

local h = launcher.start_cases{
  base_url = url, key = KEY, ports = 2,
  global = ("nbthread 1\n  setenv BENCH_CAPTURE_URL http://127.0.0.1:%d\n  lua-load %s/bench/haproxy_service.lua")
    :format(capture.port, helper.repo_root),
  extra = function(hh) return ([[
frontend bench
  bind 127.0.0.1:%d
  http-request use-service lua.module_bench if { path /module }
  http-request use-service lua.raw_bench if { path /raw }
  http-request use-service lua.module_capture if { path /module_capture }
  http-request use-service lua.raw_capture if { path /raw_capture }
]]):format(hh.ports[2]) end,
}
local port = h.ports[2]

-- haproxy's CPU so far (its threads', user + sys), s.
local TICK
do
  local p = io.popen("getconf CLK_TCK")
  TICK = 1 / (tonumber(p:read("*l")) or 100)
  p:close()
end
io.stderr:write(("bench: haproxy (pid %d) on 127.0.0.1:%d, against %s\n"):format(h.pid, port, url))
local function haproxy_cpu()
  local f = assert(io.open("/proc/" .. h.pid .. "/stat"))
  local stat = f:read("*a")
  f:close()
  local fields = {}
  for x in stat:match("^.*%)%s+(.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) * TICK    -- utime, stime (fields 14, 15)
end

-- conc connections, each a GET of path after another for secs: requests, wall s, or raise.
local function load(path, secs, n)
  local cq = cqueues.new()
  local count, failure = 0, nil
  local req = "GET " .. path .. " HTTP/1.1\r\nHost: bench\r\n\r\n"
  local t0 = now()
  local stop = t0 + secs
  for _ = 1, n do
    cq:wrap(function()
      local s = assert(csocket.connect("127.0.0.1", port))
      s:setmode("b", "bn")
      s:settimeout(15)
      while now() < stop and not failure do
        assert(s:write(req))
        local status, body = read_response(s)
        if status ~= 200 or body ~= ID then
          failure = ("%s answered %s: %s"):format(path, tostring(status), tostring(body))
        else
          count = count + 1
        end
      end
      s:close()
    end)
  end
  local ok, e = cq:loop()
  if not ok then failure = failure or tostring(e) end
  if failure then error(failure .. "\n" .. h:log():sub(-2000), 0) end
  return count, now() - t0
end

local function run()
  -- the same bytes both ways (the key and the User-Agent included)
  local sent = {}
  for _, way in ipairs{ "module", "raw" } do
    local cq = cqueues.new()
    cq:wrap(function() sent[way] = capture.one() end)
    local answered
    cq:wrap(function()
      local s = assert(csocket.connect("127.0.0.1", port))
      s:setmode("b", "bn")
      s:settimeout(15)
      assert(s:write("GET /" .. way .. "_capture HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"))
      answered = { read_response(s) }
      s:close()
    end)
    assert(cq:loop())
    assert(answered[1] == 200 and answered[2] == ID, way .. ": " .. tostring(answered[2]) .. "\n" .. h:log())
  end
  if sent.module ~= sent.raw then
    error("the two services sent different requests:\n" .. sent.module .. "\n----\n" .. sent.raw, 0)
  end
  out("haproxy_request_bytes", #sent.raw)

  load("/module", math.min(1, seconds / 2), conc)    -- warm
  load("/raw", math.min(1, seconds / 2), conc)
  local m = {}
  for _, k in ipairs{ "module_rps", "raw_rps", "module_cpu_us", "raw_cpu_us", "module_ms", "raw_ms",
                      "ratio_rps", "ratio_cpu" } do m[k] = {} end
  for r = 1, rounds do
    local got = {}
    for k = 0, 1 do
      local way = (r + k) % 2 == 0 and "module" or "raw"
      collectgarbage()
      local c0 = haproxy_cpu()
      local count, wall = load("/" .. way, seconds, conc)
      local cpu = haproxy_cpu() - c0
      got[way] = { rps = count / wall, cpu = cpu * 1e6 / count }
      table.insert(m[way .. "_rps"], count / wall)
      table.insert(m[way .. "_cpu_us"], cpu * 1e6 / count)
      table.insert(m[way .. "_ms"], conc * wall * 1e3 / count)
    end
    table.insert(m.ratio_rps, got.raw.rps / got.module.rps)
    table.insert(m.ratio_cpu, got.raw.cpu / got.module.cpu)
  end
  local keys = {}
  for k in pairs(m) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do summary("haproxy_" .. k, m[k]) end
  out("haproxy_rounds", rounds)
  out("haproxy_seconds", seconds)
  out("haproxy_conc", conc)
end

local ok, e = pcall(run)
launcher.stop(h)
if not ok then error(e, 0) end
