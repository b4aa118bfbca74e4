-- Turning "maybe created" into an answer: find_cases reads the contact's cases back, and
-- reconcile = true looks the case up after a call that may have created it, on both
-- transports, never sending the POST again. The local Acquire server stores every case it
-- creates (fault rules with create = true store it and then lose the answer).
local acquire = require "acquire"
local helper = require "spec.helper"
local launcher = require "spec.nginx"

local CONTACT = 597752
local CREATE = "/api/v1/crm/messenger/chat/create"

-- POSTs and GETs the server received
local function counts(srv)
  local post, get = 0, 0
  for _, r in ipairs(srv:requests()) do
    if r.method == "POST" and r.path:find(CREATE, 1, true) then post = post + 1
    elseif r.method == "GET" then get = get + 1 end
  end
  return post, get
end

local function assert_reconciled(res, err, title)
  assert(res, "expected a reconciled success, got " .. tostring(err) .. " (reconcile: "
    .. tostring(err and err.reconcile) .. ")")
  assert.is_true(res.reconciled)
  assert.equal(title, res.data.title)
  assert.is_number(tonumber(res.data.id))
end

-- The same cases through both transports: call(srv, over, opts) -> res, err.
local transports = {
  { name = "acquire.new", call = function(srv, over, opts)
      local cfg = { base_url = srv.base_url, api_key = srv.key, timeout = 2, max_retries = 0,
                    reconcile = 0 }
      for k, v in pairs(over or {}) do cfg[k] = v end
      local c = acquire.new(cfg)
      local res, err = c:create_case(CONTACT, opts)
      c:close()
      return res, err
    end },
  { name = "acquire.ngx #ngx", call = function(_, over, opts, n)
      local config = { timeout = 2, max_retries = 0, reconcile = 0 }
      for k, v in pairs(over or {}) do config[k] = v end
      local doc = n:case{ contact = CONTACT, opts = opts, config = config }
      assert(doc.raised == nil, doc.raised)
      if doc.ok then return doc.res end
      return nil, doc.err
    end },
}

