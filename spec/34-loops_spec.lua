-- In an event loop: acquire.cqueues and acquire.luv over the pending call (client:start_case,
-- src/pending.c), and Neovim's vim.loop (#nvim). Against the local server: many calls at once
-- never block the loop (a 50 ms ticker keeps ticking through calls that each take 1 s); each
-- call's outcome is the one client:create_case gives for the same server behaviour, and no call
-- sends its POST more often than client:create_case does; cancel, result() too early, a
-- callback that raises, a call collected unfinished, a closed client, a fork()ed child, a yield
-- across a C boundary. Lua 5.1-5.4 and LuaJIT (Debian's lua-cqueues and lua-luv).
local helper = require "spec.helper"
local cqueues = require "cqueues"
local uv = require "luv"
local aq_cq = require "acquire.cqueues"
local aq_uv = require "acquire.luv"

local CONTACT = 597752
local CREATE = "/api/v1/crm/messenger/chat/create"
local now = cqueues.monotime

-- The server behaviours both drivers are checked against (a rule for srv:fault, or none).
local KINDS = {
  { name = "created" },
  { name = "404", rule = { action = "status", status = 404, body = '{"message":"Contact not found"}' } },
  { name = "500 after create, reconciled", rule = { action = "status", status = 500, create = true, times = 1 } },
  { name = "503 Retry-After, retried", rule = { action = "status", status = 503, times = 1,
                                                headers = { ["Retry-After"] = "1" } } },
  { name = "reset after create, reconciled", rule = { action = "reset", create = true, times = 1 } },
}

local CLIENT = { reconcile = 0, max_retries = 2, timeout = 8 }

-- What must agree between two calls for the same behaviour (no ids or times).
local function outcome(res, err)
  if res then
    return ("res: title=%s status=%s reconciled=%s"):format(tostring(res.data.title),
      tostring(res.data.status), tostring(res.reconciled))
  end
  return ("err: kind=%s status=%s maybe_created=%s attempts=%s reconcile=%s message=%s"):format(
    tostring(err.kind), tostring(err.status), tostring(err.maybe_created), tostring(err.attempts),
    tostring(err.reconcile), tostring(err.message))
end

local function posts(srv)
  local n = 0
  for _, r in ipairs(srv:requests()) do
    if r.method == "POST" and r.path:find(CREATE, 1, true) then n = n + 1 end
  end
  return n
end

-- The server's rule for a kind, with a delay (s) before it answers.
local function arrange(srv, kind, delay)
  srv:reset()
  if kind.rule then
    local r = {}
    for k, v in pairs(kind.rule) do r[k] = v end
    if delay and delay > 0 then r.delay = delay end
    srv:fault(r)
  elseif delay and delay > 0 then
    srv:fault{ action = "delay", seconds = delay }
  end
end

-- ---- the drivers: calls[i] = { client, opts } all at once -> { { res, err } }, elapsed, and how
-- often a 50 ms ticker on the same loop ran while every call was still waiting (a driver that
-- blocks the loop lets it run only once the calls are over)

local function run_cqueues(calls)
  local cq, out, left = cqueues.new(), {}, #calls
  local t0, ticks = now(), 0
  for i, c in ipairs(calls) do
    cq:wrap(function()
      out[i] = { aq_cq.create_case(c[1], CONTACT, c[2]) }
      left = left - 1
    end)
  end
  cq:wrap(function()
    while left > 0 do
      cqueues.sleep(0.05)
      if left == #calls then ticks = ticks + 1 end
    end
  end)
  assert(cq:loop())
  return out, now() - t0, ticks
end

local function run_luv(calls)
  local out, left = {}, #calls
  local t0, ticks = now(), 0
  local ticker = uv.new_timer()
  ticker:start(50, 50, function()
    if left == #calls then ticks = ticks + 1 end
    if left == 0 then ticker:close() end
  end)
  for i, c in ipairs(calls) do
    local called = 0
    aq_uv.create_case(c[1], CONTACT, c[2], function(res, err)
      called = called + 1
      assert(called == 1, "the callback was called " .. called .. " times")
      out[i] = { res, err }
      left = left - 1
    end)
  end
  uv.run()
  return out, now() - t0, ticks
end

-- What fn raises when run as a coroutine of a cqueues controller (no pcall between it and the
-- loop: on 5.1 a pcall is a C boundary no yield crosses, and acquire.cqueues yields there).
local function loop_raises(fn)
  local cq = cqueues.new()
  cq:wrap(fn)
  local ok, err = cq:loop()
  assert(not ok, "it did not raise")
  return tostring(err)
end

local DRIVERS = { { name = "acquire.cqueues", run = run_cqueues }, { name = "acquire.luv", run = run_luv } }

-- Every handle the default luv loop still has, as "type" strings (closing ones left out).
local function open_handles()
  local list = {}
  uv.walk(function(h) if not h:is_closing() then list[#list + 1] = tostring(h) end end)
  return list
end

describe("in an event loop", function()
  local servers = {}

  setup(function()
    for i = 1, #KINDS do servers[i] = helper.start_server() end
  end)
  teardown(function()
    for _, s in ipairs(servers) do s:stop() end
  end)
  before_each(function()
    for _, s in ipairs(servers) do s:reset() end
  end)

  -- The outcome and POSTs of client:create_case for each kind (on servers[1]), once.
  local reference
  local function expected(kind)
    if not reference then
      reference = {}
      for _, k in ipairs(KINDS) do
        arrange(servers[1], k, 0)
        local c = servers[1]:client(CLIENT)
        reference[k.name] = { outcome = outcome(c:create_case(CONTACT, { title = "same" })), posts = posts(servers[1]) }
        c:close()
      end
      servers[1]:reset()
    end
    return reference[kind.name]
  end

  for _, d in ipairs(DRIVERS) do
    describe(d.name, function()
      it("runs 6 calls of 1 s each on one client in far less than 6 s, the loop ticking throughout", function()
        local srv = servers[1]
        srv:fault{ action = "delay", seconds = 1 }
        local c = srv:client(CLIENT)
        local calls = {}
        for i = 1, 6 do calls[i] = { c, { title = "call " .. i } } end
        local out, elapsed, ticks = d.run(calls)
        for i = 1, 6 do
          assert(out[i][1], "call " .. i .. ": " .. tostring(out[i][2]))
          assert.equal("call " .. i, out[i][1].data.title)
        end
        assert.equal(6, srv:stats().max_in_flight)            -- all six on the server at once
        assert(ticks >= 2, "the ticker ran " .. ticks .. " times while the six calls were waiting")
        assert(elapsed < 5, ("6 calls of 1 s took %.2f s: not at once"):format(elapsed))
        assert.equal(6, posts(srv))
        assert.equal(0, #open_handles())
        c:close()
      end)

      it("gives what client:create_case gives: created, 404, 500 reconciled, 503 Retry-After retried, reset reconciled", function()
        local calls = {}
        for i, k in ipairs(KINDS) do
          expected(k)
          arrange(servers[i], k, 0)
          calls[i] = { servers[i]:client(CLIENT), { title = "same" } }
        end
        local out = d.run(calls)
        for i, k in ipairs(KINDS) do
          local want = expected(k)
          assert.equal(want.outcome, outcome(out[i][1], out[i][2]), k.name)
          assert.equal(want.posts, posts(servers[i]), k.name .. ": POSTs")
          calls[i][1]:close()
        end
      end)

      it("(a generator) gives each call create_case's outcome for its fault and delay, never more POSTs", function()
        local seed = tonumber(os.getenv("SPEC_SEED")) or os.time()
        math.randomseed(seed)
        for round = 1, tonumber(os.getenv("LOOPS_ROUNDS")) or 3 do
          local calls, drawn = {}, {}
          for i = 1, #servers do
            local k = KINDS[math.random(#KINDS)]
            local delay = math.random(0, 8) / 10
            expected(k)
            arrange(servers[i], k, delay)
            drawn[i] = ("%s after %.1f s"):format(k.name, delay)
            calls[i] = { servers[i]:client(CLIENT), { title = "same" }, kind = k }
          end
          local out = d.run(calls)
          for i, c in ipairs(calls) do
            local why = ("SPEC_SEED=%d, round %d, call %d (%s)"):format(seed, round, i, drawn[i])
            local want = expected(c.kind)
            assert(want.outcome == outcome(out[i][1], out[i][2]),
              why .. ": " .. outcome(out[i][1], out[i][2]) .. ", create_case gives " .. want.outcome)
            assert(posts(servers[i]) == want.posts,
              why .. ": " .. posts(servers[i]) .. " POSTs, create_case sends " .. want.posts)
            assert(#servers[i]:cases() <= 1, why .. ": more than one case")
            c[1]:close()
          end
        end
      end)

      it("raises on a closed client before anything is sent", function()
        local c = servers[1]:client(CLIENT)
        c:close()
        local msg
        if d.name == "acquire.cqueues" then
          msg = loop_raises(function() aq_cq.create_case(c, CONTACT, {}) end)
        else
          msg = helper.raises(aq_uv.create_case, c, CONTACT, {}, function() end)
        end
        helper.contains(msg, "client is closed")
        helper.contains(helper.raises(c.start_case, c, CONTACT, {}), "client is closed")
        assert.equal(0, posts(servers[1]))
      end)

      it("raises on misuse as create_case does, naming its own arguments", function()
        local c = servers[1]:client(CLIENT)
        local msgs = {}
        local raises = d.name == "acquire.luv" and helper.raises or loop_raises
        msgs[1] = raises(function() return d.name == "acquire.luv"
          and aq_uv.create_case(c, "12a", {}, function() end) or aq_cq.create_case(c, "12a", {}) end)
        msgs[2] = raises(function() return d.name == "acquire.luv"
          and aq_uv.create_case(c, CONTACT, { agentId = "x" }, function() end)
          or aq_cq.create_case(c, CONTACT, { agentId = "x" }) end)
        msgs[3] = raises(function() return d.name == "acquire.luv"
          and aq_uv.create_case(nil, CONTACT, {}, function() end) or aq_cq.create_case(nil, CONTACT, {}) end)
        helper.contains(msgs[1], "bad argument #2 to 'create_case' (contactId must be a positive integer, got '12a')")
        helper.contains(msgs[2], "bad field 'agentId' (integer expected, got string)")
        helper.contains(msgs[3], "bad argument #1 to 'create_case' (acquire client expected, got nil)")
        -- raised at the caller's line: not one inside lua/acquire/, nor the caller's caller
        for _, args in ipairs({ { "12a", {} }, { CONTACT, { agentId = "x" } }, { CONTACT, {}, false } }) do
          local function misuse()
            if args[3] == false then
              if d.name == "acquire.luv" then aq_uv.create_case(nil, args[1], args[2], function() end)
              else aq_cq.create_case(nil, args[1], args[2]) end
            elseif d.name == "acquire.luv" then aq_uv.create_case(c, args[1], args[2], function() end)
            else aq_cq.create_case(c, args[1], args[2]) end
          end
          local msg = raises(misuse)
          assert(msg:find("34%-loops_spec%.lua:%d+: bad") and not msg:find("lua/acquire/"), msg)
        end
        if d.name == "acquire.luv" then
          helper.contains(helper.raises(aq_uv.create_case, c, CONTACT, {}),
            "bad argument #4 to 'create_case' (callback function expected, got nil)")
          assert.equal(0, #open_handles())
        end
        assert.equal(0, posts(servers[1]))
        c:close()
      end)
    end)
  end

  describe("acquire.cqueues", function()
    it("raises outside a cqueues controller, before anything is sent", function()
      local c = servers[1]:client(CLIENT)
      helper.contains(helper.raises(aq_cq.create_case, c, CONTACT, {}),
        "acquire.cqueues.create_case runs inside a cqueues controller (cq:wrap); outside one, client:create_case is the blocking call")
      helper.contains(helper.raises(aq_cq.find_cases, c, CONTACT),
        "acquire.cqueues.find_cases runs inside a cqueues controller")
      assert.equal(0, #servers[1]:requests())
      c:close()
    end)

    it("finds cases as client:find_cases does", function()
      local c = servers[1]:client(CLIENT)
      assert(c:create_case(CONTACT, { title = "A" }))
      assert(c:create_case(CONTACT, { title = "B" }))
      local got
      local cq = cqueues.new()
      cq:wrap(function() got = { aq_cq.find_cases(c, CONTACT, { title = "B" }) } end)
      assert(cq:loop())
      assert(got[1], tostring(got[2]))
      assert.equal(1, #got[1])
      assert.equal("B", got[1][1].title)
      c:close()
    end)

    it("in a create_cases hook (a C call between it and the loop): a clear raise, or the yield's own", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 0.2 }        -- the inner call must wait: it cannot end at once
      local lines = {}
      local c = srv:client{ reconcile = 0, logger = function(level, line) lines[#lines + 1] = level .. ": " .. line end }
      local cq = cqueues.new()
      local ok, msg
      cq:wrap(function()
        ok, msg = pcall(c.create_cases, c, { { CONTACT, { title = "batch" } } }, { on_result = function()
          aq_cq.create_case(c, CONTACT, { title = "inner" })
        end })
      end)
      assert(cq:loop())
      collectgarbage()
      collectgarbage()
      assert.is_false(ok)
      if coroutine.isyieldable then          -- 5.3, 5.4, LuaJIT: it can tell
        helper.contains(msg, "acquire.cqueues.create_case cannot yield here")
      else                                   -- 5.1, 5.2: its first yield raises, before the call starts
        helper.contains(msg, "attempt to yield across")
      end
      assert.equal(1, posts(srv))            -- either way nothing of the inner call was sent
      assert.same({}, lines)
      c:close()
    end)

    it("a coroutine abandoned inside its call (it led the client's calls) strands no other call", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 0.3 }
      local c = srv:client(CLIENT)
      local cq = cqueues.new()
      local res, took
      cq:wrap(function()
        local inner = coroutine.create(function() aq_cq.create_case(c, CONTACT, { title = "abandoned" }) end)
        assert(coroutine.resume(inner))                   -- it leads, polls: its poll comes back here,
                                                          -- and it is never resumed again
        cqueues.sleep(0.05)
        local t0 = now()
        res = aq_cq.create_case(c, CONTACT, { title = "after" })
        took = now() - t0
      end)
      assert(cq:loop(10))
      assert.equal("after", assert(res).data.title)
      assert(took < 3, ("the call took %.2f s"):format(took))
      c:close()
    end)

    it("cancels a call whose controller is collected unfinished, with a log line", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 3 }
      local lines = {}
      local c = srv:client{ logger = function(level, line) lines[#lines + 1] = level .. ": " .. line end }
      local cq = cqueues.new()
      cq:wrap(function() aq_cq.create_case(c, CONTACT, { title = "abandoned" }) end)
      local deadline = now() + 20
      repeat assert(cq:step(0.05)) until srv:stats().in_flight >= 1 or now() > deadline
      assert.equal(1, srv:stats().in_flight)
      cq = nil                                -- luacheck: ignore (dropped for the collector)
      -- its group goes with the controller: on 5.1 and LuaJIT (weak keys, no ephemerons, a
      -- finalized key cleared a collection later) that takes a few collections
      for _ = 1, 6 do
        collectgarbage()
        if #lines > 0 then break end
      end
      assert.same({ "warn: a pending call for contact 597752 was collected unfinished after its request "
        .. "was sent: its case may exist" }, lines)
      c:close()
    end)
  end)

  describe("acquire.luv", function()
    it("cancels a call in flight: its callback once, err.kind cancelled, maybe_created, its handles closed", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 3 }
      local c = srv:client(CLIENT)
      local got, calls = nil, 0
      local h = aq_uv.create_case(c, CONTACT, { title = "cancelled" }, function(res, err)
        calls = calls + 1
        got = { res, err }
      end)
      local watch = uv.new_timer()
      watch:start(20, 20, function()
        if srv:stats().in_flight >= 1 then
          watch:close()
          h:cancel()
          h:cancel()                            -- idempotent
        end
      end)
      local t0 = now()
      uv.run()
      assert(now() - t0 < 2.5, "the loop waited for the cancelled call")
      assert.equal(1, calls)
      assert.is_true(h:done())
      assert.is_nil(got[1])
      assert.equal("cancelled", got[2].kind)
      assert.is_true(got[2].maybe_created)
      assert.equal(0, #open_handles())
      c:close()
    end)

    it("calls a callback that raises after closing its handles; luv reports the error", function()
      local srv = servers[1]
      local code, out, err = helper.run_lua(([[
        local uv = require "luv"
        local c = require("acquire").new{ base_url = %q, api_key = %q }
        local calls = 0
        require("acquire.luv").create_case(c, 597752, { title = "raises" }, function(res)
          calls = calls + 1
          local open = 0
          uv.walk(function(h) if not h:is_closing() then open = open + 1 end end)
          print("called", calls, res.data.title, "handles open", open)
          error("boom from the callback")
        end)
        uv.run()
        print("not reached")
      ]]):format(srv.base_url, srv.key))
      assert.equal("called\t1\traises\thandles open\t0\n", out)
      assert.not_equal(0, code)
      helper.contains(err, "boom from the callback")
      assert.equal(1, posts(srv))
    end)

    it("runs a client's calls on one loop in one group: one poll handle for them all, none once done", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 0.4 }
      local c1, c2 = srv:client(CLIENT), srv:client(CLIENT)
      local called, polls = {}, nil
      for i = 1, 10 do
        local c = i <= 8 and c1 or c2
        aq_uv.create_case(c, CONTACT, { title = "group " .. i }, function(res, err)
          called[i] = (called[i] or 0) + 1
          assert(res, tostring(err))
        end)
      end
      local watch = uv.new_timer()
      watch:start(200, 0, function()
        watch:close()
        polls = 0
        for _, h in ipairs(open_handles()) do
          if h:find("^uv_poll_t") then polls = polls + 1 end
        end
      end)
      uv.run()
      assert.equal(2, polls)                     -- one for each client's group on this loop
      for i = 1, 10 do assert.equal(1, called[i], "call " .. i) end
      assert.equal(10, srv:stats().max_in_flight)
      assert.equal(0, #open_handles())
      c1:close()
      c2:close()
    end)

    it("raises on misuse of the loop argument", function()
      local c = servers[1]:client(CLIENT)
      helper.contains(helper.raises(aq_uv.create_case, c, CONTACT, {}, function() end, 42),
        "bad argument #5 to 'create_case' (a luv module expected, such as vim.loop, got number)")
      c:close()
    end)
  end)

  describe("in Neovim #nvim", function()
    -- Debian's nvim (0.7, LuaJIT; vim.loop is luv) loads the LuaJIT build (.tmp/luajit/acquire.so)
    local function nvim(srv, words)
      local r = os.execute("make -s -C " .. helper.shell_quote(helper.repo_root) .. " .tmp/luajit/acquire.so >/dev/null")
      assert(r == true or r == 0, "building .tmp/luajit/acquire.so failed")
      local argv = { "nvim", "--headless", "-u", "NONE", "-i", "NONE" }
      for _, w in ipairs(words) do argv[#argv + 1] = w end
      return helper.run(argv, { limit = 60, env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key,
        LUA_CPATH = helper.repo_root .. "/.tmp/luajit/?.so;;", LUA_PATH = helper.repo_root .. "/lua/?.lua;;" } })
    end

    -- nvim running the Lua `code` (a file of its own, then quit): helper.run's result, with
    -- report = its stdout and stderr for a failure's message
    local function nvim_lua(srv, code)
      local script = helper.tmpfile(code)
      local r = nvim(srv, { "-c", "luafile " .. script, "-c", "qa!" })
      os.remove(script)
      r.report = ("\n--- stdout ---\n%s--- stderr ---\n%s"):format(r.out, r.err)
      return r
    end

    it("runs examples/neovim.lua: a case created while the editor waits", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 1 }
      local r = nvim(srv, { "-c", "luafile examples/neovim.lua", "-c", "qa!" })
      assert(r.code == 0 and r.err:find("From Neovim: active", 1, true),
        ("nvim exited %s\n--- stdout ---\n%s--- stderr ---\n%s"):format(tostring(r.code), r.out, r.err))
      assert.equal(1, posts(srv))
    end)

    it("(a generator) calls each callback once when some of those finishing together raise", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 0.2 }
      local seed = os.getenv("ACQUIRE_SEED") or tostring(os.time())
      local r = nvim_lua(srv, ([==[
        local uv, aq = vim.loop, require "acquire.luv"
        local c = require("acquire").new{ base_url = os.getenv("ACQUIRE_BASE_URL"), api_key = os.getenv("ACQUIRE_API_KEY") }
        math.randomseed(%s)
        local bad = {}
        for round = 1, 8 do
          local k = math.random(2, 6)
          local raises, called, left, handles = {}, {}, k, {}
          for i = 1, k do raises[i] = math.random() < 0.5 end
          raises[math.random(k)] = true                -- at least one
          -- one callback cancels another call, which may still run or have its answer waiting
          local canceller, victim = math.random(k), math.random(k)
          for i = 1, k do
            handles[i] = aq.create_case(c, 597752, { title = "r" .. round .. " c" .. i }, function(res, err)
              called[i] = (called[i] or 0) + 1
              left = left - 1
              if not res and not (i == victim and err.kind == "cancelled") then
                bad[#bad + 1] = "round " .. round .. " call " .. i .. ": " .. tostring(err)
              end
              if i == canceller then
                handles[victim]:cancel()
                if not handles[victim]:done() then bad[#bad + 1] = "round " .. round .. ": not done after cancel" end
              end
              if raises[i] then error("boom " .. round .. "." .. i) end
            end)
          end
          -- the loop kept busy until every answer is in, most rounds: they finish in one step
          local busy = math.random() < 0.75 and uv.new_timer()
          if busy then
            busy:start(100, 0, function()
              busy:close()
              local t = uv.hrtime()
              while uv.hrtime() - t < 250e6 do end
            end)
          end
          local t0 = uv.now()
          while left > 0 and uv.now() - t0 < 10000 do vim.wait(100, function() return left <= 0 end, 5) end
          vim.wait(300)                                -- (a callback called twice would be now)
          for i = 1, k do
            if called[i] ~= 1 then
              bad[#bad + 1] = ("round %%d (%%d calls) call %%d: called %%s times"):format(round, k, i, tostring(called[i]))
            end
          end
        end
        io.stdout:write(#bad == 0 and "ok\n" or table.concat(bad, "\n") .. "\n")
      ]==]):format(seed))
      assert(r.out == "ok\n", ("seed %s (ACQUIRE_SEED=%s to run it again)%s"):format(seed, seed, r.report))
      helper.contains(r.err, "boom ")
    end)

    it("a client closed while its calls run: the loop's next step raises, its handles closed, no callback", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 1 }
      local r = nvim_lua(srv, [==[
        local uv, aq = vim.loop, require "acquire.luv"
        local c = require("acquire").new{ base_url = os.getenv("ACQUIRE_BASE_URL"), api_key = os.getenv("ACQUIRE_API_KEY") }
        local called, handles = 0, {}
        for i = 1, 3 do
          handles[i] = aq.create_case(c, 597752, { title = "closed " .. i }, function() called = called + 1 end)
        end
        local poll, timer = handles[1].st.poll, handles[1].st.timer
        local closer = uv.new_timer()
        closer:start(200, 0, function() closer:close() c:close() end)
        vim.wait(1500, function() return false end, 10)
        local open = (poll:is_closing() and 0 or 1) + (timer:is_closing() and 0 or 1)
        local done = 0
        for i = 1, 3 do if handles[i]:done() then done = done + 1 end end
        io.stdout:write(("called %d|open %d|done %d\n"):format(called, open, done))
      ]==])
      local report = r.report
      assert.equal("called 0|open 0|done 3\n", r.out, report)
      helper.contains(r.err, "client is closed")
    end)

    it("runs 4 calls of 1 s at once on vim.loop, its timers ticking; a callback that raises leaves no handle", function()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 1 }
      local r = nvim_lua(srv, [==[
        local uv, aq = vim.loop, require "acquire.luv"
        local c = require("acquire").new{ base_url = os.getenv("ACQUIRE_BASE_URL"), api_key = os.getenv("ACQUIRE_API_KEY") }
        local out, left, t0 = {}, 4, uv.hrtime()
        local ticks = 0
        local ticker = uv.new_timer()
        ticker:start(50, 50, function() if left == 4 then ticks = ticks + 1 end end)
        for i = 1, 4 do
          aq.create_case(c, 597752, { title = "nvim " .. i }, function(res, err)
            out[#out + 1] = res and res.data.title or tostring(err)
            left = left - 1
          end)                                         -- no loop given: require "luv" is vim.loop here
        end
        vim.wait(20000, function() return left == 0 end, 10)
        ticker:close()
        local elapsed = (uv.hrtime() - t0) / 1e9
        -- a callback that raises: Neovim reports it (vim.wait returns early); the client's handles on
        -- the loop are closing (taken from the call's group state: vim.loop.walk aborts Neovim 0.7,
        -- a luv assertion)
        local raised = false
        local h = aq.create_case(c, 597752, { title = "raises" }, function()
          raised = true
          error("boom from the callback")
        end, uv)
        local poll, timer = h.st.poll, h.st.timer
        vim.wait(20000, function() return raised end, 10)
        local open = (poll:is_closing() and 0 or 1) + (timer:is_closing() and 0 or 1)
        table.sort(out)
        io.stdout:write(("%s|elapsed %.2f|ticks %d|open %d\n"):format(table.concat(out, ","),
          elapsed, ticks, open))
      ]==])
      local report = r.report
      local titles, elapsed, ticks, open = r.out:match("([^|\n]*)|elapsed ([%d.]+)|ticks (%d+)|open (%d+)")
      assert(titles, "nvim printed no result" .. report)
      assert.equal("nvim 1,nvim 2,nvim 3,nvim 4", titles)
      assert(tonumber(elapsed) < 3.5, "4 calls of 1 s took " .. elapsed .. " s" .. report)
      assert(tonumber(ticks) >= 2, "vim.loop ticked " .. ticks .. " times while the 4 calls waited" .. report)
      assert.equal(4, srv:stats().max_in_flight)
      assert.equal("0", open)
      helper.contains(r.err, "boom from the callback")
      assert.equal(5, posts(srv))
    end)
  end)

  describe("the pending call", function()
    it("raises on result() before it is finished, and gives create_case's answer after", function()
      local c = servers[1]:client(CLIENT)
      local p = c:start_case(CONTACT, { title = "early" })
      assert.is_false(p:done())
      helper.contains(helper.raises(p.result, p), "result() before the call is finished")
      assert.equal("r", p:events())
      local cq = cqueues.new()
      cq:wrap(function() while not p:step() do cqueues.poll(p) end end)
      assert(cq:loop())
      assert.is_true(p:done())
      assert.equal(0, p:timeout())
      local res = assert(p:result())
      assert.equal("early", res.data.title)
      c:close()
    end)

    it("cancel() before the request left: maybe_created false, and nothing reaches the server", function()
      local srv = servers[1]
      local c = srv:client(CLIENT)
      local p = c:start_case(CONTACT, { title = "never" })
      p:cancel()
      local res, err = p:result()
      assert.is_nil(res)
      assert.equal("cancelled", err.kind)
      if not err.maybe_created then
        helper.sh("sleep 0.3")                 -- a request on its way would be in by then
        assert.equal(0, posts(srv))
      end
      c:close()
    end)

    it("cancel() from another coroutine wakes the one waiting on the call at once (here: a "
       .. "Retry-After of 3 s)", function()
      local srv = servers[1]
      srv:fault{ action = "status", status = 503, times = 1, headers = { ["Retry-After"] = "3" } }
      local c = srv:client(CLIENT)
      local p = c:start_case(CONTACT, { title = "woken" })
      local cq, took, got = cqueues.new()
      cq:wrap(function()
        local t0 = now()
        while not p:step() do cqueues.poll(p) end
        took, got = now() - t0, { p:result() }
      end)
      cq:wrap(function()
        while #srv:requests() < 1 do cqueues.sleep(0.02) end
        cqueues.sleep(0.1)                                -- the other is asleep on the wait by now
        p:cancel()
      end)
      assert(cq:loop())
      assert(took < 1.5, ("the waiting coroutine woke %.2f s after it began, not at the cancel"):format(took))
      assert.is_nil(got[1])
      assert.equal("cancelled", got[2].kind)
      assert.equal(1, posts(srv))
      c:close()
    end)

    it("client:close() under pending calls at a random point: each ends (its answer, or cancelled), "
       .. "a coroutine waiting on one wakes, a warn line for each that may have created a case", function()
      local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
      math.randomseed(seed)
      for round = 1, 4 do
        local why = (" (seed %d round %d: SPEC_SEED=%d repeats it)"):format(seed, round, seed)
        local srv = servers[1]
        srv:reset()
        if math.random(2) == 1 then
          srv:fault{ action = "delay", seconds = math.random(0, 30) / 100 }
        else
          srv:fault{ action = "status", status = 503, times = math.random(1, 3), headers = { ["Retry-After"] = "2" } }
        end
        local warns = 0
        local cfg = { logger = function(level, line)
          if level == "warn" and line:find("cancelled by client:close()", 1, true) then warns = warns + 1 end
        end }
        for k, v in pairs(CLIENT) do cfg[k] = v end
        local c = srv:client(cfg)
        local cq, calls, t0 = cqueues.new(), {}, now()
        for i = 1, math.random(1, 6) do
          cq:wrap(function()
            local p = c:start_case(CONTACT, { title = "closed " .. i })
            local call = { p = p }
            calls[i] = call
            while true do                                 -- (no yield inside a pcall: Lua 5.1)
              local ok, done = pcall(p.step, p)
              if not ok then call.raised = done break end
              if done then break end
              cqueues.poll(p)
            end
          end)
        end
        cq:wrap(function()
          cqueues.sleep(math.random(0, 40) / 100)
          c:close()
        end)
        assert(cq:loop())
        assert(now() - t0 < 2, ("the loop ran %.2f s: a coroutine slept past the close%s"):format(now() - t0, why))
        local maybe = 0
        for i, call in ipairs(calls) do
          assert.is_true(call.p:done(), "call " .. i .. why)
          local res, err = call.p:result()
          if call.raised then
            helper.contains(call.raised, "client is closed")
            assert.is_nil(res, why)
            assert.equal("cancelled", err.kind, why)
            if err.maybe_created then maybe = maybe + 1 end
          else
            assert(res or err.kind ~= "cancelled", "a call that ended before the close was cancelled" .. why)
          end
        end
        assert.equal(maybe, warns, "warn lines" .. why)
      end
    end)

    it("its client's logger, which runs inside a step, cannot step or cancel it: a clear raise, "
       .. "and the call goes on to its answer", function()
      local srv = servers[1]
      local p
      local raised = {}
      local c = srv:client{ reconcile = 0, debug = true, logger = function()
        if not p then return end                          -- (start_case's own first line)
        for _, m in ipairs{ "step", "cancel" } do
          local ok, e = pcall(p[m], p)
          raised[#raised + 1] = not ok and e or ("no raise from " .. m)
        end
      end }
      p = c:start_case(CONTACT, { title = "logged" })
      local cq = cqueues.new()
      cq:wrap(function() while not p:step() do cqueues.poll(p) end end)
      assert(cq:loop())
      assert(#raised >= 2)
      for _, e in ipairs(raised) do helper.contains(e, "a client cannot be used from its own logger") end
      local res = assert(p:result())
      assert.equal("logged", res.data.title)
      assert.equal(1, posts(srv))
      c:close()
    end)

    -- the process's open descriptors now
    local function fds()
      local f = io.popen("ls /proc/" .. helper.testposix().getpid() .. "/fd")
      local _, n = f:read("*a"):gsub("\n", "")
      f:close()
      return n - 1                                        -- (the pipe being read)
    end

    it("hands its descriptors on: waves of calls at random widths up to 8, through cqueues and luv (each "
       .. "new call started from a finished one's callback), hold no more than the client's 8 sets, "
       .. "with no collection in between; every call answered", function()
      local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
      local why = (" (seed %d: SPEC_SEED=%d repeats it)"):format(seed, seed)
      math.randomseed(seed)
      local srv = servers[1]
      local c = srv:client(CLIENT)
      assert(c:create_case(CONTACT, { title = "warm" }))  -- its connection and wakeup pair
      local cq = cqueues.new()                            -- one controller, and luv's loop, made
      local warm = uv.new_timer()                         -- before counting
      warm:start(1, 0, function() warm:close() end)
      uv.run()
      collectgarbage()
      collectgarbage("stop")                              -- nothing closed by a collection
      local before, most, answered, started = fds(), 0, 0, 0
      for _ = 1, 6 do
        local width = math.random(1, 8)                   -- (past 8, a finished call keeps its own until collected)
        if math.random(2) == 1 then
          for _ = 1, width do
            cq:wrap(function()
              for _ = 1, math.random(1, 4) do
                started = started + 1
                local res = aq_cq.create_case(c, CONTACT, { title = "wave" })
                if res then answered = answered + 1 end
                most = math.max(most, fds())
              end
            end)
          end
          assert(cq:loop())
        else
          local function chain(left)
            started = started + 1
            aq_uv.create_case(c, CONTACT, { title = "wave" }, function(res)
              if res then answered = answered + 1 end
              most = math.max(most, fds())
              if left > 1 then chain(left - 1) end
            end)
          end
          for _ = 1, width do chain(math.random(1, 4)) end
          uv.run()
        end
      end
      collectgarbage("restart")
      assert.equal(started, answered, why)
      -- running: 3 a call (8 at most) and its connection; kept: 8 sets of 3 and 8 connections, and
      -- the group acquire.cqueues runs the client's calls of this controller in (4: its epoll
      -- descriptor, its eventfd and libcurl's wakeup pair)
      assert(most - before <= 8 * 4 + 8 * 3 + 4, ("%d descriptors more than before%s"):format(most - before, why))
      assert(fds() - before <= 8 * 3 + 8 + 4, ("%d descriptors left open%s"):format(fds() - before, why))
      c:close()
    end)

    it("raises when a fork()ed child drives it; the parent's call goes on", function()
      local posix = helper.testposix()
      local srv = servers[1]
      srv:fault{ action = "delay", seconds = 0.5 }
      local c = srv:client(CLIENT)
      local p = c:start_case(CONTACT, { title = "forked" })
      local pid = posix.fork()
      if pid == 0 then
        local ok, msg = pcall(p.step, p)
        posix._exit((not ok and tostring(msg):find("cannot be driven in a child process", 1, true)) and 0 or 1)
      end
      assert.equal(0, posix.waitpid(pid))
      local cq = cqueues.new()
      local got
      cq:wrap(function() while not p:step() do cqueues.poll(p) end got = { p:result() } end)
      assert(cq:loop())
      assert(got[1], tostring(got[2]))
      assert.equal("forked", got[1].data.title)
      assert.equal(1, posts(srv))
      c:close()
    end)
  end)
end)
