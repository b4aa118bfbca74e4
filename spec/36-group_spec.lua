-- A group of pending calls (client:group(), src/group.c): many calls of one client on one multi
-- handle and one descriptor, stepped together. A generator draws rounds of calls started at
-- random points of a cqueues loop (some cancelled), against a server misbehaving for a random
-- number of them, and checks each call is reported by g:step() exactly once, with an outcome
-- client:create_case gives for the same behaviour, never more POSTs and never a second case;
-- then a call joining while the loop sleeps, a call driven on its own, close and collection,
-- misuse, a fork()ed child, and descriptors. Lua 5.1-5.4 and LuaJIT (Debian's lua-cqueues).
local helper = require "spec.helper"
local cqueues = require "cqueues"

local CONTACT = 597752
local CREATE = helper.API_PATH
local now = cqueues.monotime

-- The server behaviours (a rule for srv:fault, applied to the first `times` creates), and the
-- client's options: every wait short.
local KINDS = {
  { name = "created" },
  { name = "404", rule = { action = "status", status = 404, body = '{"message":"Contact not found"}' } },
  { name = "500 after create, reconciled", rule = { action = "status", status = 500, create = true } },
  { name = "503 Retry-After, retried", rule = { action = "status", status = 503,
                                                headers = { ["Retry-After"] = "1" } } },
  { name = "reset after create, reconciled", rule = { action = "reset", create = true } },
  { name = "reset before create", rule = { action = "reset" } },
  -- answered, then the connection closed while idle in the group's set (a keep-alive that ran
  -- out): the next call finds it closed, and its new socket often takes the same number. A
  -- call that reused it just as the server closed it (the keep-alive race: its request left,
  -- nothing came back) ends in a network error, as create_case would there; its lookup must
  -- then be right that no case exists.
  { name = "answered, then hung up", rule = { action = "hangup", seconds = 0.05 }, race = true },
}
for _, k in ipairs(KINDS) do if k.rule then k.rule.endpoint = "create" end end   -- reads answer normally
local CLIENT = { reconcile = 0, max_retries = 2, timeout = 8 }

-- What must agree between two calls for the same behaviour (no ids, times or titles).
local function outcome(res, err)
  if res then return ("res: status=%s reconciled=%s"):format(tostring(res.data.status), tostring(res.reconciled)) end
  return ("err: kind=%s status=%s maybe_created=%s attempts=%s reconcile=%s"):format(tostring(err.kind),
    tostring(err.status), tostring(err.maybe_created), tostring(err.attempts), tostring(err.reconcile))
end

-- POSTs and stored cases by title.
local function by_title(srv)
  local posts, cases = {}, {}
  for _, r in ipairs(srv:requests()) do
    if r.method == "POST" and r.path:find(CREATE, 1, true) then
      local t = (r.body or ""):match('"title":"([^"]*)"') or "?"
      posts[t] = (posts[t] or 0) + 1
    end
  end
  for _, c in ipairs(srv:cases()) do cases[c.title] = (cases[c.title] or 0) + 1 end
  return posts, cases
end