describe("find_cases", function()
  local srv = helper.server()

  it("lists the contact's cases, narrowed by title and time", function()
    local c = srv:client()
    for _, t in ipairs { "A", "B", "A" } do assert(c:create_case(CONTACT, { title = t, message = "m" })) end
    local all = assert(c:find_cases(CONTACT))
    assert.equal(3, #all)
    local a = assert(c:find_cases(CONTACT, { title = "A", description = "m" }))
    assert.equal(2, #a)
    assert.equal(0, #assert(c:find_cases(CONTACT, { since = os.time() + 3600 })))
    assert.equal(3, #assert(c:find_cases(CONTACT, { since = os.time() - 60 })))
    assert.equal(0, #assert(c:find_cases(CONTACT, { title = acquire.null })))
    local _, get = counts(srv)
    assert.equal(5, get)
  end)

  it("reads every page, and the configured client's acquire.find_cases too", function()
    local c = srv:client()
    for i = 1, 105 do assert(c:create_case(CONTACT, { title = "p" .. i })) end
    assert.equal(105, #assert(c:find_cases(CONTACT)))
    acquire.configure{ base_url = srv.base_url, api_key = srv.key }
    assert.equal(1, #assert(acquire.find_cases(CONTACT, { title = "p105" })))
  end)

  it("raises on misuse before sending anything", function()
    local c = srv:client()
    helper.contains(helper.raises(c.find_cases, c, "x"), "contactId must be a positive integer")
    helper.contains(helper.raises(c.find_cases, c, CONTACT, { colour = "red" }), "bad filter 'colour'")
    helper.contains(helper.raises(c.find_cases, c, CONTACT, { since = "today" }), "bad filter 'since'")
    helper.contains(helper.raises(c.find_cases, c, CONTACT, { title = 5 }), "bad filter 'title'")
    assert.equal(0, #srv:requests())
  end)

  it("a read creates nothing: its failure is maybe_created = false, retried as the policy allows", function()
    srv:fault{ action = "reset", endpoint = "read", times = 1 }
    local c = srv:client{ max_retries = 1 }
    local cases = assert(c:find_cases(CONTACT))
    assert.equal(0, #cases)
    srv:fault{ action = "status", status = 500, endpoint = "read" }
    local res, err = c:find_cases(CONTACT)
    assert.is_nil(res)
    assert.equal(500, err.status)
    assert.is_false(err.maybe_created)
    helper.not_contains(tostring(err), srv.key)
  end)
end)

for _, t in ipairs(transports) do
  describe("reconcile through " .. t.name, function()
    local srv = helper.server()
    local n
    setup(function()
      if t.name:find("ngx") then n = launcher.start_cases { base_url = srv.base_url, key = srv.key } end
    end)
    teardown(function() if n then launcher.stop(n) end end)

    local LOST = {                       -- the server created the case, the answer was lost
      reset = { action = "reset", create = true, times = 1 },
      hang = { action = "hang", create = true, times = 1 },
      truncate = { action = "truncate", create = true, times = 1 },
      ["502"] = { action = "status", status = 502, create = true, times = 1 },
    }
    for name, rule in pairs(LOST) do
      it("a case created but unanswered (" .. name .. ") comes back as a success, sent once", function()
        srv:fault(rule)
        local title = "lost-" .. name
        local res, err = t.call(srv, { timeout = 1 }, { title = title, message = "hello" }, n)
        assert_reconciled(res, err, title)
        assert.equal(1, (counts(srv)))
        assert.equal(1, #srv:cases())
        assert.equal(srv:cases()[1].id, tonumber(res.data.id))
      end)
    end

    it("a request the server never processed is never found", function()
      srv:fault{ action = "reset", create = false, times = 1 }
      local res, err = t.call(srv, nil, { title = "never" }, n)
      assert.is_nil(res)
      assert.is_true(err.maybe_created)
      assert.equal("not found", err.reconcile)
      assert.equal(1, (counts(srv)))
    end)

    it("two cases that match: ambiguous, with both ids, nothing resent", function()
      assert(srv:client():create_case(CONTACT, { title = "twice", message = "same" }))
      srv:fault{ action = "reset", create = true, times = 1 }
      local res, err = t.call(srv, nil, { title = "twice", message = "same" }, n)
      assert.is_nil(res)
      assert.equal("ambiguous", err.reconcile)
      assert.equal(2, #err.candidates)
      assert.equal(2, (counts(srv)))
    end)

    it("a list that lags: not found, and no resend", function()
      srv:cases_config{ lag_ms = 60000 }
      srv:fault{ action = "reset", create = true, times = 1 }
      local res, err = t.call(srv, nil, { title = "lagging" }, n)
      assert.is_nil(res)
      assert.equal("not found", err.reconcile)
      assert.equal(1, (counts(srv)))
      assert.equal(1, #srv:cases())
    end)

    it("a lookup that fails: lookup failed, with its error", function()
      srv:fault{ action = "reset", create = true, times = 1, endpoint = "create" }
      srv:fault{ action = "status", status = 500, endpoint = "read" }
      local res, err = t.call(srv, nil, { title = "unlucky" }, n)
      assert.is_nil(res)
      assert.equal("lookup failed", err.reconcile)
      assert.equal(500, err.lookup.status)
      assert.is_true(err.maybe_created)
      assert.equal(1, (counts(srv)))
    end)

    it("off by default: no lookup", function()
      srv:fault{ action = "reset", create = true, times = 1 }
      local res, err = t.call(srv, { reconcile = false }, { title = "off" }, n)
      assert.is_nil(res)
      assert.is_nil(err.reconcile)
      local _, get = counts(srv)
      assert.equal(0, get)
    end)
  end)
end

describe("reconcile in create_cases and acquire-case", function()
  local srv = helper.server()

  it("create_cases looks up its uncertain items after the batch", function()
    srv:fault{ action = "reset", create = true, times = 1 }
    local c = srv:client{ reconcile = 0, max_retries = 0 }
    local r = c:create_cases({ { CONTACT, { title = "b1" } }, { CONTACT, { title = "b2" } },
                               { CONTACT, { title = "b3" } } }, { concurrency = 1 })
    assert_reconciled(r[1].res, r[1].err, "b1")
    assert.is_nil(r[2].res.reconciled)
    assert.is_nil(r[3].res.reconciled)
    assert.equal(3, (counts(srv)))
  end)

  it("acquire-case --reconcile 0: the case found is the result, exit 0", function()
    srv:fault{ action = "reset", create = true, times = 1 }
    local r = helper.run_cli({ "--base-url", srv.base_url, "--reconcile", "0", "--title", "cli",
                               tostring(CONTACT) }, { env = { ACQUIRE_API_KEY = srv.key } })
    assert.equal(0, r.code, r.err)
    helper.contains(r.out, '"reconciled":true')
    assert.equal(1, (counts(srv)))
  end)
end)
