-- make bench, the event-loop rows (issue 19). Each mode prints "key value" lines.
--   pending.lua tput URL CALLS ROUNDS CONCS
--       CALLS calls at each concurrency of CONCS ("16,64"): pending calls (client:start_case,
--       driven by acquire.cqueues.create_case: `repeat cqueues.poll(p) until p:step()`) in a
--       cqueues loop, CONC coroutines sharing the CALLS, beside create_cases of the same
--       CALLS items at the same concurrency; one client each, warmed; ROUNDS interleaved rounds
--       (which goes first alternates): calls/s and CPU ms (this process's, libcurl's included)
--   pending.lua single URL CALLS ROUNDS
--       one call at a time: a start_case driven to the end in a cqueues loop
--       (acquire.cqueues.create_case) beside client:create_case; ROUNDS
--       interleaved rounds of CALLS calls each way: CPU and wall µs a call
--   pending.lua cpu URL CALLS
--       (a child of "old") create_case after a warm-up: CPU and wall µs a call
--   pending.lua old URL CALLS ROUNDS NEWDIR OLDDIR
--       ROUNDS rounds, each a child process of "cpu" with NEWDIR's acquire.so and one with
--       OLDDIR's (which goes first alternates): create_case CPU and wall µs a call
-- Every summary is "<key>_p50", "<key>_min", "<key>_max" (and _p25, _p75) over the rounds.
package.path = "./lua/?.lua;" .. package.path          -- acquire.cqueues, from this tree
local socket = require "socket"
local now = socket.gettime
local mode, url, a2, a3, a4, a5 = ...
local KEY = "test-key"
local CONTACT = 597752
local OPTS = { title = "Refund", message = "I'm reopening the closed case" }

local stats = require "bench.stats"
local out, summary = stats.out, stats.summary
local function check(res, err)
  if not res or res.data.id ~= 2071 then error("bad result: " .. tostring(err)) end
end
-- fn() -> wall s, CPU s
local function timed(fn)
  collectgarbage()
  local t, c = now(), os.clock()
  fn()
  return now() - t, os.clock() - c
end

