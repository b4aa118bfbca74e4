-- make bench, the event-loop rows (issue 19). Each mode prints "key value" lines.
--   pending.lua tput URL CALLS ROUNDS CONCS
--       CALLS calls at each concurrency of CONCS ("16,64"): pending calls driven by
--       acquire.cqueues.create_case in a cqueues loop, CONC coroutines sharing the CALLS
--       ("pending"), beside create_cases of the same CALLS items at the same concurrency
--       ("batch"), and beside the same calls in a group (client:group()) that one coroutine of a
--       cqueues loop drives, CONC in flight ("group": the engine without a coroutine a call),
--       and beside acquire.luv.create_case on luv's loop, each callback starting the next ("luv");
--       one client each, warmed; ROUNDS interleaved rounds (which goes first turns): calls/s
--       and CPU ms (this process's, libcurl's included)
--   pending.lua single URL CALLS ROUNDS
--       one call at a time: acquire.cqueues.create_case in a cqueues loop ("pending"), beside
--       client:create_case, and client:start_case driven to its end by cqueues.poll(p)
--       ("start_cq") and by socket.select on its pollfd ("start_select"); ROUNDS interleaved
--       rounds of CALLS calls each way: CPU and wall µs a call
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
  -- one coroutine keeps conc calls of a group in flight, polling the group when none finished
  local function group(client, conc)
    local cq = cqueues.new()
    cq:wrap(function()
      local g = client:group()
      local left, inflight = calls, 0
      while left > 0 and inflight < conc do
        g:start_case(CONTACT, OPTS)
        left, inflight = left - 1, inflight + 1
      end
      while inflight > 0 do
        local done = g:step()
        for i = 1, #done do
          check(done[i]:result())
          inflight = inflight - 1
          if left > 0 then
            g:start_case(CONTACT, OPTS)
            left, inflight = left - 1, inflight + 1
          end
        end
        if #done == 0 then cqueues.poll(g) end
      end
      g:close()
    end)
    assert(cq:loop())
  end
  -- conc chains of acquire.luv calls, each callback starting its chain's next call
  local uv, aqluv = require "luv", require "acquire.luv"
  local function luv(client, conc)
    local left = calls
    local function one()
      if left == 0 then return end
      left = left - 1
      aqluv.create_case(client, CONTACT, OPTS, function(res, err) check(res, err) one() end)
    end
    for _ = 1, conc do one() end
    uv.run()
  end
  local ways = { pending = pending, batch = batch, group = group, luv = luv }
  local order = { "pending", "batch", "group", "luv" }
  for _, conc in ipairs(concs) do
    local clients = {}
    for _, way in ipairs(order) do clients[way] = acquire.new{ base_url = url, api_key = KEY } end
    for way, fn in pairs(ways) do fn(clients[way], conc) end        -- warm: the connections open
    local m = { ratio = {}, group_ratio = {}, luv_ratio = {} }
    for _, way in ipairs(order) do m[way], m[way .. "_cpu"] = {}, {} end
    for r = 1, rounds do
      for k = 0, #order - 1 do
        local way = order[(r + k) % #order + 1]
        local wall, cpu = timed(function() ways[way](clients[way], conc) end)
        table.insert(m[way], calls / wall)
        table.insert(m[way .. "_cpu"], cpu * 1000)
      end
      m.ratio[r] = m.pending[r] / m.batch[r]      -- this round's: one regime of the machine
      m.group_ratio[r] = m.group[r] / m.batch[r]
      m.luv_ratio[r] = m.luv[r] / m.batch[r]
    end
    for _, way in ipairs(order) do
      summary(("tput_%s_%d_rps"):format(way, conc), m[way])
      summary(("tput_%s_%d_cpu_ms"):format(way, conc), m[way .. "_cpu"])
    end
    summary(("tput_ratio_%d"):format(conc), m.ratio)
    summary(("tput_group_ratio_%d"):format(conc), m.group_ratio)
    summary(("tput_luv_ratio_%d"):format(conc), m.luv_ratio)
    for _, way in ipairs(order) do clients[way]:close() end
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
  -- client:start_case driven to its end: by cqueues.poll(p), and by select(2) on its pollfd
  local function start_cq()
    cq:wrap(function()
      for _ = 1, calls do
        local p = client:start_case(CONTACT, OPTS)
        while not p:step() do cqueues.poll(p) end
        check(p:result())
      end
    end)
    assert(cq:loop())
  end
  local function start_select()
    for _ = 1, calls do
      local p = client:start_case(CONTACT, OPTS)
      local fdo = { getfd = function() return p:pollfd() end }
      while not p:step() do socket.select({ fdo }, nil, p:timeout()) end
      check(p:result())
    end
  end
  local ways = { pending = pending, create_case = blocking, start_cq = start_cq, start_select = start_select }
  local order = { "pending", "create_case", "start_cq", "start_select" }
  for _, way in ipairs(order) do ways[way]() end                 -- warm
  local m = { ratio = {}, start_cq_ratio = {}, start_select_ratio = {} }
  for _, way in ipairs(order) do m[way], m[way .. "_cpu"] = {}, {} end
  for r = 1, rounds do
    for k = 0, #order - 1 do
      local way = order[(r + k) % #order + 1]
      local wall, cpu = timed(ways[way])
      table.insert(m[way], wall * 1e6 / calls)
      table.insert(m[way .. "_cpu"], cpu * 1e6 / calls)
    end
    m.ratio[r] = m.pending_cpu[r] / m.create_case_cpu[r]
    m.start_cq_ratio[r] = m.start_cq_cpu[r] / m.create_case_cpu[r]
    m.start_select_ratio[r] = m.start_select_cpu[r] / m.create_case_cpu[r]
  end
  summary("single_cpu_ratio", m.ratio)
  summary("single_start_cq_cpu_ratio", m.start_cq_ratio)
  summary("single_start_select_cpu_ratio", m.start_select_ratio)
  for _, way in ipairs(order) do
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
