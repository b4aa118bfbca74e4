-- The local Acquire server's cases: what it stores for every create it processes
-- (faults with create = true included), and the two reads a client looks a case
-- up with (case-list.md): the case list (where, select, relations, paging) and
-- the single case; the lag and page-out controls. Talks to the server with
-- LuaSocket only: these specs check the stand-in, not the module.
local helper = require "spec.helper"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local CONTACT = 597752
local CREATE = helper.API_PATH .. "?contactId=" .. CONTACT
local CASES = "/api/v1/crm/objects/case"
local ISO_MS = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"

local srv = helper.server()

local function int(n)
  if type(n) == "number" and math.tointeger then return math.tointeger(n) or n end
  return n
end

-- One request to the API. -> status (or nil), body text, headers (or the error)
local function api(method, path, body, key)
  local chunks = {}
  local headers = {}
  if key ~= false then headers.authorization = "Bearer " .. (key or srv.key) end
  if body then
    headers["content-type"] = "application/json"
    headers["content-length"] = tostring(#body)
  end
  local ok, code, hs = http.request{
    url = srv.base_url .. path, method = method, headers = headers,
    source = body and ltn12.source.string(body) or nil, sink = ltn12.sink.table(chunks),
  }
  if not ok then return nil, table.concat(chunks), code end
  return code, table.concat(chunks), hs
end

local function create(title, message)
  return api("POST", CREATE, cjson.encode{ title = title,
    message = { type = "message", message = message or ("about " .. title) } })
end

-- A query string from { name, value, name, value, ... }, values escaped (| as %7C).
local function query(list)
  local out = {}
  for i = 1, #list, 2 do
    local v = tostring(list[i + 1]):gsub("[^%w%-_%.~]", function(c)
      return ("%%%02X"):format(c:byte())
    end)
    out[#out + 1] = list[i] .. "=" .. v
  end
  return #out > 0 and ("?" .. table.concat(out, "&")) or ""
end

-- GET the list -> status, decoded body (the answer's "data" on 200), raw text
local function list(params, key)
  local code, text = api("GET", CASES .. query(params or {}), nil, key)
  local ok, doc = pcall(cjson.decode, text)
  if code == 200 then return code, doc.data, text end
  return code, ok and doc or nil, text
end

local function ids(rows)
  local out = {}
  for i, c in ipairs(rows) do out[i] = int(c.id) end
  return out
end

local function by_contact(extra)
  local p = { "where", "contactId|eq|" .. CONTACT }
  for _, v in ipairs(extra or {}) do p[#p + 1] = v end
  return p
end

describe("the local server's cases", function()
  describe("every processed create stores a case", function()
    it("plain creates: unique ascending ids from 100001, the sent text, the server's clock", function()
      local day0 = os.date("!%Y-%m-%d")
      for i = 1, 3 do assert.equal(200, (create("t" .. i))) end
      local day1 = os.date("!%Y-%m-%d")
      local code, data = list(by_contact())
      assert.equal(200, code)
      assert.equal(3, int(data.count))
      assert.same({ 100001, 100002, 100003 }, ids(data.data))
      for i, c in ipairs(data.data) do
        assert.equal("t" .. i, c.title)
        assert.equal("about t" .. i, c.description)
        assert.equal("active", c.status)
        assert.equal("chat", c.channel)
        assert.equal(CONTACT, int(c.contactId))
        assert.equal(int(c.id), int(c.threadId))
        assert.matches(ISO_MS, c.dateCreated)
        local day = c.dateCreated:sub(1, 10)
        assert.is_true(day == day0 or day == day1, c.dateCreated)
      end
      assert.is_true(data.data[1].dateCreated <= data.data[3].dateCreated)
      local stored = srv:cases()
      assert.same({ 100001, 100002, 100003 }, ids(stored))
      assert.equal(3, srv:stats().cases)
    end)

    it("the sent channel is kept; a reopen keeps the thread it reopened", function()
      local body = cjson.decode(helper.DOCUMENTED_BODY)
      body.channel, body.threadId, body.sessionId = "email", 1683, 3711819272
      assert.equal(200, (api("POST", CREATE, cjson.encode(body))))
      local c = srv:cases()[1]
      assert.equal("email", c.channel)
      assert.equal(1683, c.threadId)
      assert.equal(1683, c.parentId)
    end)

    it("refused creates store nothing (400, 401, 403, 404)", function()
      assert.equal(400, (api("POST", CREATE, "{")))
      assert.equal(401, (api("POST", CREATE, "{}", "nope")))
      assert.equal(403, (api("POST", CREATE, "{}", srv.readonly_key)))
      assert.equal(404, (api("POST", helper.API_PATH .. "?contactId=1", "{}")))
      assert.equal(200, (api("POST", CREATE, "{}", srv.create_only_key)))
      assert.equal(1, #srv:cases())
    end)

    it("the answer stays the fixture, byte for byte; unique_ids makes it the stored case", function()
      local code, text = api("POST", CREATE, helper.DOCUMENTED_BODY)
      assert.equal(200, code)
      assert.equal(helper.fixture("create-case-response.json"), text)
      srv:config{ unique_ids = true }
      local created = {}
      for i = 1, 2 do
        code, text = create("u" .. i)
        assert.equal(200, code)
        created[i] = cjson.decode(text).data
      end
      local _, data = list(by_contact{ "where", "title|eq|u2" })
      assert.equal(1, int(data.count))
      local listed = data.data[1]
      assert.equal(100003, int(created[2].id))
      for _, k in ipairs{ "id", "threadId", "title", "description", "dateCreated", "channel" } do
        assert.equal(int(listed[k]), int(created[2][k]), k)
      end
      assert.are_not.equal(int(created[1].id), int(created[2].id))
      -- the rest of the answer is the documented one
      assert.equal(597752, int(created[2].contact.id))
      assert.equal(1683, int(created[2].parentId))
    end)
  end)

  describe("faults: create = true stores the case, then misbehaves", function()
    it("reset after processing: no answer, the case exists", function()
      srv:fault{ action = "reset", create = true, times = 1 }
      local code = create("lost")
      assert.is_nil(code)
      local stored = srv:cases()
      assert.equal(1, #stored)
      assert.equal("lost", stored[1].title)
      local _, data = list(by_contact())
      assert.same({ 100001 }, ids(data.data))
    end)

    it("502 after creation: the case exists", function()
      srv:fault{ action = "status", status = 502, create = true, times = 1 }
      assert.equal(502, (create("gateway")))
      assert.equal("gateway", srv:cases()[1].title)
    end)

    it("truncation: half a 200 sent, the case exists (with its own id under unique_ids)", function()
      srv:config{ unique_ids = true }
      srv:fault{ action = "truncate", create = true, times = 1 }
      local s = socket.connect("127.0.0.1", srv.port)
      local body = cjson.encode{ title = "cut" }
      s:send("POST " .. CREATE .. " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " .. srv.key
        .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
      s:settimeout(5)
      local got, err, partial = s:receive("*a")
      s:close()
      local raw = got or partial
      assert.equal("closed", err or "closed")
      local len = tonumber(raw:match("[Cc]ontent%-[Ll]ength: (%d+)"))
      local head_end = raw:find("\r\n\r\n", 1, true)
      assert.equal(math.floor(len / 2), #raw - head_end - 3)
      local stored = srv:cases()
      assert.equal(1, #stored)
      assert.equal("cut", stored[1].title)
      assert.equal(100001, stored[1].id)
    end)

    it("without create (the default) a fault stores nothing; delay answers and stores", function()
      srv:fault{ action = "reset", times = 1 }
      srv:fault{ action = "status", status = 502, times = 1 }
      srv:fault{ action = "truncate", times = 1 }
      srv:fault{ action = "delay", seconds = 0.05, times = 1 }
      assert.is_nil((create("r")))
      assert.equal(502, (create("s")))
      create("t")
      assert.equal(0, #srv:cases())
      assert.equal(200, (create("d")))
      local stored = srv:cases()
      assert.equal(1, #stored)
      assert.equal("d", stored[1].title)
      srv:fault{ action = "delay", seconds = 0.01, create = false, times = 1 }
      assert.equal(200, (create("no")))
      assert.equal(1, #srv:cases())
    end)

    it("create = true on a refused request stores nothing", function()
      srv:fault{ action = "status", status = 502, create = true, times = 1 }
      assert.equal(502, (api("POST", CREATE, "{}", "wrong-key")))
      assert.equal(0, #srv:cases())
    end)

    it("endpoint limits a rule to the create or to the reads", function()
      srv:fault{ action = "status", status = 500, endpoint = "create", times = 1 }
      srv:fault{ action = "status", status = 503, endpoint = "read", times = 1 }
      assert.equal(503, (list()))
      assert.equal(200, (list()))
      assert.equal(500, (create("x")))
      assert.equal(200, (create("y")))
      assert.equal(1, #srv:cases())
    end)

    it("refuses a create or endpoint that is not what it says", function()
      assert.has_error(function() srv:fault{ action = "reset", create = "yes" } end)
      assert.has_error(function() srv:fault{ action = "reset", endpoint = "list" } end)
    end)
  end)

  describe("the case list", function()
    before_each(function()
      for i = 1, 5 do assert.equal(200, (create("p" .. i))) end
    end)

    it("pages: limit 2 over 5 cases, ascending ids, count the total", function()
      local want = { { 100001, 100002 }, { 100003, 100004 }, { 100005 }, {} }
      for page = 0, 3 do
        local code, data = list(by_contact{ "limit", 2, "page", page })
        assert.equal(200, code)
        assert.equal(5, int(data.count))
        assert.equal(page, int(data.page))
        assert.equal(page * 2, int(data.offset))
        assert.equal(2, int(data.limit))
        assert.same(want[page + 1], ids(data.data))
      end
    end)

    it("offset wins over page; default limit 20, at most 100", function()
      local _, data = list{ "offset", 3, "page", 0, "limit", 2 }
      assert.same({ 100004, 100005 }, ids(data.data))
      assert.equal(1, int(data.page))
      assert.equal(3, int(data.offset))
      _, data = list()
      assert.equal(20, int(data.limit))
      assert.equal(0, int(data.page))
      assert.equal(5, #data.data)
      _, data = list{ "limit", 1000 }
      assert.equal(100, int(data.limit))
    end)

    it("where: by title; conditions AND-ed; where[] and where[N] too; | inside a value", function()
      local _, data = list{ "where", "title|eq|p3" }
      assert.same({ 100003 }, ids(data.data))
      assert.equal(1, int(data.count))
      _, data = list{ "where[]", "title|eq|p3", "where[]", "id|eq|100003" }
      assert.same({ 100003 }, ids(data.data))
      _, data = list{ "where[0]", "title|eq|p3", "where[1]", "id|eq|100004" }
      assert.same({}, ids(data.data))
      assert.equal(0, int(data.count))
      _, data = list{ "where", "status|eq|active", "where", "channel|eq|chat" }
      assert.equal(5, int(data.count))
      _, data = list{ "where", "contactId|eq|1" }
      assert.equal(0, int(data.count))
      create("a|b")
      _, data = list{ "where", "title|eq|a|b" }
      assert.same({ 100006 }, ids(data.data))
    end)

    it("refuses what it does not support with 400 ERROR_INVALID_INPUT", function()
      for _, p in ipairs{
        { "where", "description|eq|x" },  -- unknown column
        { "where", "title|like|p%" },     -- unknown expression
        { "where", "title" },             -- not column|expression|value
        { "where", "id|eq|abc" },         -- not an integer
        { "select", "id|nope" },
        { "limit", 0 }, { "page", -1 }, { "offset", "x" },
        { "sort", "id" },                 -- unknown parameter
        { "limit", 1, "limit", 2 },
      } do
        local code, doc = list(p)
        assert.equal(400, code, cjson.encode(p))
        assert.equal("ERROR_INVALID_INPUT", doc.type)
        assert.is_string(doc.message)
      end
    end)

    it("select picks columns; relations=contact embeds the contact", function()
      local _, data = list{ "select", "id|title", "limit", 1 }
      assert.same({ id = 100001, title = "p1" }, { id = int(data.data[1].id), title = data.data[1].title })
      local n = 0
      for _ in pairs(data.data[1]) do n = n + 1 end
      assert.equal(2, n)
      _, data = list{ "relations", "contact|messages", "limit", 1 }
      assert.equal(CONTACT, int(data.data[1].contact.id))
      assert.equal("Chrome", data.data[1].contact.clientName)
      _, data = list{ "limit", 1 }
      assert.is_nil(data.data[1].contact)
    end)

    it("lag_ms hides new cases from every read until they are that old", function()
      -- 3 s: the reads below must all come before it, on a loaded machine too
      srv:cases_config{ lag_ms = 3000 }
      create("late")
      local t0 = socket.gettime()                  -- after it was stored
      local _, data = list{ "where", "title|eq|late" }
      assert.equal(0, int(data.count))
      assert.equal(404, (api("GET", CASES .. "/100006")))
      local stored, report = srv:cases()
      assert.equal(6, #stored)
      assert.equal(3000, report.lag_ms)
      assert.same({}, report.visible)
      socket.sleep(math.max(0, 3.1 - (socket.gettime() - t0)))
      _, data = list{ "where", "title|eq|late" }
      assert.same({ 100006 }, ids(data.data))
      assert.equal(200, (api("GET", CASES .. "/100006")))
    end)

    it("hide pages cases out of the list and the single read; unhide brings them back", function()
      srv:cases_config{ hide = { 100002, 100004 } }
      local _, data = list{ "limit", 2 }
      assert.same({ 100001, 100003 }, ids(data.data))
      assert.equal(3, int(data.count))
      assert.equal(404, (api("GET", CASES .. "/100002")))
      local stored, report = srv:cases()
      assert.equal(5, #stored)
      assert.same({ 100002, 100004 }, report.hidden)
      assert.same({ 100001, 100003, 100005 }, report.visible)
      srv:cases_config{ unhide = { 100002 } }
      _, data = list()
      assert.same({ 100001, 100002, 100003, 100005 }, ids(data.data))
    end)

    it("reads one case: {data: case}, select, relations; 404 ERROR_NOT_FOUND; 400 for a bad id", function()
      local code, text = api("GET", CASES .. "/100002")
      assert.equal(200, code)
      local c = cjson.decode(text).data
      assert.equal(100002, int(c.id))
      assert.equal("p2", c.title)
      assert.matches(ISO_MS, c.dateCreated)
      code, text = api("GET", CASES .. "/100002?select=id%7Cstatus&relations=contact")
      assert.equal(200, code)
      c = cjson.decode(text).data
      assert.equal("active", c.status)
      assert.is_nil(c.title)
      assert.equal(CONTACT, int(c.contact.id))
      code, text = api("GET", CASES .. "/999999")
      assert.equal(404, code)
      assert.same({ type = "ERROR_NOT_FOUND", message = "Case not found" }, cjson.decode(text))
      assert.equal(400, (api("GET", CASES .. "/abc")))
      assert.equal(400, (api("GET", CASES .. "/100002?where=id%7Ceq%7C1")))
    end)

    it("auth: 401 without or with a wrong key, 403 for a key that may not read; GET only", function()
      local code, doc = list({}, false)
      assert.equal(401, code)
      assert.equal("ERROR_UNAUTHORIZED", doc.type)
      assert.equal(401, (list({}, "wrong")))
      code, doc = list({}, srv.create_only_key)
      assert.equal(403, code)
      assert.equal("ERROR_UNAUTHORIZED_ACCESS", doc.type)
      assert.equal(403, (api("GET", CASES .. "/100001", nil, srv.create_only_key)))
      assert.equal(401, (api("GET", CASES .. "/100001", nil, false)))
      assert.equal(200, (list({}, srv.readonly_key)))
      assert.equal(405, (api("POST", CASES, "{}")))
    end)

    it("every read is recorded like a create", function()
      local before = srv:stats().requests
      list()
      local last = srv:last_request()
      assert.equal(before + 1, srv:stats().requests)
      assert.equal("GET", last.method)
      assert.equal(CASES, last.path)
    end)
  end)

  it("reset clears cases and settings, and ids start again at 100001", function()
    create("a")
    srv:config{ unique_ids = true }
    srv:cases_config{ lag_ms = 10000, hide = { 100002 } }
    srv:reset()
    local stored, report = srv:cases()
    assert.equal(0, #stored)
    assert.equal(0, report.lag_ms)
    assert.same({}, report.hidden)
    assert.is_false(srv:config().unique_ids)
    local code, text = create("b")
    assert.equal(200, code)
    assert.equal(2071, int(cjson.decode(text).data.id))
    local _, data = list()
    assert.same({ 100001 }, ids(data.data))
  end)

  it("refuses control settings it does not know", function()
    assert.has_error(function() srv:cases_config{ lag = 1 } end)
    assert.has_error(function() srv:cases_config{ hide = { "x" } } end)
    assert.has_error(function() srv:config{ unique_ids = 1 } end)
  end)
end)
