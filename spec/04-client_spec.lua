-- End to end: acquire.new / client:create_case / acquire.configure /
-- acquire.create_case against the local Acquire server (spec/server/), which
-- records the raw bytes of every request it gets.
local acquire = require "acquire"
local helper = require "spec.helper"
local raises, contains = helper.raises, helper.contains
local cjson = require "cjson"
local socket = require "socket"

local ENDPOINT = helper.API_PATH
local UA_PATTERN = "^lua%-acquire/0%.1%.0 libcurl/%d+%.%d+%.%d+$"

local DOCUMENTED_OPTS = helper.documented_opts()
local DOCUMENTED_BODY = helper.DOCUMENTED_BODY

local function copy(t)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  return r
end

-- err must be an acquire.Error; returns it.
local function is_error(res, err)
  assert.is_nil(res)
  assert.is_table(err)
  assert.equal("acquire.Error", getmetatable(err).__name)
  return err
end

-- key appears nowhere in err: no string value or key, at any depth, nor tostring(err).
local function assert_no_key(err, key)
  local seen = {}
  local function walk(v, path)
    if type(v) == "string" then
      assert.is_nil(v:find(key, 1, true), path .. " contains the API key: " .. v)
    elseif type(v) == "table" and not seen[v] then
      seen[v] = true
      for k, x in pairs(v) do
        walk(k, path .. "[key]")
        walk(x, path .. "." .. tostring(k))
      end
    end
  end
  walk(err, "err")
  assert.is_nil(tostring(err):find(key, 1, true), "tostring(err) contains the API key")
end

