-- create_cases: many cases at once on one curl multi handle, against the
-- local Acquire server: order kept, errors in place, one request per item,
-- concurrency honoured, connections kept and the host looked up once, progress
-- reported, a raising on_progress cleaned up.
local acquire = require "acquire"
local helper = require "spec.helper"

local CONTACT = 597752

describe("client:create_cases", function()
  local srv = helper.server()
  local c
  setup(function() c = acquire.new{ base_url = srv.base_url, api_key = srv.key } end)
  teardown(function() c:close() end)

  local function items(n, f)
    local list = {}
    for i = 1, n do list[i] = f and f(i) or { CONTACT, { title = "case " .. i } } end
    return list
  end

  it("returns one result per item, in input order, errors in place", function()
    local list = items(30, function(i)
      return { i % 7 == 0 and 1 or CONTACT, { title = "case " .. i } }
    end)
    local results = c:create_cases(list, { concurrency = 6 })
    assert.equal(30, #results)
    for i, r in ipairs(results) do
      if i % 7 == 0 then
        assert.is_nil(r.res)
        assert.equal("http", r.err.kind)
        assert.equal(404, r.err.status)
        assert.equal(1, r.err.attempts)
        assert.equal("acquire: http 404: Contact not found", tostring(r.err))
      else
        assert.is_nil(r.err)
        assert.equal("case " .. i, r.res.data.title)
        assert.equal(2071, r.res.data.id)
      end
    end
  end)

  it("sends exactly one request per item, each with its own body", function()
    c:create_cases(items(25), { concurrency = 5 })
    local reqs = srv:requests()
    assert.equal(25, #reqs)
    local seen = {}
    for _, r in ipairs(reqs) do
      assert.equal(tostring(CONTACT), r.query.contactId)
      assert.equal("Bearer " .. srv.key, r.headers.authorization)
      seen[r.body] = (seen[r.body] or 0) + 1
    end
    for i = 1, 25 do assert.equal(1, seen['{"title":"case ' .. i .. '"}']) end
  end)

  it("keeps at most `concurrency` transfers in flight, and reaches it", function()
    srv:fault{ action = "delay", seconds = 0.4 }
    c:create_cases(items(12), { concurrency = 4 })
    local stats = srv:stats()
    assert.equal(4, stats.max_in_flight)
    assert.equal(12, stats.requests)
    assert.is_true(stats.connections <= 4, "connections: " .. stats.connections)
  end)

  it("reuses its connections from one batch to the next", function()
    c:create_cases(items(8), { concurrency = 2 })
    c:create_cases(items(8), { concurrency = 2 })
    assert.is_true(srv:stats().connections <= 2, "connections: " .. srv:stats().connections)
  end)

  it("keeps every connection for the next batch, however many are open", function()
    local fresh = acquire.new{ base_url = srv.base_url, api_key = srv.key }
    srv:fault{ action = "delay", seconds = 0.05 }        -- all 16 in flight at once
    fresh:create_cases(items(32), { concurrency = 16 })
    fresh:create_cases(items(32), { concurrency = 16 })
    fresh:close()
    assert.equal(16, srv:stats().connections)
  end)

  it("asks the resolver once for a new client's host, not once per connection", function()
    local lookups = helper.tmpfile("")
    local base_url = srv.base_url:gsub("127%.0%.0%.1", "acquire-spec.test")
    local code, out, err = helper.run_lua(([[
      local acquire = require "acquire"
      local c = acquire.new{ base_url = %q, api_key = %q }
      local list = {}
      for i = 1, 16 do list[i] = { 597752, { title = "case " .. i } } end
      for _, r in ipairs(c:create_cases(list, { concurrency = 16 })) do io.write(r.res and "." or "x") end
    ]]):format(base_url, srv.key), { env = helper.resolver_env("acquire-spec.test", 50, lookups) })
    local asked = select(2, helper.slurp(lookups):gsub("\n", ""))
    os.remove(lookups)
    assert.equal(0, code, err)
    assert.equal(("."):rep(16), out)
    -- up to 16 at once; fewer when early transfers end before later ones start and their connections
    -- are reused (15 under ASan; fewer still on a loaded machine: CI's test-all saw it): what counts
    -- is that several connections asked the resolver once
    local n = srv:stats().connections
    assert.is_true(n <= 16 and n >= 2, n .. " connections")
    assert.equal(1, asked)
  end)

  it("calls on_progress(done, total) as results arrive, ending at total", function()
    local calls = {}
    c:create_cases(items(10), { concurrency = 3, on_progress = function(done, total)
      calls[#calls + 1] = { done, total }
    end })
    assert.is_true(#calls >= 1)
    local last = 0
    for _, call in ipairs(calls) do
      assert.equal(10, call[2])
      assert.is_true(call[1] > last, "done only grows")
      last = call[1]
    end
    assert.equal(10, last)
  end)

  it("stops cleanly when on_progress raises: the error propagates, nothing stays in flight", function()
    srv:fault{ action = "delay", seconds = 0.3 }
    local ok, err = pcall(c.create_cases, c, items(6), { concurrency = 2, on_progress = function(done)
      if done >= 1 then error("stop the batch", 0) end
    end })
    assert.is_false(ok)
    assert.equal("stop the batch", err)
    assert.is_true(srv:stats().requests <= 3, "the rest was never sent")
    srv:reset()
    local results = c:create_cases(items(3), { concurrency = 2 })   -- still usable
    assert.equal(3, #results)
    assert.equal(2071, results[3].res.data.id)
  end)

  it("raises on a bad item before anything is sent, naming it", function()
    local list = items(5)
    list[4] = { CONTACT, { agentId = "x" } }
    local ok, err = pcall(c.create_cases, c, list)
    assert.is_false(ok)
    helper.contains(err, "bad item #4: bad field 'agentId' (integer expected, got string)")
    list[4] = { "12a" }
    ok, err = pcall(c.create_cases, c, list)
    assert.is_false(ok)
    helper.contains(err, "bad item #4: contactId must be a positive integer")
    assert.equal(0, srv:stats().requests)
  end)

  it("raises on bad options", function()
    assert.has_error(function() c:create_cases(items(1), { concurrency = 0 }) end)
    assert.has_error(function() c:create_cases(items(1), { concurrency = 65 }) end)
    assert.has_error(function() c:create_cases(items(1), { on_progress = 1 }) end)
    assert.has_error(function() c:create_cases(items(1), { nope = true }) end)
    assert.has_error(function() c:create_cases(items(1), { concurrency = 0 / 0 }) end)
    assert.has_error(function() c:create_cases(items(1), { concurrency = 2 ^ 40 }) end)
    assert.has_error(function() c:create_cases(items(1), { concurrency = 1.5 }) end)
    assert.has_error(function() c:create_cases(items(1), { ["concurrency\0"] = 2 }) end)
    assert.has_error(function() c:create_cases("x") end)
    assert.equal(0, srv:stats().requests)
  end)

  it("follows the retry policy per item: a 503 with Retry-After is retried, others wait for nobody", function()
    srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 2 }
    local results = c:create_cases(items(4), { concurrency = 4 })
    for i = 1, 4 do assert.equal(2071, results[i].res.data.id) end
    assert.equal(6, srv:stats().requests)           -- 4 items + 2 retries, no duplicate
  end)

  it("never retries what may have created a case", function()
    srv:fault{ action = "status", status = 500, times = 1 }
    local results = c:create_cases(items(3), { concurrency = 1 })
    assert.equal(500, results[1].err.status)
    assert.is_true(results[1].err.maybe_created)
    assert.equal(3, srv:stats().requests)
  end)

  it("gives {} for no items", function()
    assert.same({}, c:create_cases({}))
    assert.equal(0, srv:stats().requests)
  end)

  it("works through acquire.create_cases and the configured client", function()
    acquire.configure{ base_url = srv.base_url, api_key = srv.key }
    local results = acquire.create_cases(items(3), { concurrency = 2 })
    assert.equal(3, #results)
    assert.equal("case 2", results[2].res.data.title)
  end)

  it("frees its handles with the client", function()
    local d = acquire.new{ base_url = srv.base_url, api_key = srv.key }
    d:create_cases(items(4), { concurrency = 4 })
    d:close()
    assert.has_error(function() d:create_cases(items(1)) end, "acquire: client is closed")
  end)
end)
