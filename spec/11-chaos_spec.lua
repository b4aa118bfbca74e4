-- Chaos: a case is never created twice. The chaos server answers each request
-- it reads with a random behaviour (created or refused; delivered in full,
-- cut short, garbled, badly framed, or not at all: spec/server/chaos_server.py);
-- spec/chaos.lua checks every call against what the server received.
--   CHAOS_SEED=n   the seed (default: the time; printed in every failure)
--   CHAOS_CALLS=n  calls in all, shared among the three paths (default 1000)
--   CHAOS_VERBOSE=1  prints what the server did, counted by delivery
--   CHAOS_DUMP=file  on a failure, writes every call and reception there
--   CHAOS_DEBUG=1    the client's debug = true (the exchanges on stderr)
local acquire = require "acquire"
local chaos = require "spec.chaos"

local SEED = tonumber(os.getenv("CHAOS_SEED")) or os.time()
local CALLS = tonumber(os.getenv("CHAOS_CALLS")) or 1000
local CONTACT = 597752

describe("chaos #chaos", function()
  local srv, cfg, client
  local n = 0
  local function marker()
    n = n + 1
    return ("chaos-%d-%d"):format(SEED, n)
  end
  -- create_case is client:create_case or acquire.create_case
  local function one(create_case, path)
    local m = marker()
    return chaos.call(path, m, function() return create_case(CONTACT, { title = m }) end,
                      chaos.bound(cfg))
  end
  local function on_client(...) return client:create_case(...) end
  local function assert_promise(calls)
    local log = chaos.log(srv)
    if os.getenv("CHAOS_VERBOSE") then io.stderr:write("\n", chaos.tally(log), "\n") end
    local ok, why = chaos.check(calls, log, SEED)
    if not ok and os.getenv("CHAOS_DUMP") then chaos.dump(os.getenv("CHAOS_DUMP"), calls, log) end
    assert(ok, why)
    return log
  end

  setup(function()
    math.randomseed(SEED)
    srv = chaos.start(SEED)
    cfg = chaos.client_config(srv)
    client = acquire.new(cfg)
  end)
  teardown(function()
    if client then client:close() end
    if srv then srv:stop() end
  end)
  before_each(function() chaos.reset(srv) end)

  it("client:create_case, one long-lived client: never created twice (seed " .. SEED .. ")", function()
    local calls = {}
    for i = 1, math.floor(CALLS * 0.4) do calls[i] = one(on_client, "create_case") end
    assert_promise(calls)
  end)

  it("client:create_cases, random batches: never created twice (seed " .. SEED .. ")", function()
    local calls, left = {}, math.floor(CALLS * 0.4)
    while left > 0 do
      local size = math.min(left, math.random(1, 40))
      local conc = math.random(1, 16)
      local items = {}
      for i = 1, size do items[i] = { CONTACT, { title = marker() } } end
      for _, call in ipairs(chaos.batch(client, items, conc, chaos.batch_bound(cfg, size, conc))) do
        calls[#calls + 1] = call
      end
      left = left - size
    end
    assert_promise(calls)
  end)

  it("acquire.create_case through acquire.configure: never created twice (seed " .. SEED .. ")", function()
    acquire.configure(cfg)
    local calls = {}
    for i = 1, CALLS - 2 * math.floor(CALLS * 0.4) do calls[i] = one(acquire.create_case, "acquire.create_case") end
    assert_promise(calls)
  end)

  describe("pinned behaviours", function()
    for _, v in ipairs{ "hello", "http12", "abc", "foo" } do
      it("a status line libcurl rejects (" .. v .. ") after the request was read: sent once, maybe_created", function()
        -- as many as the client would send: a resend gets the same answer
        chaos.force(srv, { { answer = "ok", delivery = "garbage", variant = v, count = 3 } })
        local call = one(on_client, "create_case")
        local log = assert_promise{ call }
        assert.equal(1, #log, "receptions (seed " .. SEED .. ")")
        assert.is_nil(call.res)
        assert.is_true(call.err.maybe_created)
        assert.equal(1, call.err.attempts)
      end)
    end

    it("429 or 503 with Retry-After: 0, then 200: sent twice, one case", function()
      chaos.force(srv, { { answer = "retry0", delivery = "keepalive" }, { answer = "ok", delivery = "keepalive" } })
      local call = one(on_client, "create_case")
      local log = assert_promise{ call }
      assert.equal(2, #log)
      assert.is_true(log[1].retry_ok)
      assert.equal(log[2].case_id, call.res.data.id)
    end)

    it("reset right after the answer's headers: network, status 200, maybe_created, sent once", function()
      chaos.force(srv, { { answer = "ok", delivery = "trunc_rst", cut = "headers", count = 3 } })
      local call = one(on_client, "create_case")
      local log = assert_promise{ call }
      assert.equal(1, #log)
      assert.equal("network", call.err.kind)
      assert.is_true(call.err.maybe_created)
    end)

    it("429 or 503 with Retry-After: 0 whose head never ends (FIN after its header lines): not a whole answer, sent once", function()
      -- libcurl 7.88 returns CURLE_OK, status 429, for a head cut before its blank line
      chaos.force(srv, { { answer = "retry0", delivery = "trunc_fin", cut = "head_open", count = 3 } })
      local call = one(on_client, "create_case")
      local log = assert_promise{ call }
      assert.equal(1, #log)
      assert.is_true(call.err.maybe_created)
    end)

    it("headers read, body not, connection reset: maybe_created (the client cannot know), sent once", function()
      chaos.force(srv, { { delivery = "headers_only_rst", count = 3 } })
      local call = one(on_client, "create_case")
      local log = assert_promise{ call }
      assert.equal(1, #log)
      assert.is_false(log[1].full)
      assert.is_true(call.err.maybe_created)
    end)
  end)
end)
