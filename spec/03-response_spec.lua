-- acquire.decode_response and acquire.fields: what a response becomes, the
-- documented one (spec/fixtures/api/create-case-response.json) and every error
-- shape the module must read (spec/fixtures/api/errors.md), and the err table
-- with its tostring.
local acquire = require "acquire"
local helper = require "spec.helper"
local contains, read_file = helper.contains, helper.read_file
local cjson = require "cjson"

local FIXTURE = read_file("spec/fixtures/api/create-case-response.json")
local JSON_HEADERS = { ["Content-Type"] = "application/json; charset=utf-8" }
local HTML_502 = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
  .. "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

-- decode_response must fail: returns err after checking the common shape.
local function fails(status, headers, body)
  local res, err = acquire.decode_response(status, headers, body)
  assert.is_nil(res)
  assert.is_table(err)
  local mt = getmetatable(err)
  assert.is_table(mt)
  assert.equal("acquire.Error", mt.__name)
  assert.equal("function", type(mt.__tostring))
  return err
end

local function http_error(status, body, headers)
  local err = fails(status, headers or JSON_HEADERS, body)
  assert.equal("http", err.kind)
  assert.equal(status, err.status)
  assert.is_nil(err.code)
  return err
end

describe("acquire.decode_response", function()

  describe("on the documented response", function()
    local res, err

    setup(function()
      res, err = acquire.decode_response(200, JSON_HEADERS, FIXTURE)
    end)

    it("succeeds", function()
      assert.is_nil(err)
      assert.is_table(res)
    end)

    it("returns the whole decoded document", function()
      assert.same(cjson.decode(FIXTURE), res)
    end)

    it("has the case id 2071 and its thread", function()
      assert.equal(2071, res.data.id)
      assert.equal("2071", tostring(res.data.id))
      assert.equal(1683, res.data.threadId)
      assert.equal(1683, res.data.parentId)
      assert.equal(1604, res.data.timelineId)
      assert.equal("active", res.data.status)
      assert.equal("string", res.data.title)
      assert.equal("I'm reopening the closed case", res.data.description)
      assert.equal("chat", res.data.channel)
      assert.equal(false, res.data.isCaseJoined)
    end)

    if math.type then
      it("gives integers as Lua integers (Lua 5.3+)", function()
        assert.equal("integer", math.type(res.data.id))
        assert.equal("integer", math.type(res.data.contact.id))
        assert.equal("integer", math.type(res.data.contact.visits[5].id))
        assert.equal("integer", math.type(res.data.contact.fields[1].field.config.offline_order))
        assert.equal("integer", math.type(res.data.contact.fields[3].field.config.online_order)) -- 0
        assert.equal("integer", math.type(res.data.userId))
      end)

      it("gives every integer of the document as a Lua integer (Lua 5.3+)", function()
        local count = 0
        local function walk(expected, got, path)
          if type(expected) == "number" then
            count = count + 1
            assert.equal("integer", math.type(got), path)
            assert.equal(expected, got, path)
          elseif type(expected) == "table" then
            for k, v in pairs(expected) do walk(v, got[k], path .. "." .. tostring(k)) end
          end
        end
        walk(cjson.decode(FIXTURE), res, "res")
        -- ids, contactIds, orders... of the fixture
        assert.equal(39, count)
      end)
    end

    it("gives JSON null as acquire.null", function()
      assert.equal(acquire.null, res.data.contact.company)
      assert.equal(acquire.null, res.data.contact.clientDeviceVendor)
      assert.equal(acquire.null, res.data.datePending)
      assert.equal(acquire.null, res.data.dateClosed)
      assert.equal(acquire.null, res.data.contact.fields[1].value)
    end)

    it("has the contact with its 5 visits and 6 fields", function()
      local contact = res.data.contact
      assert.equal(597752, contact.id)
      assert.equal(5, #contact.visits)
      assert.equal(6, #contact.fields)
      assert.equal(1367, contact.visits[1].id)
      assert.equal(1371, contact.visits[5].id)
      assert.equal("https://5mkg3t.uat.env.acquire.io/simulate", contact.visits[3].url)
      assert.equal("ip", contact.fields[6].field.key)
      assert.equal("2402:8100:21f5:3d13:d9da:18ea:aa28:f778", contact.fields[6].value)
      assert.equal("Blink", contact.clientDetails.engine.name)
      assert.equal("87.0.4280.66", contact.clientDetails.engine.version)
      assert.equal("1.71", contact.clientDetails.network.speed)
    end)

    it("gives empty arrays as empty tables", function()
      assert.same({}, res.data.users)
      assert.same({}, res.data.preMessages)
      assert.same({}, res.data.contact.tags)
      assert.same({}, res.data.contact.fields[6].field.config.capture)
    end)
  end)

  describe("on a reopen response", function()
    it("has the reopened case's values", function()
      local body = FIXTURE
        :gsub('"id": 2071,', '"id": 1694,')
        :gsub('"dateCreated": "2021%-03%-30T18:21:41.000Z"', '"dateCreated": "2021-03-24T11:08:17.000Z"')
        :gsub('"dateQueue": "2021%-03%-30T18:21:41.338Z"', '"dateQueue": "2021-03-24T11:08:17.400Z"')
      local res, err = acquire.decode_response(200, nil, body)
      assert.is_nil(err)
      assert.equal(1694, res.data.id)
      assert.equal("1694", tostring(res.data.id))
      assert.equal(1683, res.data.threadId)
      assert.equal(1683, res.data.parentId)
      assert.equal("2021-03-24T11:08:17.000Z", res.data.dateCreated)
      assert.equal("2021-03-24T11:08:17.400Z", res.data.dateQueue)
    end)
  end)

  describe("success", function()
    it("accepts nil headers", function()
      local res = acquire.decode_response(200, nil, '{"data":{"id":2071}}')
      assert.same({ data = { id = 2071 } }, res)
    end)

    it("accepts any 2xx", function()
      assert.same({ ok = true }, acquire.decode_response(201, nil, '{"ok":true}'))
      assert.same({ ok = true }, acquire.decode_response(299, nil, '{"ok":true}'))
    end)

    it("decodes a JSON array body", function()
      assert.same({ 1, 2, 3 }, acquire.decode_response(200, nil, "[1,2,3]"))
    end)

    it("keeps non-integral numbers as floats", function()
      local res = acquire.decode_response(200, nil, '{"a":1.5,"b":-0.25,"c":1e-3}')
      assert.equal(1.5, res.a)
      assert.equal(-0.25, res.b)
      assert.equal(0.001, res.c)
      if math.type then
        assert.equal("float", math.type(res.a))
        assert.equal("float", math.type(res.b))
      end
    end)

    it("reads ids above 2^31 exactly", function()
      local res = acquire.decode_response(200, nil, '{"sessionId":3711819272,"big":1234567890123456}')
      assert.equal(3711819272, res.sessionId)
      assert.equal(1234567890123456, res.big)
      -- %.0f writes any exact integer, whatever tostring does with doubles
      assert.equal("3711819272", ("%.0f"):format(res.sessionId))
      assert.equal("1234567890123456", ("%.0f"):format(res.big))
      if math.type then
        assert.equal("3711819272", tostring(res.sessionId))
        assert.equal("1234567890123456", tostring(res.big))
      end
      if math.type then
        assert.equal("integer", math.type(res.sessionId))
        assert.equal("integer", math.type(res.big))
      end
    end)

    it("keeps strings byte for byte, escapes decoded", function()
      local res = acquire.decode_response(200, nil, '{"s":"a\\"b\\\\c\\/d\\n\\u00e9\\ud83d\\ude00"}')
      assert.equal('a"b\\c/d\n\195\169\240\159\152\128', res.s)
    end)
  end)

  describe("a 2xx body that is not JSON", function()
    it("is a decode error with the status", function()
      local err = fails(200, { ["Content-Type"] = "text/html" }, "<html>ok</html>")
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
      assert.is_nil(err.code)
      assert.equal("<html>ok</html>", err.body)
      assert.matches("^acquire: decode: ", tostring(err))
    end)

    it("is a decode error for truncated JSON", function()
      local err = fails(200, JSON_HEADERS, FIXTURE:sub(1, 500))
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
      assert.equal(FIXTURE:sub(1, 500), err.body)
    end)

    it("is a decode error for an empty body", function()
      local err = fails(200, JSON_HEADERS, "")
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
    end)

    it("keeps the status of other 2xx", function()
      local err = fails(201, nil, "created")
      assert.equal("decode", err.kind)
      assert.equal(201, err.status)
    end)

    it("caps err.body at 4096 bytes", function()
      local big = "<p>" .. string.rep("x", 9997) -- 10000 bytes
      local err = fails(200, nil, big)
      assert.equal(4096, #err.body)
      assert.equal(big:sub(1, 4096), err.body)
    end)
  end)

  describe("a non-2xx response", function()
    it("reads type and message (401)", function()
      local body = '{"type":"ERROR_UNAUTHORIZED","message":"Invalid API key"}'
      local err = http_error(401, body)
      assert.equal("ERROR_UNAUTHORIZED", err.type)
      assert.equal("Invalid API key", err.message)
      assert.equal(body, err.body)
      assert.equal("acquire: http 401 ERROR_UNAUTHORIZED: Invalid API key", tostring(err))
    end)

    it("reads the 403 of a read-only key", function()
      local body = '{"type":"ERROR_UNAUTHORIZED_ACCESS","message":"This key may not create cases"}'
      local err = http_error(403, body)
      assert.equal("ERROR_UNAUTHORIZED_ACCESS", err.type)
      assert.equal("This key may not create cases", err.message)
      assert.equal("acquire: http 403 ERROR_UNAUTHORIZED_ACCESS: This key may not create cases", tostring(err))
    end)

    it("reads a message without a type (404)", function()
      local body = '{"message":"Contact not found"}'
      local err = http_error(404, body)
      assert.is_nil(err.type)
      assert.equal("Contact not found", err.message)
      assert.equal(body, err.body)
      assert.equal("acquire: http 404: Contact not found", tostring(err))
    end)

    it("reads a type without a message", function()
      local err = http_error(400, '{"type":"ERROR_INVALID_INPUT"}')
      assert.equal("ERROR_INVALID_INPUT", err.type)
      assert.is_nil(err.message)
      assert.equal("acquire: http 400 ERROR_INVALID_INPUT", tostring(err))
    end)

    it("reads the message from a string error", function()
      local err = http_error(400, '{"error":"Invalid input"}')
      assert.is_nil(err.type)
      assert.equal("Invalid input", err.message)
      assert.equal("acquire: http 400: Invalid input", tostring(err))
    end)

    it("reads error.message and error.type", function()
      local err = http_error(400, '{"error":{"type":"ERROR_INVALID_INPUT","message":"agentId must be an integer"}}')
      assert.equal("ERROR_INVALID_INPUT", err.type)
      assert.equal("agentId must be an integer", err.message)
      assert.equal("acquire: http 400 ERROR_INVALID_INPUT: agentId must be an integer", tostring(err))
    end)

    it("reads error.code as the type", function()
      local err = http_error(400, '{"error":{"code":"ERROR_DUPLICATE_RECORD_FOUND","message":"Already exists"}}')
      assert.equal("ERROR_DUPLICATE_RECORD_FOUND", err.type)
      assert.equal("Already exists", err.message)
    end)

    it("reads code as the type", function()
      local err = http_error(500, '{"code":"ERROR_SERVER_ERROR","message":"Internal server error"}')
      assert.equal("ERROR_SERVER_ERROR", err.type)
      assert.equal("Internal server error", err.message)
      assert.equal("acquire: http 500 ERROR_SERVER_ERROR: Internal server error", tostring(err))
    end)

    it("prefers type over code and message over error", function()
      local err = http_error(400, '{"type":"T1","code":"T2","message":"M1","error":"M2"}')
      assert.equal("T1", err.type)
      assert.equal("M1", err.message)
    end)

    it("takes error.message when there is no message, and type over error.type", function()
      local err = http_error(400, '{"type":"T1","error":{"type":"T2","message":"M3"}}')
      assert.equal("T1", err.type)
      assert.equal("M3", err.message)
    end)

    it("takes only strings as type", function()
      local err = http_error(500, '{"code":500,"message":"boom"}')
      assert.is_nil(err.type)
      assert.equal("boom", err.message)
      assert.equal("acquire: http 500: boom", tostring(err))
      err = http_error(500, '{"error":{"code":42,"type":true}}')
      assert.is_nil(err.type)
      assert.is_nil(err.message)
    end)

    it("takes no null nor non-string message", function()
      local err = http_error(400, '{"message":null,"error":true}')
      assert.is_nil(err.message)
      assert.is_nil(err.type)
      assert.equal("acquire: http 400", tostring(err))
    end)

    it("reads a JSON array body as neither type nor message", function()
      local err = http_error(400, '["ERROR_INVALID_INPUT"]')
      assert.is_nil(err.type)
      assert.is_nil(err.message)
      assert.equal('["ERROR_INVALID_INPUT"]', err.body)
    end)

    it("keeps an HTML 502 as it is", function()
      local err = http_error(502, HTML_502, { ["Content-Type"] = "text/html" })
      assert.is_nil(err.type)
      assert.is_nil(err.message)
      assert.equal(HTML_502, err.body)
      assert.equal("acquire: http 502", tostring(err))
    end)

    it("reads a 503 with an empty body", function()
      local err = http_error(503, "", nil)
      assert.is_nil(err.type)
      assert.is_nil(err.message)
      assert.equal("acquire: http 503", tostring(err))
    end)

    it("is an http error for a redirect", function()
      local err = http_error(302, "", { Location = "https://elsewhere.example/" })
      assert.equal("acquire: http 302", tostring(err))
    end)

    it("caps err.body at 4096 bytes", function()
      local html = "<html>" .. string.rep("y", 5994) -- 6000 bytes
      local err = http_error(500, html, { ["Content-Type"] = "text/html" })
      assert.equal(4096, #err.body)
      assert.equal(html:sub(1, 4096), err.body)
    end)

    it("keeps a body of exactly 4096 bytes whole", function()
      local html = string.rep("z", 4096)
      local err = http_error(500, html)
      assert.equal(html, err.body)
    end)

    it("reads the message of a JSON body longer than the cap", function()
      local body = '{"message":"too big","type":"ERROR_INVALID_INPUT","pad":"' .. string.rep("p", 5000) .. '"}'
      local err = http_error(400, body)
      assert.equal("too big", err.message)
      assert.equal("ERROR_INVALID_INPUT", err.type)
      assert.equal(4096, #err.body)
      assert.equal(body:sub(1, 4096), err.body)
    end)

    it("is an error even when the body is the documented success document", function()
      local err = http_error(500, FIXTURE)
      assert.is_nil(err.message)
      assert.equal(FIXTURE:sub(1, 4096), err.body)
    end)
  end)

  describe("the err table", function()
    it("is a plain table whose metatable is named acquire.Error", function()
      local _, err = acquire.decode_response(404, nil, '{"message":"Contact not found"}')
      assert.equal("table", type(err))
      assert.equal("acquire.Error", getmetatable(err).__name)
    end)

    it("shares one metatable across errors", function()
      local _, a = acquire.decode_response(404, nil, "{}")
      local _, b = acquire.decode_response(200, nil, "nope")
      assert.equal(getmetatable(a), getmetatable(b))
    end)

    it("has a one-line tostring", function()
      local _, err = acquire.decode_response(400, nil, '{"message":"line one\\nline two"}')
      assert.is_nil(tostring(err):find("\n", 1, true))
      contains(tostring(err), "acquire: http 400: ")
    end)

    it("redacts the api_key given as 4th argument from type, message and body", function()
      local body = '{"type":"sk-9xyz","message":"bad key sk-9xyz, sk-9xyz!"}'
      local _, err = acquire.decode_response(401, nil, body, "sk-9xyz")
      assert.equal("[REDACTED]", err.type)
      assert.equal("bad key [REDACTED], [REDACTED]!", err.message)
      assert.equal('{"type":"[REDACTED]","message":"bad key [REDACTED], [REDACTED]!"}', err.body)
      local _, bad = acquire.decode_response(200, nil, "sk-9xyz is not JSON", "sk-9xyz")
      helper.not_contains(tostring(bad) .. bad.body, "sk-9xyz")
      local _, plain = acquire.decode_response(401, nil, body)       -- none given: none redacted
      assert.equal("sk-9xyz", plain.type)
      assert.equal("sk-9xyz", (select(2, acquire.decode_response(401, nil, body, ""))).type)
    end)

    it("prints any status a caller put in the table, without overflow", function()
      -- found by make fuzz (UBSan): a status beyond int was converted to int
      local _, err = acquire.decode_response(401, nil, "{}")
      err.status = 2 ^ 31
      assert.equal("acquire: http 2147483648", tostring(err))
      err.status = 0 / 0
      assert.equal("acquire: http", tostring(err))
      err.status, err.kind, err.code = nil, "network", 1e300
      assert.equal("acquire: network (curl 1e+300)", tostring(err))
      assert.is_nil(acquire.retry_after({ kind = "http", status = 2 ^ 63 }, 1))
    end)

    it("has a one-line tostring when the type spans lines too", function()
      -- found by make fuzz: lua-cjson lets raw control characters into strings
      local _, err = acquire.decode_response(401, nil, '{"type": "tex\n", "message": "a\r\tb\127"}')
      assert.equal("acquire: http 401 tex : a  b ", tostring(err))
      assert.equal("tex\n", err.type)  -- the table keeps what the server sent
    end)
  end)
end)

describe("acquire.fields", function()
  local contact

  setup(function()
    contact = cjson.decode(FIXTURE).data.contact
  end)

  it("maps the documented contact's fields by key, leaving out nulls", function()
    assert.same({
      city = "",
      state = "",
      countryId = "517",
      ip = "2402:8100:21f5:3d13:d9da:18ea:aa28:f778",
    }, acquire.fields(contact))
  end)

  it("does the same on a contact from decode_response", function()
    local res = acquire.decode_response(200, nil, FIXTURE)
    local f = acquire.fields(res.data.contact)
    assert.same({
      city = "", state = "", countryId = "517", ip = "2402:8100:21f5:3d13:d9da:18ea:aa28:f778",
    }, f)
    assert.is_nil(f.name)
    assert.is_nil(f.email)
  end)

  it("returns a new table every time", function()
    local a, b = acquire.fields(contact), acquire.fields(contact)
    assert.are_not.equal(a, b)
    a.city = "changed"
    assert.equal("", b.city)
  end)

  it("keeps false, numbers and strings as they are", function()
    local c = {
      fields = {
        { value = false, field = { key = "vip" } },
        { value = 42, field = { key = "score" } },
        { value = "x", field = { key = "s" } },
        { value = acquire.null, field = { key = "gone" } },
      },
    }
    assert.same({ vip = false, score = 42, s = "x" }, acquire.fields(c))
  end)

  it("gives {} for a contact without fields", function()
    assert.same({}, acquire.fields({ id = 1 }))
    assert.same({}, acquire.fields({}))
  end)

  it("gives {} for a contact with no field entries", function()
    assert.same({}, acquire.fields({ fields = {} }))
  end)

  it("raises when contact is not a table", function()
    assert.is_false((pcall(acquire.fields)))
    assert.is_false((pcall(acquire.fields, nil)))
    assert.is_false((pcall(acquire.fields, "contact")))
    assert.is_false((pcall(acquire.fields, 597752)))
    assert.is_false((pcall(acquire.fields, acquire.null)))
  end)
end)