describe("a client against the local server", function()
  local srv = helper.server()
  local client
  setup(function() client = acquire.new{ base_url = srv.base_url, api_key = srv.key } end)
  teardown(function() if client then client:close() end end)

  describe("the documented request", function()
    local res, err, req

    before_each(function()
      res, err = client:create_case(597752, DOCUMENTED_OPTS)
      req = srv:last_request()
    end)

    it("returns the documented response", function()
      assert.is_nil(err)
      local expected = assert(acquire.decode_response(200, nil, helper.fixture("create-case-response.json")))
      assert.same(expected, res)
      assert.equal(2071, res.data.id)
      assert.equal("2071", tostring(res.data.id))
      assert.equal(acquire.null, res.data.contact.company)
      assert.equal(5, #res.data.contact.visits)
      assert.equal(6, #res.data.contact.fields)
      assert.equal("Blink", res.data.contact.clientDetails.engine.name)
      if math.type then
        assert.equal("integer", math.type(res.data.id))
        assert.equal("integer", math.type(res.data.contact.id))
      end
    end)

    it("gives the documented contact's fields", function()
      assert.same({ city = "", state = "", countryId = "517", ip = "2402:8100:21f5:3d13:d9da:18ea:aa28:f778" },
        acquire.fields(res.data.contact))
    end)

    it("is sent exactly once", function()
      assert.equal(1, #srv:requests())
      assert.equal(1, srv:stats().requests)
    end)

    it("is a POST to the endpoint with contactId=597752", function()
      assert.equal("POST", req.method)
      assert.equal(ENDPOINT, req.path)
      assert.equal("contactId=597752", req.raw_query)
      assert.same({ contactId = "597752" }, req.query)
    end)

    it("carries exactly the documented body", function()
      assert.equal(DOCUMENTED_BODY, req.body)
      assert.equal(tostring(#DOCUMENTED_BODY), req.headers["content-length"])
    end)

    it("carries the documented headers", function()
      assert.equal("application/json", req.headers["content-type"])
      assert.equal("application/json", req.headers["accept"])
      assert.equal("Bearer " .. srv.key, req.headers["authorization"])
      assert.matches(UA_PATTERN, req.headers["user-agent"])
    end)

    it("names lua-acquire 0.1.0 and the libcurl version in its default User-Agent", function()
      -- the libcurl the module was built against (curl-config, from its -dev package)
      local p = assert(io.popen("curl-config --version"))
      local v = p:read("*a"):match("libcurl (%d+%.%d+%.%d+)")
      p:close()
      assert.equal("lua-acquire/0.1.0 libcurl/" .. v, req.headers["user-agent"])
    end)

    it("carries each of those headers once", function()
      local count = {}
      for _, h in ipairs(req.header_list) do
        local name = (h.name or h[1]):lower()
        count[name] = (count[name] or 0) + 1
      end
      assert.equal(1, count["content-type"])
      assert.equal(1, count["accept"])
      assert.equal(1, count["authorization"])
      assert.equal(1, count["user-agent"])
    end)
  end)

  it("accepts contactId as a string of digits", function()
    local res, err = client:create_case("597752", { title = "t" })
    assert.is_nil(err)
    assert.equal(2071, res.data.id)
    assert.equal("contactId=597752", srv:last_request().raw_query)
  end)

  it("sends {} without opts", function()
    local res, err = client:create_case(597752)
    assert.is_nil(err)
    assert.is_table(res)
    assert.is_table(res.data)
    assert.equal("{}", srv:last_request().body)
  end)

  it("gets its title and message echoed as data.title and data.description", function()
    local title = "Refund for order #42 \"urgent\""
    local message = "O\195\185 est ma commande ? \240\159\152\128\nMerci"
    local res, err = client:create_case(597752, { title = title, message = message })
    assert.is_nil(err)
    assert.equal(title, res.data.title)
    assert.equal(message, res.data.description)
    assert.equal('{"title":"Refund for order #42 \\"urgent\\"","message":{"type":"message","message":"'
      .. 'O\195\185 est ma commande ? \240\159\152\128\\nMerci","translateLangKey":""}}', srv:last_request().body)
  end)

  it("sends a large body whole", function()
    local title = string.rep("abcdefghij", 20000) -- 200 kB
    local res, err = client:create_case(597752, { title = title })
    assert.is_nil(err)
    assert.equal(title, res.data.title)
    assert.equal('{"title":"' .. title .. '"}', srv:last_request().body)
  end)

  it("reopens the documented case with threadId and sessionId", function()
    local opts = copy(DOCUMENTED_OPTS)
    opts.threadId = 1683
    opts.sessionId = 3711819272
    local res, err = client:create_case(597752, opts)
    assert.is_nil(err)
    assert.equal(1694, res.data.id)
    assert.equal(1683, res.data.threadId)
    assert.equal(1683, res.data.parentId)
    assert.equal("2021-03-24T11:08:17.000Z", res.data.dateCreated)
    assert.equal("2021-03-24T11:08:17.400Z", res.data.dateQueue)
    assert.equal("2021-03-24T11:08:17.498Z", res.data.contact.dateUpdated)
    assert.equal(DOCUMENTED_BODY:sub(1, -2) .. ',"threadId":1683,"sessionId":3711819272}', srv:last_request().body)
  end)

  describe("API errors", function()
    it("401 for a wrong key", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = "wrong-key-0123" }
      local err = is_error(c:create_case(597752, { title = "t" }))
      c:close()
      assert.equal("http", err.kind)
      assert.equal(401, err.status)
      assert.equal("ERROR_UNAUTHORIZED", err.type)
      assert.equal("Invalid API key", err.message)
      assert.is_nil(err.code)
      assert.equal("acquire: http 401 ERROR_UNAUTHORIZED: Invalid API key", tostring(err))
      assert.equal(1, srv:stats().requests) -- not retried
      assert_no_key(err, "wrong-key-0123")
    end)

    it("403 for the read-only key", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.readonly_key }
      local err = is_error(c:create_case(597752, { title = "t" }))
      c:close()
      assert.equal("http", err.kind)
      assert.equal(403, err.status)
      assert.equal("ERROR_UNAUTHORIZED_ACCESS", err.type)
      assert.is_string(err.message)
      assert.is_nil(err.code)
      assert.equal("acquire: http 403 ERROR_UNAUTHORIZED_ACCESS: " .. err.message, tostring(err))
      assert.equal(1, srv:stats().requests)
      assert_no_key(err, srv.readonly_key)
    end)

    it("404 for an unknown contact", function()
      local err = is_error(client:create_case(1, { title = "t" }))
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
      assert.is_nil(err.type)
      assert.equal("Contact not found", err.message)
      assert.same({ message = "Contact not found" }, cjson.decode(err.body))
      assert.equal("acquire: http 404: Contact not found", tostring(err))
      assert.equal("contactId=1", srv:last_request().raw_query)
      assert.equal(1, srv:stats().requests)
    end)

    it("400 ERROR_INVALID_INPUT as the server words it", function()
      srv:fault{ action = "status", status = 400, body = '{"type":"ERROR_INVALID_INPUT","message":"Invalid input"}' }
      local err = is_error(client:create_case(597752, { title = "t" }))
      assert.equal("http", err.kind)
      assert.equal(400, err.status)
      assert.equal("ERROR_INVALID_INPUT", err.type)
      assert.equal("Invalid input", err.message)
      assert.equal("acquire: http 400 ERROR_INVALID_INPUT: Invalid input", tostring(err))
      assert.equal(1, srv:stats().requests)
    end)

    it("an HTML 502 from a proxy", function()
      srv:fault{ action = "html", status = 502 }
      local err = is_error(client:create_case(597752, { title = "t" }))
      assert.equal("http", err.kind)
      assert.equal(502, err.status)
      assert.is_nil(err.type)
      assert.is_nil(err.message)
      assert.is_nil(err.code)
      assert.is_string(err.body)
      contains(err.body:lower(), "<html")
      assert.equal("acquire: http 502", tostring(err))
      assert.equal(1, srv:stats().requests) -- a 502 is never retried: the case may exist
    end)

    it("a 200 whose body is not JSON", function()
      srv:fault{ action = "invalid_json" }
      local err = is_error(client:create_case(597752, { title = "t" }))
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
      assert.is_nil(err.code)
      assert.matches("^acquire: decode: ", tostring(err))
      assert.equal(1, srv:stats().requests)
    end)

    it("a 302 is not followed", function()
      srv:fault{ action = "redirect", status = 302 }
      local err = is_error(client:create_case(597752, { title = "t" }))
      assert.equal("http", err.kind)
      assert.equal(302, err.status)
      assert.is_nil(err.code)
      assert.equal(1, srv:stats().requests)
      assert.equal(1, #srv:requests())
    end)

    it("the client works again after an error", function()
      srv:fault{ action = "html", status = 502, times = 1 }
      is_error(client:create_case(597752, { title = "a" }))
      local res, err = client:create_case(597752, { title = "b" })
      assert.is_nil(err)
      assert.equal("b", res.data.title)
      assert.equal(2, srv:stats().requests)
    end)
  end)

  describe("network errors", function()
    it("a refused port is kind network, curl code 7, no status", function()
      local c = acquire.new{ base_url = "http://127.0.0.1:" .. helper.free_port(), api_key = "net-key-0123", max_retries = 0 }
      local err = is_error(c:create_case(597752, { title = "t" }))
      c:close()
      assert.equal("network", err.kind)
      assert.equal(7, err.code)
      assert.is_nil(err.status)
      assert.is_nil(err.type)
      assert.matches("^acquire: network: ", tostring(err))
      contains(tostring(err), "(curl 7)")
      assert_no_key(err, "net-key-0123")
    end)

    it("a refused port with the default retries still ends as kind network, code 7", function()
      local c = acquire.new{ base_url = "http://127.0.0.1:" .. helper.free_port(), api_key = "k" }
      local err = is_error(c:create_case(597752))
      c:close()
      assert.equal("network", err.kind)
      assert.equal(7, err.code)
      assert.is_nil(err.status)
    end)

    it("a response slower than timeout is curl code 28, sent once (the case may exist)", function()
      srv:fault{ action = "delay", seconds = 6 }
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key, timeout = 0.5, max_retries = 2 }
      local t0 = socket.gettime()
      local err = is_error(c:create_case(597752, { title = "slow" }))
      local elapsed = socket.gettime() - t0
      c:close()
      assert.equal(28, err.code)
      assert.equal("timeout", err.kind)
      assert.is_nil(err.status)
      assert.is_true(elapsed < 4, "took " .. elapsed .. " s") -- not the server's 6 s
      assert.equal(1, srv:stats().requests)
    end)
  end)

  describe("the API key", function()
    local KEY

    before_each(function() KEY = srv.key end)

    it("is redacted from an error body that echoes it", function()
      srv:fault{ action = "status", status = 500,
                 body = '{"type":"ERROR_SERVER_ERROR","message":"bad token Bearer ' .. KEY .. ' rejected"}' }
      local err = is_error(client:create_case(597752, { title = "t" }))
      assert.equal(500, err.status)
      assert.equal("ERROR_SERVER_ERROR", err.type)
      assert.is_string(err.message)
      assert.is_string(err.body)
      contains(err.message, "bad token Bearer ")
      assert_no_key(err, KEY)
    end)

    it("is redacted from a 401 body that echoes it", function()
      srv:fault{ action = "status", status = 401, body = '{"message":"key ' .. KEY .. ' is invalid","type":"ERROR_UNAUTHORIZED"}' }
      local err = is_error(client:create_case(597752))
      assert.equal(401, err.status)
      assert_no_key(err, KEY)
    end)

    it("is redacted from a non-JSON 200 body that echoes it", function()
      srv:fault{ action = "status", status = 200, body = "oops " .. KEY .. " oops",
                 content_type = "text/plain" }
      local err = is_error(client:create_case(597752))
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
      assert_no_key(err, KEY)
    end)

    it("is redacted from an HTML error page that echoes it twice", function()
      srv:fault{ action = "status", status = 502,
                 body = "<html><body>" .. KEY .. "<br>Authorization: Bearer " .. KEY .. "</body></html>",
                 content_type = "text/html" }
      local err = is_error(client:create_case(597752))
      assert.equal(502, err.status)
      assert_no_key(err, KEY)
      contains(err.body, "<html><body>")
    end)

    it("appears in no error of any kind", function()
      local errs = {}
      local function collect(c, ...)
        local res, err = c:create_case(...)
        assert.is_nil(res)
        errs[#errs + 1] = err
      end
      collect(client, 1)                                                     -- 404
      srv:fault{ action = "html", status = 502, times = 1 }
      collect(client, 597752)                                                -- 502
      srv:fault{ action = "invalid_json", times = 1 }
      collect(client, 597752)                                                -- decode
      srv:fault{ action = "redirect", status = 302, times = 1 }
      collect(client, 597752)                                                -- 302
      local refused = acquire.new{ base_url = "http://127.0.0.1:" .. helper.free_port(), api_key = KEY, max_retries = 0 }
      collect(refused, 597752)                                               -- network
      refused:close()
      assert.equal(5, #errs)
      for _, e in ipairs(errs) do assert_no_key(e, KEY) end
    end)

    it("is not in tostring(client)", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = "client-key-0123" }
      assert.is_nil(tostring(c):find("client-key-0123", 1, true))
      c:close()
      assert.is_nil(tostring(c):find("client-key-0123", 1, true))
    end)
  end)

  describe("transport", function()
    it("uses one TCP connection for 20 calls", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      srv:reset()
      for i = 1, 20 do
        local res, err = c:create_case(597752, { title = "call " .. i })
        assert.is_nil(err)
        assert.equal("call " .. i, res.data.title)
      end
      c:close()
      local stats = srv:stats()
      assert.equal(20, stats.requests)
      assert.equal(1, stats.connections)
      local reqs = srv:requests()
      assert.equal(20, #reqs)
      for i = 2, 20 do assert.equal(reqs[1].connection, reqs[i].connection) end
      assert.equal('{"title":"call 20"}', reqs[20].body)
    end)

    it("gives each client its own key", function()
      local good = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      local ro = acquire.new{ base_url = srv.base_url, api_key = srv.readonly_key }
      assert.is_table((good:create_case(597752)))
      local _, err = ro:create_case(597752)
      assert.equal(403, err.status)
      assert.is_table((good:create_case(597752)))
      good:close()
      ro:close()
      local reqs = srv:requests()
      assert.equal("Bearer " .. srv.key, reqs[1].headers.authorization)
      assert.equal("Bearer " .. srv.readonly_key, reqs[2].headers.authorization)
      assert.equal("Bearer " .. srv.key, reqs[3].headers.authorization)
    end)

    it("sends a configured User-Agent", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key, user_agent = "my-app/1.0" }
      assert.is_table((c:create_case(597752)))
      c:close()
      assert.equal("my-app/1.0", srv:last_request().headers["user-agent"])
    end)
  end)

  describe("misuse", function()
    it("sends nothing when a call raises", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      srv:reset()
      contains(raises(c.create_case, c, "12a"), "contactId")
      contains(raises(c.create_case, c, 0), "contactId")
      contains(raises(c.create_case, c, nil), "contactId")
      contains(raises(c.create_case, c, -1, { title = "t" }), "contactId")
      contains(raises(c.create_case, c, 597752, { agentId = "1" }), "bad field 'agentId' (integer expected, got string)")
      contains(raises(c.create_case, c, 597752, { foo = 1 }), "unknown field 'foo'")
      contains(raises(c.create_case, c, 597752, { title = "\255" }), "UTF-8")
      contains(raises(c.create_case, c, 597752, { mentionUsers = { "a", true } }), "bad field 'mentionUsers[2]'")
      raises(c.create_case, c, 597752, { fields = { x = 0 / 0 } })
      raises(c.create_case, c, 597752, "not a table")
      local stats = srv:stats()
      assert.equal(0, stats.requests)
      assert.equal(0, stats.connections)
      assert.equal(0, #srv:requests())
      -- and the client still works
      assert.is_table((c:create_case(597752)))
      assert.equal(1, srv:stats().requests)
      c:close()
    end)

    it("sends nothing from the module-level create_case when it raises", function()
      acquire.configure{ base_url = srv.base_url, api_key = srv.key }
      srv:reset()
      raises(acquire.create_case, "12a")
      raises(acquire.create_case, 597752, { isFromCobrowse = "yes" })
      assert.equal(0, srv:stats().requests)
    end)
  end)

  describe("close", function()
    it("is idempotent and makes create_case raise 'client is closed'", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      assert.is_table((c:create_case(597752)))
      c:close()
      c:close()
      contains(raises(c.create_case, c, 597752), "client is closed")
      contains(raises(c.create_case, c, 597752, { title = "t" }), "client is closed")
      c:close()
      assert.equal(1, srv:stats().requests)
    end)

    it("works on a client that never sent anything", function()
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      c:close()
      contains(raises(c.create_case, c, 597752), "client is closed")
      assert.equal(0, srv:stats().requests)
    end)

    if _VERSION == "Lua 5.4" then
      it("happens at the end of a <close> variable's scope (Lua 5.4)", function()
        local chunk = assert(load([[
          local acquire, base_url, key = ...
          local held
          do
            local c <close> = acquire.new{ base_url = base_url, api_key = key }
            held = c
            assert(c:create_case(597752))
          end
          return held
        ]], "=close_scope"))
        local held = chunk(acquire, srv.base_url, srv.key)
        contains(raises(held.create_case, held, 597752), "client is closed")
        assert.equal(1, srv:stats().requests)
      end)

      it("happens when an error leaves a <close> variable's scope (Lua 5.4)", function()
        local chunk = assert(load([[
          local acquire, base_url, key, box = ...
          local c <close> = acquire.new{ base_url = base_url, api_key = key }
          box.c = c
          error("boom")
        ]], "=close_error"))
        local box = {}
        local ok, msg = pcall(chunk, acquire, srv.base_url, srv.key, box)
        assert.is_false(ok)
        contains(tostring(msg), "boom")
        contains(raises(box.c.create_case, box.c, 597752), "client is closed")
      end)
    end
  end)

  describe("garbage collection", function()
    local function make_clients(weak, n)
      for i = 1, n do
        local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
        if i % 3 == 0 then assert(c:create_case(597752, { title = "gc " .. i })) end
        if i % 5 == 0 then c:close() end
        weak[i] = c
      end
    end

    it("collects clients, used, closed or not, without a crash", function()
      local weak = setmetatable({}, { __mode = "v" })
      make_clients(weak, 50)
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(weak))
      assert.equal(16, srv:stats().requests)
      -- the module still works after the collection
      local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      assert.is_table((c:create_case(597752)))
      c:close()
    end)
  end)

  describe("the module-level client", function()
    it("is the one acquire.configure makes", function()
      acquire.configure{ base_url = srv.base_url, api_key = srv.key }
      local res, err = acquire.create_case(597752, { title = "configured" })
      assert.is_nil(err)
      assert.equal("configured", res.data.title)
      assert.equal("Bearer " .. srv.key, srv:last_request().headers.authorization)
    end)

    it("is replaced by a second acquire.configure", function()
      acquire.configure{ base_url = srv.base_url, api_key = srv.readonly_key }
      local _, err = acquire.create_case(597752)
      assert.equal(403, err.status)
      acquire.configure{ base_url = srv.base_url, api_key = srv.key }
      local res = acquire.create_case(597752, { title = "again" })
      assert.equal("again", res.data.title)
      assert.equal(2, srv:stats().requests)
    end)

    it("is made from ACQUIRE_BASE_URL and ACQUIRE_API_KEY when never configured", function()
      local rc, out = helper.run_lua([[
        local acquire = require "acquire"
        local res, err = acquire.create_case(597752, { title = "from env" })
        if not res then print("ERR " .. tostring(err)) os.exit(1) end
        print(res.data.id .. " " .. res.data.title)
      ]], { env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key }, merge = true })
      assert.equal(0, rc, out)
      assert.equal("2071 from env\n", out)
      local req = srv:last_request()
      assert.equal("Bearer " .. srv.key, req.headers.authorization)
      assert.equal('{"title":"from env"}', req.body)
    end)

    it("takes ACQUIRE_BASE_URL over ACQUIRE_ACCOUNT_ID when both are set (as with-server sets them)", function()
      local rc, out = helper.run_lua([[
        local acquire = require "acquire"
        local res, err = acquire.create_case(597752)
        print(res and res.data.id or tostring(err))
      ]], { env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_ACCOUNT_ID = "local", ACQUIRE_API_KEY = srv.key },
            merge = true })
      assert.equal(0, rc, out)
      assert.equal("2071\n", out)
      assert.equal(1, srv:stats().requests)
    end)

    it("uses the environment's key (read-only key: 403)", function()
      local rc, out = helper.run_lua([[
        local acquire = require "acquire"
        local res, err = acquire.create_case(597752)
        print(res and "OK" or (err.kind .. " " .. tostring(err.status) .. " " .. tostring(err.type)))
      ]], { env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.readonly_key }, merge = true })
      assert.equal(0, rc, out)
      assert.equal("http 403 ERROR_UNAUTHORIZED_ACCESS\n", out)
    end)

    it("raises naming the API key (ACQUIRE_API_KEY) when it is not set, and sends nothing", function()
      local rc, out = helper.run_lua([[
        local acquire = require "acquire"
        local ok, msg = pcall(acquire.create_case, 597752)
        print(tostring(ok) .. " " .. tostring(msg))
      ]], { env = { ACQUIRE_BASE_URL = srv.base_url }, merge = true })
      assert.equal(0, rc, out)
      assert.matches("^false ", out)
      -- the option is the environment variable here: api_key or ACQUIRE_API_KEY
      contains(out:lower(), "api_key")
      assert.equal(0, srv:stats().requests)
    end)

    it("raises naming account_id when ACQUIRE_ACCOUNT_ID is not a DNS label", function()
      local rc, out = helper.run_lua([[
        local acquire = require "acquire"
        local ok, msg = pcall(acquire.create_case, 597752)
        print(tostring(ok) .. " " .. tostring(msg))
      ]], { env = { ACQUIRE_ACCOUNT_ID = "evil.com/x?", ACQUIRE_API_KEY = "k" }, merge = true })
      assert.equal(0, rc, out)
      assert.matches("^false ", out)
      contains(out, "account_id")
    end)

    it("is the configured one even when the environment is set", function()
      local rc, out = helper.run_lua(([[
        local acquire = require "acquire"
        acquire.configure{ base_url = %q, api_key = %q }
        local res, err = acquire.create_case(597752, { title = "configured" })
        print(res and res.data.title or tostring(err))
      ]]):format(srv.base_url, srv.key),
        { env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = "wrong-env-key" }, merge = true })
      assert.equal(0, rc, out)
      assert.equal("configured\n", out)
      assert.equal("Bearer " .. srv.key, srv:last_request().headers.authorization)
    end)
  end)
end)