if mode == "tput" then
  local acquire = require "acquire"
  local cqueues = require "cqueues"
  local aq = require "acquire.cqueues"
  local calls, rounds = tonumber(a2), tonumber(a3)
  local concs = {}
  for c in tostring(a4 or "16,64"):gmatch("%d+") do concs[#concs + 1] = tonumber(c) end
  local items = {}
  for i = 1, calls do items[i] = { CONTACT, OPTS } end
  -- conc coroutines take the calls one after another until none is left
  local function pending(client, conc)
    local cq = cqueues.new()
    local left = calls
    for _ = 1, conc do
      cq:wrap(function()
        while left > 0 do
          left = left - 1
          check(aq.create_case(client, CONTACT, OPTS))
        end
      end)
    end
    assert(cq:loop())
  end
  local function batch(client, conc)
    local results = client:create_cases(items, { concurrency = conc })
    for i = 1, calls do check(results[i].res, results[i].err) end
  end
  local ways = { pending = pending, batch = batch }
  for _, conc in ipairs(concs) do
    local clients = { pending = acquire.new{ base_url = url, api_key = KEY },
                      batch = acquire.new{ base_url = url, api_key = KEY } }
    for way, fn in pairs(ways) do fn(clients[way], conc) end        -- warm: the connections open
    local m = { pending = {}, batch = {}, pending_cpu = {}, batch_cpu = {}, ratio = {} }
    for r = 1, rounds do
      for k = 0, 1 do
        local way = (r + k) % 2 == 0 and "pending" or "batch"
        local wall, cpu = timed(function() ways[way](clients[way], conc) end)
        table.insert(m[way], calls / wall)
        table.insert(m[way .. "_cpu"], cpu * 1000)
      end
      m.ratio[r] = m.pending[r] / m.batch[r]      -- this round's pair: one regime of the machine
    end
    for _, way in ipairs{ "pending", "batch" } do
      summary(("tput_%s_%d_rps"):format(way, conc), m[way])
      summary(("tput_%s_%d_cpu_ms"):format(way, conc), m[way .. "_cpu"])
    end
    summary(("tput_ratio_%d"):format(conc), m.ratio)
    clients.pending:close()
    clients.batch:close()
  end
  out("tput_calls", calls)
  out("tput_rounds", rounds)
elseif mode == "single" then
  local acquire = require "acquire"
  local cqueues = require "cqueues"
  local aq = require "acquire.cqueues"
  local calls, rounds = tonumber(a2), tonumber(a3)
  local client = acquire.new{ base_url = url, api_key = KEY }
  local cq = cqueues.new()
  local function pending()
    cq:wrap(function()
      for _ = 1, calls do
          check(aq.create_case(client, CONTACT, OPTS))
      end
    end)
    assert(cq:loop())
  end
  local function blocking()
    for _ = 1, calls do check(client:create_case(CONTACT, OPTS)) end
  end
  local ways = { pending = pending, create_case = blocking }
  pending(); blocking()                                          -- warm
  local m = { pending = {}, create_case = {}, pending_cpu = {}, create_case_cpu = {}, ratio = {} }
  for r = 1, rounds do
    for k = 0, 1 do
      local way = (r + k) % 2 == 0 and "pending" or "create_case"
      local wall, cpu = timed(ways[way])
      table.insert(m[way], wall * 1e6 / calls)
      table.insert(m[way .. "_cpu"], cpu * 1e6 / calls)
    end
    m.ratio[r] = m.pending_cpu[r] / m.create_case_cpu[r]
  end
  summary("single_cpu_ratio", m.ratio)
  for _, way in ipairs{ "pending", "create_case" } do
    summary(("single_%s_us"):format(way), m[way])
    summary(("single_%s_cpu_us"):format(way), m[way .. "_cpu"])
  end
  out("single_calls", calls)
  out("single_rounds", rounds)
elseif mode == "cpu" then
  local acquire = require "acquire"
  local calls = tonumber(a2)
  local client = acquire.new{ base_url = url, api_key = KEY }
  for _ = 1, math.min(200, calls) do check(client:create_case(CONTACT, OPTS)) end
  local wall, cpu = timed(function()
    for _ = 1, calls do check(client:create_case(CONTACT, OPTS)) end
  end)
  out("us", wall * 1e6 / calls)
  out("cpu_us", cpu * 1e6 / calls)
elseif mode == "old" then
  local calls, rounds, dirs = a2, tonumber(a3), { new = a4, old = a5 }
  local lua = arg[-1] or "lua5.4"
  local m = { new = {}, old = {}, new_cpu = {}, old_cpu = {} }
  for r = 1, rounds do
    for k = 0, 1 do
      local which = (r + k) % 2 == 0 and "new" or "old"
      local cmd = ("LUA_CPATH='%s/?.so;;' %s %s cpu '%s' %s"):format(dirs[which], lua, arg[0], url, calls)
      local p = assert(io.popen(cmd))
      local got = {}
      for line in p:lines() do
        local k2, v = line:match("^(%S+)%s+(%S+)$")
        if k2 then got[k2] = tonumber(v) end
      end
      assert(p:close(), "the child failed: " .. cmd)
      table.insert(m[which], (assert(got.us, cmd)))
      table.insert(m[which .. "_cpu"], got.cpu_us)
    end
  end
  for _, which in ipairs{ "new", "old" } do
    summary(("old_%s_us"):format(which), m[which])
    summary(("old_%s_cpu_us"):format(which), m[which .. "_cpu"])
  end
  out("old_calls", tonumber(calls))
  out("old_rounds", rounds)
else
  error("unknown mode " .. tostring(mode))
end