describe("a group of pending calls", function()
  local srv = helper.server()

  -- create_case's outcome and POSTs for each behaviour (a rule for every request), once
  local reference
  local function expected()
    if reference then return reference end
    reference = {}
    for _, k in ipairs(KINDS) do
      srv:reset()
      if k.rule then srv:fault(k.rule) end
      local c = srv:client(CLIENT)
      local o = outcome(c:create_case(CONTACT, { title = "reference" }))
      reference[k.name] = { outcome = o, posts = (by_title(srv)).reference or 0 }
      c:close()
    end
    srv:reset()
    return reference
  end

  it("(a generator) reports each call once, with an outcome create_case gives, never more POSTs or cases", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    math.randomseed(seed)
    local ref = expected()
    for round = 1, tonumber(os.getenv("GROUP_ROUNDS") or "") or 6 do
      local kind = KINDS[math.random(#KINDS)]
      local n = math.random(1, 16)
      local hit = math.random(0, n)                       -- creates the rule answers; the rest succeed
      local delay = math.random(0, 4) / 10
      local why = ("SPEC_SEED=%d, round %d: %d calls, %s for %d of them, after %.1f s"):format(
        seed, round, n, kind.name, hit, delay)
      srv:reset()
      if kind.rule and hit > 0 then
        local r = { times = hit, delay = delay > 0 and delay or nil }
        for k, v in pairs(kind.rule) do r[k] = v end
        srv:fault(r)
      elseif delay > 0 then
        srv:fault{ action = "delay", seconds = delay }
      end
      local c = srv:client(CLIENT)
      local g = c:group()
      local calls, reported, cancelled, left = {}, {}, {}, n
      local cq = cqueues.new()
      cq:wrap(function()
        local open = 0
        while left > 0 or open > 0 do
          -- start some (always one when the group is empty: an empty group has nothing to wake it)
          while left > 0 and (open == 0 or math.random(3) == 1) do
            local title = ("r%d-%d"):format(round, n - left + 1)
            local p = g:start_case(CONTACT, { title = title })
            calls[#calls + 1] = { p = p, title = title }
            left, open = left - 1, open + 1
          end
          if math.random(12) == 1 then                    -- cancel one that may be on its way
            local e = calls[math.random(#calls)]
            if not e.p:done() then e.p:cancel(); cancelled[e.p] = true end
          end
          if math.random(2) == 1 then cqueues.poll(g) end
          for _, p in ipairs(g:step()) do
            assert(not reported[p], why .. ": a call reported twice")
            assert(p:done(), why .. ": reported unfinished")
            reported[p] = true
            open = open - 1
          end
          assert(g:count() == open, why .. (": count %d, %d unfinished"):format(g:count(), open))
        end
      end)
      assert(cq:loop())
      local posts, cases = by_title(srv)
      local allowed = { [ref.created.outcome] = true, [ref[kind.name].outcome] = true }
      for i, e in ipairs(calls) do
        local what = ("%s, call %d (%s)"):format(why, i, e.title)
        assert(reported[e.p], what .. ": never reported")
        local res, err = e.p:result()
        if cancelled[e.p] then
          assert(not res and err.kind == "cancelled", what .. ": cancelled, yet " .. outcome(res, err))
        else
          local raced = kind.race and err and err.kind == "network" and err.reconcile == "not found"
          assert(allowed[outcome(res, err)] or raced, what .. ": " .. outcome(res, err)
            .. ", create_case gives " .. ref.created.outcome .. " or " .. ref[kind.name].outcome)
          if raced then
            assert((cases[e.title] or 0) == 0, what .. ": its lookup found no case, yet one exists")
          end
          if res then assert(res.data.title == e.title, what .. ": another call's case") end
        end
        assert((posts[e.title] or 0) <= math.max(ref.created.posts, ref[kind.name].posts),
          what .. ": " .. tostring(posts[e.title]) .. " POSTs")
        assert((cases[e.title] or 0) <= 1, what .. ": more than one case")
      end
      g:close()
      c:close()
    end
  end)

  it("keeps idle connections in its set without spinning: one the server closes while a call "
    .. "waits out a Retry-After wakes the loop once or twice, not for the whole wait", function()
    -- Two calls answered at once, the first request to arrive normally, its connection then
    -- closed by the server (idle, in the set: readable), the second with a 503 whose call waits
    -- 1 s to retry. A set left readable would wake the loop without end.
    srv:fault{ action = "hangup", seconds = 0.2, endpoint = "create", times = 1 }
    srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" },
               endpoint = "create", times = 1 }
    local c = srv:client(CLIENT)
    local g = c:group()
    local a, b = g:start_case(CONTACT, { title = "a" }), g:start_case(CONTACT, { title = "b" })
    local steps, t0 = 0, now()
    local cq = cqueues.new()
    cq:wrap(function()
      while g:count() > 0 do
        cqueues.poll(g)
        g:step()
        steps = steps + 1
      end
    end)
    assert(cq:loop())
    assert.equal("a", assert(a:result()).data.title)
    assert.equal("b", assert(b:result()).data.title)
    assert(now() - t0 >= 0.9, "B did not wait out its Retry-After")
    assert(steps < 40, ("%d steps for two calls and a 1 s wait: the loop spun"):format(steps))
    -- and the next call, on a new connection (the closed one is found so), is answered
    local p = g:start_case(CONTACT, { title = "c" })
    cq:wrap(function() while not p:done() do cqueues.poll(g) g:step() end end)
    assert(cq:loop())
    assert.equal("c", assert(p:result()).data.title)
    c:close()
  end)

  it("wakes a loop asleep on the group when a call joins, and sends it at once", function()
    srv:fault{ action = "delay", seconds = 2, times = 1 }
    local c = srv:client(CLIENT)
    local g = c:group()
    local first = g:start_case(CONTACT, { title = "slow" })
    local second, t0, sent_after
    local cq = cqueues.new()
    cq:wrap(function()                                    -- the loop: steps the group as it wakes
      t0 = now()
      while not (first:done() and second and second:done()) do
        cqueues.poll(g)
        for _, p in ipairs(g:step()) do
          if p == second then sent_after = now() - t0 end
        end
      end
    end)
    cq:wrap(function()                                    -- joins 0.2 s later, from elsewhere
      cqueues.sleep(0.2)
      second = g:start_case(CONTACT, { title = "joined" })
    end)
    assert(cq:loop())
    assert(first:result())
    assert.equal("joined", assert(second:result()).data.title)
    assert(sent_after < 1.5, ("the joined call ended %.2f s in: it waited for the slow one"):format(sent_after))
    c:close()
  end)

  it("lets each call be driven on its own (p:step() steps the group); g:step() still reports it once", function()
    local c = srv:client(CLIENT)
    local g = c:group()
    local ps = { g:start_case(CONTACT, { title = "a" }), g:start_case(CONTACT, { title = "b" }) }
    local cq = cqueues.new()
    for _, p in ipairs(ps) do cq:wrap(function() while not p:step() do cqueues.poll(p) end end) end
    assert(cq:loop())
    local got = g:step()
    assert.equal(2, #got)
    assert.same({}, g:step())
    assert.equal("a", assert(ps[1]:result()).data.title)
    assert.equal("b", assert(ps[2]:result()).data.title)
    assert.equal(0, g:count())
    c:close()
  end)

  it("g:close() and collection cancel its unfinished calls (warn lines where the request left); "
     .. "client:close() makes g:step() raise", function()
    srv:fault{ action = "delay", seconds = 3 }
    local lines = {}
    local c = srv:client{ logger = function(level, line) lines[#lines + 1] = level .. ": " .. line end }
    local g = c:group()
    local unsent = g:start_case(CONTACT, { title = "unsent" })
    g:close()                                             -- before any step: nothing left
    local _, err = unsent:result()
    assert.equal("cancelled", err.kind)
    assert.is_false(err.maybe_created)
    helper.contains(helper.raises(g.step, g), "the group is closed")
    helper.contains(helper.raises(g.start_case, g, CONTACT, {}), "the group is closed")
    g:close()                                             -- (again: nothing)
    g = c:group()
    g:start_case(CONTACT, { title = "collected" })
    local deadline = now() + 10
    repeat g:step() until srv:stats().in_flight >= 1 or now() > deadline
    assert.equal(1, srv:stats().in_flight)
    g = nil                                               -- luacheck: ignore (dropped for the collector)
    for _ = 1, 4 do collectgarbage() end
    assert.same({ "warn: a pending call for contact 597752 was collected unfinished after its request "
      .. "was sent: its case may exist" }, lines)
    g = c:group()
    local p = g:start_case(CONTACT, { title = "closed" })
    g:step()
    c:close()
    assert(p:done())
    assert.equal("cancelled", select(2, p:result()).kind)
    helper.contains(helper.raises(g.step, g), "client is closed")
    helper.contains(helper.raises(g.start_case, g, CONTACT, {}), "client is closed")
    helper.contains(helper.raises(c.group, c), "client is closed")
  end)

  it("its client's logger (which runs inside its step) cannot step, start, close or cancel in it: "
     .. "a clear raise, and every call goes on to its answer", function()
    local g, ps, raised = nil, {}, {}
    local c = srv:client{ reconcile = 0, debug = true, logger = function()   -- a line every attempt
      if not ps[2] then return end                          -- (start_case's own lines)
      for _, m in ipairs{ "step", "start_case", "close", "cancel" } do
        local ok, e = pcall(function()
          if m == "cancel" then ps[2]:cancel() elseif m == "start_case" then g:start_case(CONTACT, {})
          else g[m](g) end
        end)
        raised[#raised + 1] = not ok and e or ("no raise from " .. m)
      end
    end }
    g = c:group()
    ps[1] = g:start_case(CONTACT, { title = "logged 1" })
    ps[2] = g:start_case(CONTACT, { title = "logged 2" })
    local cq = cqueues.new()
    cq:wrap(function() while g:count() > 0 do cqueues.poll(g); g:step() end end)
    assert(cq:loop())
    assert(#raised >= 4)
    for _, e in ipairs(raised) do helper.contains(e, "a client cannot be used from its own logger") end
    assert.equal("logged 1", assert(ps[1]:result()).data.title)
    assert.equal("logged 2", assert(ps[2]:result()).data.title)
    g:close()
    c:close()
  end)

  it("raises on misuse as start_case does, before anything is sent", function()
    local c = srv:client(CLIENT)
    local g = c:group()
    helper.contains(helper.raises(function() local p = g:start_case("12a", {}) return p end),  -- (no tail call: named)
      "bad argument #1 to 'start_case' (contactId must be a positive integer, got '12a')")   -- (a method: Lua counts from after self)
    helper.contains(helper.raises(function() return g:start_case(CONTACT, { agentId = "x" }) end),
      "bad field 'agentId' (integer expected, got string)")
    helper.contains(helper.raises(g.step, nil), "acquire.Group expected")
    assert.equal(0, g:count())
    assert.same({}, g:step())
    assert.equal(0, #srv:requests())
    c:close()
  end)

  it("raises when a fork()ed child steps it; the parent's calls go on", function()
    local posix = helper.testposix()
    srv:fault{ action = "delay", seconds = 0.3 }
    local c = srv:client(CLIENT)
    local g = c:group()
    local p = g:start_case(CONTACT, { title = "forked" })
    local pid = posix.fork()
    if pid == 0 then
      local ok, msg = pcall(g.step, g)
      posix._exit((not ok and tostring(msg):find("a group of pending calls cannot be driven in a child process",
        1, true)) and 0 or 1)
    end
    assert.equal(0, posix.waitpid(pid))
    local cq = cqueues.new()
    cq:wrap(function() while not p:done() do cqueues.poll(g); g:step() end end)
    assert(cq:loop())
    assert.equal("forked", assert(p:result()).data.title)
    c:close()
  end)

  it("holds its descriptors while it lives, and gives them back when collected or closed", function()
    local posix = helper.testposix()
    local function fds()
      local f = io.popen("ls /proc/" .. posix.getpid() .. "/fd")
      local _, n = f:read("*a"):gsub("\n", "")
      f:close()
      return n - 1
    end
    local c = srv:client(CLIENT)
    do                                                    -- its connection, and cqueues' own poller
      local g = c:group()
      local p = g:start_case(CONTACT, { title = "warm" })
      while not p:step() do cqueues.poll(p) end
      g:close()
    end
    collectgarbage()
    collectgarbage()
    local before = fds()
    for i = 1, 20 do
      local g = c:group()
      local p = g:start_case(CONTACT, { title = "g" .. i })
      while not p:step() do cqueues.poll(p) end
      if i % 2 == 0 then g:close() end
    end
    collectgarbage()
    collectgarbage()
    assert(fds() - before <= 2, ("%d descriptors more than before"):format(fds() - before))
    c:close()
  end)
end)
