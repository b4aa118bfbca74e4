-- create_cases for bulk work, against the local Acquire server: on_send runs before each
-- attempt leaves, on_result delivers each item once as it finishes, a raise in either stops
-- the batch with the client still usable; one rate for the whole batch, and one pause for the
-- whole batch when the server answers 429 with Retry-After.
--
--   BULK_SEED=n   the generator's seed (default: the time; printed in every failure)
local helper = require "spec.helper"
local socket = require "socket"

local CONTACT, OTHER = 597752, 1          -- OTHER: 404 Contact not found
local SEED = tonumber(os.getenv("BULK_SEED")) or os.time()

-- n items { contactId, { title = "case i" } }; f(i) may choose the contact.
local function items(n, f)
  local list = {}
  for i = 1, n do list[i] = { f and f(i) or CONTACT, { title = "case " .. i } } end
  return list
end

-- How many requests the server saw for each item (by its title).
local function sent_per_item(srv)
  local count = {}
  for _, r in ipairs(srv:requests()) do
    local i = tonumber(r.body:match('"case (%d+)"'))
    count[i] = (count[i] or 0) + 1
  end
  return count
end

describe("create_cases for bulk work", function()
  local srv = helper.server()
  local c
  setup(function() c = srv:client() end)
  teardown(function() c:close() end)

  describe("on_result", function()
    it("is called once per item, in the batch, with the very outcome the results table holds", function()
      local got, returned = {}, false
      local results = c:create_cases(items(20, function(i) return i % 5 == 0 and OTHER or CONTACT end), {
        concurrency = 4,
        on_result = function(i, res, err) got[#got + 1] = { i = i, res = res, err = err, early = not returned } end,
      })
      returned = true
      assert.equal(20, #got)
      local seen = {}
      for _, g in ipairs(got) do
        assert.is_true(g.early, "delivered before create_cases returned")
        assert.is_nil(seen[g.i], "item " .. g.i .. " delivered twice")
        seen[g.i] = true
        assert.is_true(rawequal(results[g.i].res, g.res) and rawequal(results[g.i].err, g.err))
        if g.i % 5 == 0 then assert.equal(404, g.err.status) else assert.equal("case " .. g.i, g.res.data.title) end
      end
    end)

    it("delivers the items that finish early while a slow one is still pending", function()
      -- item 1 holds one of the two slots; the others pass through the second one meanwhile
      srv:fault{ action = "delay", seconds = 0.6, contactId = OTHER }
      local t0, at = socket.gettime(), {}
      c:create_cases(items(6, function(i) return i == 1 and OTHER or CONTACT end), {
        concurrency = 2,
        on_result = function(i) at[i] = socket.gettime() - t0 end,
      })
      assert.is_true(at[1] >= 0.6, "the slow item took " .. at[1] .. " s")
      for i = 2, 6 do
        assert.is_true(at[i] < 0.5, ("item %d delivered at %.3f s, the slow one at %.3f s"):format(i, at[i], at[1]))
      end
    end)

    it("comes before on_progress: each on_progress(done) follows exactly done deliveries", function()
      local delivered, checked = 0, 0
      c:create_cases(items(15), { concurrency = 3,
        on_result = function() delivered = delivered + 1 end,
        on_progress = function(done)
          assert.equal(done, delivered)
          checked = checked + 1
        end,
      })
      assert.equal(15, delivered)
      assert.is_true(checked >= 1)
    end)

    it("with reconcile, delivers an uncertain item after its lookup, with the settled outcome", function()
      srv:fault{ action = "reset", create = true, times = 1 }
      local r = srv:client{ reconcile = 0, max_retries = 0 }
      local order, got = {}, {}
      local results = r:create_cases(items(3), { concurrency = 1, on_result = function(i, res, err)
        order[#order + 1] = i
        got[i] = { res, err }
      end })
      r:close()
      assert.same({ 2, 3, 1 }, order)
      assert.is_true(got[1][1].reconciled)
      assert.is_nil(got[1][2])
      assert.is_true(rawequal(results[1].res, got[1][1]))
    end)

    it("stops the batch when it raises: the error propagates, nothing more is sent, the client is usable", function()
      srv:fault{ action = "delay", seconds = 0.3 }
      local delivered = 0
      local ok, err = pcall(c.create_cases, c, items(8), { concurrency = 2, on_result = function()
        delivered = delivered + 1
        error("stop here", 0)
      end })
      assert.is_false(ok)
      assert.equal("stop here", err)
      assert.equal(1, delivered)
      socket.sleep(0.4)
      assert.is_true(srv:stats().requests <= 2, "no item started after the raise")
      srv:reset()
      local results = c:create_cases(items(3), { concurrency = 2 })
      assert.equal(2071, results[3].res.data.id)
    end)
  end)

  -- issue 17, finding 9: a hook's time is not the network's. The server answers in 0.3 s;
  -- on_result runs 2.5 s for the first item while the others are in flight, with timeout = 1:
  -- what arrived while it ran is read as arrived, never a timeout or maybe_created.
  describe("a slow hook", function()
    it("never turns an answered transfer into a timeout", function()
      srv:fault{ action = "delay", seconds = 0.3, endpoint = "create", times = 8 }
      local slow = srv:client{ timeout = 1, max_retries = 0 }
      local first
      local results = slow:create_cases(items(8), { concurrency = 8, on_result = function(i)
        if not first then first = i socket.sleep(2.5) end
      end })
      slow:close()
      for i = 1, 8 do
        assert(results[i].res, ("item %d: %s"):format(i, tostring(results[i].err)))
      end
      assert.equal(8, srv:stats().requests)
    end)

    it("a transfer whose answer does not come still times out", function()
      srv:fault{ action = "hang", endpoint = "create", times = 1 }
      local slow = srv:client{ timeout = 1, max_retries = 0 }
      local results = slow:create_cases(items(2), { concurrency = 2, on_result = function() socket.sleep(0.5) end })
      slow:close()
      local timeouts = 0
      for i = 1, 2 do
        if results[i].err then
          timeouts = timeouts + 1
          assert.equal("timeout", results[i].err.kind)
          assert.is_true(results[i].err.maybe_created)
          assert.matches("timed out after 1000 milliseconds", results[i].err.message)
        end
      end
      assert.equal(1, timeouts)
    end)
  end)

  -- on_wave(n): once a loop turn, after the on_send of the n attempts it started and before any
  -- of them can put a byte on the wire (a journal's group commit: one flush for the wave).
  describe("on_wave", function()
    it("runs before any request of its wave reaches the server", function()
      local sends, waves, seen = 0, {}, {}
      local results = c:create_cases(items(12), { concurrency = 4,
        on_send = function() sends = sends + 1 end,
        on_wave = function(n)
          waves[#waves + 1] = n
          -- every attempt started before this wave may have arrived; none of this wave's
          seen[#seen + 1] = { srv:stats().requests, sends - n }
        end })
      for i = 1, 12 do assert.truthy(results[i].res) end
      local total = 0
      for i, n in ipairs(waves) do
        total = total + n
        assert.is_true(seen[i][1] <= seen[i][2], ("wave %d: %d requests received, %d sent before it")
          :format(i, seen[i][1], seen[i][2]))
      end
      assert.equal(12, total)
      assert.equal(1, waves[1])                         -- the first transfer goes alone
    end)

    it("raising stops the batch: nothing of that wave is sent", function()
      local msg = helper.raises(c.create_cases, c, items(6), { concurrency = 3,
        on_wave = function() error("disk full") end })
      helper.contains(msg, "disk full")
      assert.equal(0, srv:stats().requests)
    end)
  end)

  describe("on_send", function()
    it("runs before each attempt, retries included; the server never sees a request before it", function()
      srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = 3 }
      local calls, early = {}, {}
      local results = c:create_cases(items(10), { concurrency = 3, on_send = function(i, attempt)
        local seen = srv:stats().requests
        if seen > #calls then early[#early + 1] = ("%d requests before on_send #%d"):format(seen, #calls + 1) end
        calls[#calls + 1] = { i, attempt }
      end })
      assert.same({}, early)
      assert.equal(13, #calls)
      assert.equal(13, srv:stats().requests)
      local attempts, sent = {}, sent_per_item(srv)
      for _, call in ipairs(calls) do
        local i, attempt = call[1], call[2]
        assert.equal((attempts[i] or 0) + 1, attempt, "attempts of item " .. i .. " count up from 1")
        attempts[i] = attempt
      end
      for i = 1, 10 do
        assert.equal(sent[i], attempts[i], "item " .. i)
        assert.equal(2071, results[i].res.data.id)
      end
    end)

    it("stops the batch when it raises: that attempt is never sent, nor anything after it", function()
      srv:fault{ action = "delay", seconds = 0.2 }
      local returned = 0
      local ok, err = pcall(c.create_cases, c, items(8), { concurrency = 2, on_send = function(i)
        if i == 4 then error("not item 4", 0) end
        returned = returned + 1
      end })
      assert.is_false(ok)
      assert.equal("not item 4", err)
      assert.equal(3, returned)
      socket.sleep(0.3)
      local sent = sent_per_item(srv)
      assert.is_nil(sent[4])
      for i = 5, 8 do assert.is_nil(sent[i]) end
      assert.is_true(srv:stats().requests <= 3)
      srv:reset()
      local results = c:create_cases(items(2), { on_send = function() end })
      assert.equal(2071, results[2].res.data.id)
    end)

    it("is checked like the other options", function()
      local function raises(opts) return helper.raises(c.create_cases, c, items(1), opts) end
      helper.contains(raises{ on_send = 1 }, "bad option 'on_send' (function expected, got number)")
      helper.contains(raises{ on_result = "f" }, "bad option 'on_result' (function expected, got string)")
      helper.contains(raises{ nope = true },
        "bad option 'nope' (expected one of: claimed, concurrency, journal, on_progress, on_result, "
        .. "on_send, on_wave, rate, resend_uncertain)")
      assert.equal(0, srv:stats().requests)
    end)
  end)

  describe("rate", function()
    it("starts at most `rate` requests a second over the whole batch, retries included", function()
      srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = 10 }
      local patient = srv:client{ max_retries = 10 }   -- the 503s may all fall on one item
      local t0 = socket.gettime()
      local results = patient:create_cases(items(100), { concurrency = 8, rate = 50 })
      local took = socket.gettime() - t0
      patient:close()
      local sent = srv:stats().requests
      assert.equal(110, sent)
      for i = 1, 100 do assert.equal(2071, results[i].res.data.id) end
      -- a start every 1/50 s at the most, the first at once: (sent - 1) / 50 s at least
      assert.is_true(took >= 1.9 and took >= (sent - 1) / 50 - 0.01, ("%d requests in %.3f s"):format(sent, took))
    end)

    -- issue 17, finding 8: 1e-9 (a wait of 31 years) and 1e-300 (an overflowing sleep) are refused
    it("is checked: a number of requests per second from 0.01 to 10000", function()
      local want = "bad option 'rate' (requests per second expected: a number from 0.01 to 10000)"
      for _, bad in ipairs({ 0, -1, 0 / 0, 10001, math.huge, "5", true, 1e-9, 1e-300, 0.0099 }) do
        helper.contains(helper.raises(c.create_cases, c, items(1), { rate = bad }), want)
      end
      assert.equal(0, srv:stats().requests)
      assert.equal(2071, c:create_cases(items(1), { rate = 10000 })[1].res.data.id)
      -- and it returns once its one item is answered, not 1 / rate = 100 s after that item started
      local t0 = socket.gettime()
      assert.equal(2071, c:create_cases(items(1), { rate = 0.01 })[1].res.data.id)
      local took = socket.gettime() - t0
      assert.is_true(took < 50, ("one item at rate 0.01 took %.1f s"):format(took))
    end)
  end)

  describe("a 429 with Retry-After", function()
    it("pauses the whole batch: no new request starts until then, transfers in flight go on", function()
      srv:fault{ action = "delay", seconds = 0.5, contactId = OTHER }
      srv:fault{ action = "status", status = 429, headers = { ["Retry-After"] = "1" }, contactId = CONTACT,
                 during = 1 }
      local t0, at = socket.gettime(), {}
      local results = c:create_cases(items(12, function(i) return i == 1 and OTHER or CONTACT end), {
        concurrency = 4, on_result = function(i) at[i] = socket.gettime() - t0 end })
      local reqs = srv:requests()
      local first_429
      for _, r in ipairs(reqs) do
        if r.query.contactId == tostring(CONTACT) and not first_429 then first_429 = r end
      end
      -- the first four were sent together, before any answer; every later one waited out the pause
      for _, r in ipairs(reqs) do
        if r.seq > 4 then
          assert.is_true(r.time >= first_429.time + 1,
            ("request #%d came %.3f s after the first 429"):format(r.seq, r.time - first_429.time))
        end
      end
      assert.equal(12 + 3, #reqs)                   -- items 2, 3, 4 sent twice, once paused
      assert.equal(404, results[1].err.status)
      assert.is_true(at[1] >= 0.45 and at[1] < 0.95, "the slow item, in flight, went on: " .. at[1])
      for i = 2, 12 do assert.equal(2071, results[i].res.data.id) end
    end)
  end)

  describe("drawn at random (seed " .. SEED .. ")", function()
    -- One batch: size, concurrency and the server's answers drawn from the seed.
    local function round()
      local n = math.random(0, 30)
      local list = items(n, function() return math.random() < 0.2 and OTHER or CONTACT end)
      local faults = {
        { action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = math.random(0, 4) },
        { action = "status", status = 500, times = math.random(0, 2) },
        { action = "delay", seconds = 0.05, times = math.random(0, 5) },
      }
      for _ = 1, math.random(0, #faults) do srv:fault(table.remove(faults, math.random(#faults))) end
      local got, sends = {}, {}
      local opts = { concurrency = math.random(1, 8), rate = math.random() < 0.3 and math.random(200, 2000) or nil,
        on_result = function(i, res, err) got[#got + 1] = { i, res, err } end,
        on_send = function(i, attempt) sends[#sends + 1] = { i, attempt } end }
      local results = c:create_cases(list, opts)
      local what = ("%d items at concurrency %d, rate %s"):format(n, opts.concurrency, tostring(opts.rate))
      assert(#results == n and #got == n, what .. ": " .. #got .. " on_result calls")
      local once = {}
      for _, g in ipairs(got) do
        local i = g[1]
        assert(not once[i], what .. ": item " .. i .. " delivered twice")
        once[i] = true
        assert(rawequal(results[i].res, g[2]) and rawequal(results[i].err, g[3]),
          what .. ": item " .. i .. " delivered another outcome than its result")
      end
      local sent = sent_per_item(srv)
      local per = {}
      for _, s in ipairs(sends) do
        assert(s[2] == (per[s[1]] or 0) + 1, what .. ": item " .. s[1] .. " attempt " .. s[2] .. " out of order")
        per[s[1]] = s[2]
      end
      for i = 1, n do
        assert(sent[i] == per[i], ("%s: item %d: %s requests, %s on_send calls"):format(what, i,
          tostring(sent[i]), tostring(per[i])))
      end
    end

    it("calls on_result once per item with its result, and on_send once per request", function()
      math.randomseed(SEED)
      for r = 1, 10 do
        srv:reset()
        local ok, err = pcall(round)
        if not ok then
          error(("seed %d, round %d (rerun with BULK_SEED=%d): %s"):format(SEED, r, SEED, tostring(err)), 0)
        end
      end
    end)
  end)
end)

-- Issue 21: create_cases streams. An iterator (a function returning the next item, nil at
-- the end) is read as the batch goes; its results are not kept (on_result has them), and
-- the return value counts them by outcome.
describe("create_cases over an iterator", function()
  local srv = helper.server()

  local function from(list)
    local i = 0
    return function() i = i + 1 return list[i] end
  end

  it("sends every item, hands each to on_result, and returns counts by outcome", function()
    local c = srv:client()
    local list = {}
    for i = 1, 30 do list[i] = { i % 10 == 0 and OTHER or CONTACT, { title = "s" .. i } } end
    local got, totals = {}, {}
    local counts = c:create_cases(from(list), { concurrency = 4,
      on_result = function(i, res, err) got[i] = res and "res" or err.kind end,
      on_progress = function(_, total) totals[#totals + 1] = total == nil end })
    c:close()
    assert.same({ total = 30, created = 27, failed = 3, uncertain = 0 }, counts)
    for i = 1, 30 do assert.equal(i % 10 == 0 and "http" or "res", got[i], "item " .. i) end
    assert.is_true(#totals > 0 and totals[1])          -- the total is not known ahead
    assert.equal(30, srv:stats().requests)
  end)

  it("with a rate, ends when its last item is answered, not 1 / rate later", function()
    local c = srv:client()
    local t0 = socket.gettime()
    local counts = c:create_cases(from({ { CONTACT }, { CONTACT } }), { rate = 0.2 })   -- a start every 5 s
    local took = socket.gettime() - t0
    c:close()
    assert.same({ total = 2, created = 2, failed = 0, uncertain = 0 }, counts)
    assert.is_true(took < 9, ("two items at rate 0.2 took %.1f s"):format(took))
  end)

  it("checks each item as it is drawn: a bad one raises, naming it; nothing of it is sent", function()
    local c = srv:client()
    local list = { { CONTACT }, { CONTACT }, { "x" }, { CONTACT } }
    local msg = helper.raises(c.create_cases, c, from(list), { concurrency = 1 })
    helper.contains(msg, "bad item #3: contactId must be a positive integer")
    assert.is_true(srv:stats().requests <= 2)
    assert.truthy(c:create_case(CONTACT))                -- the client is whole
    c:close()
  end)

  it("keeps nothing per item: memory after 3,000 items is what it was after 300", function()
    local c = srv:client()
    local function items_of(n)
      local i = 0
      return function() i = i + 1 if i <= n then return { CONTACT, { title = "m" } } end end
    end
    local function live_kib(n)
      c:create_cases(items_of(n), { concurrency = 8, on_result = function() end })
      collectgarbage() collectgarbage()
      return collectgarbage("count")
    end
    live_kib(100)                                        -- warm: the pool, connections
    local small = live_kib(300)
    local big = live_kib(3000)
    c:close()
    assert(big - small < 256, ("%.0f KiB after 300 items, %.0f KiB after 3,000"):format(small, big))
  end)
end)
