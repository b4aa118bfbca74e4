-- acquire.build_request: the URL, the headers and the exact bytes of the body
-- for every opts shape the API documents (spec/fixtures/api/), and every way
-- contactId or opts can be wrong.
local acquire = require "acquire"
local helper = require "spec.helper"
local raises, contains, not_contains, read_file = helper.raises, helper.contains, helper.not_contains, helper.read_file
local cjson = require "cjson"

local CFG = { account_id = "mycompany", api_key = "k" }
local PATH = helper.API_PATH .. "?contactId="
local URL = "https://mycompany.acquire.io" .. PATH .. "597752"

local KNOWN_KEYS = {
  "title", "source", "mentionUsers", "message", "channel", "routeAgentId",
  "agentId", "isFromCobrowse", "fields", "threadId", "sessionId",
}

-- The body build_request writes for opts (contact 597752, default config).
local function body(opts, cfg)
  local req = acquire.build_request(597752, opts, cfg or CFG)
  return req.body
end

-- Calls fn(...), which must raise; returns the message.

-- build_request with opts, which must raise: returns the message.
local function bad_opts(opts, cfg)
  return raises(acquire.build_request, 597752, opts, cfg or CFG)
end

local DOCUMENTED_OPTS = helper.documented_opts()
local DOCUMENTED_BODY = helper.DOCUMENTED_BODY

describe("acquire.build_request", function()

  describe("request line and headers", function()
    it("is a POST to the create endpoint with contactId in the query", function()
      local req = acquire.build_request(597752, nil, CFG)
      assert.equal("POST", req.method)
      assert.equal(URL, req.url)
    end)

    it("returns exactly the four fields method, url, headers, body", function()
      local req = acquire.build_request(597752, nil, CFG)
      local keys = {}
      for k in pairs(req) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "body", "headers", "method", "url" }, keys)
    end)

    it("sends exactly Content-Type, Accept and Authorization; the default User-Agent is the transport's", function()
      local req = acquire.build_request(597752, nil, CFG)
      local n = 0
      for _ in pairs(req.headers) do n = n + 1 end
      assert.equal(3, n)
      assert.equal("application/json", req.headers["Content-Type"])
      assert.equal("application/json", req.headers["Accept"])
      assert.equal("Bearer k", req.headers["Authorization"])
      assert.is_nil(req.headers["User-Agent"])
    end)

    it("puts the configured key after 'Bearer '", function()
      local req = acquire.build_request(1, nil, { account_id = "a", api_key = "s3cr3t-KEY_value.xyz" })
      assert.equal("Bearer s3cr3t-KEY_value.xyz", req.headers.Authorization)
    end)

    it("uses a configured user_agent as is", function()
      local cfg = { account_id = "mycompany", api_key = "k", user_agent = "my-app/2.3 (ops@example.com)" }
      local req = acquire.build_request(597752, nil, cfg)
      assert.equal("my-app/2.3 (ops@example.com)", req.headers["User-Agent"])
    end)

    it("uses base_url instead of the account's host", function()
      local req = acquire.build_request(597752, nil, { base_url = "http://127.0.0.1:8080", api_key = "k" })
      assert.equal("http://127.0.0.1:8080" .. PATH .. "597752", req.url)
    end)

    it("drops a single trailing slash of base_url", function()
      local req = acquire.build_request(597752, nil, { base_url = "https://example.com/", api_key = "k" })
      assert.equal("https://example.com" .. PATH .. "597752", req.url)
    end)
  end)

  describe("contactId", function()
    it("accepts an integer", function()
      assert.equal(URL, acquire.build_request(597752, nil, CFG).url)
    end)

    it("accepts an integer-valued float and writes it as an integer", function()
      assert.equal(URL, acquire.build_request(597752.0, nil, CFG).url)
    end)

    it("accepts a string of digits", function()
      assert.equal(URL, acquire.build_request("597752", nil, CFG).url)
    end)

    it("writes ids above 2^31 exactly", function()
      assert.equal("https://mycompany.acquire.io" .. PATH .. "3711819272",
        acquire.build_request(3711819272, nil, CFG).url)
      assert.equal("https://mycompany.acquire.io" .. PATH .. "3711819272",
        acquire.build_request("3711819272", nil, CFG).url)
      assert.equal("https://mycompany.acquire.io" .. PATH .. "1234567890123456",
        acquire.build_request(1234567890123456, nil, CFG).url)
    end)

    it("accepts 1", function()
      assert.equal("https://mycompany.acquire.io" .. PATH .. "1", acquire.build_request(1, nil, CFG).url)
    end)

    local bad = {
      { "the string '12a'", "12a" },
      { "-1", -1 },
      { "0", 0 },
      { "1.5", 1.5 },
      { "a table", {} },
      { "nil", nil },
      { "the empty string", "" },
      { "the string '0'", "0" },
      { "the string '-5'", "-5" },
      { "the string ' 5'", " 5" },
      { "the string '5 '", "5 " },
      { "the string '5.0'", "5.0" },
      { "the string '0x10'", "0x10" },
      { "true", true },
      { "NaN", 0 / 0 },
      { "inf", math.huge },
    }
    for _, case in ipairs(bad) do
      it("raises for " .. case[1] .. ", naming contactId", function()
        local msg = raises(acquire.build_request, case[2], nil, CFG)
        contains(msg, "contactId")
      end)
    end
  end)

  describe("body", function()
    it("is {} without opts", function()
      assert.equal("{}", body(nil))
    end)

    it("is {} for empty opts", function()
      assert.equal("{}", body({}))
    end)

    it("is exactly the documented request for the documented opts", function()
      assert.equal(DOCUMENTED_BODY, body(DOCUMENTED_OPTS))
    end)

    it("decodes to the documented request (create-case-request.json)", function()
      local expected = cjson.decode(read_file("spec/fixtures/api/create-case-request.json"))
      local got = cjson.decode(body(DOCUMENTED_OPTS))
      assert.same(expected, got)
      -- cjson decodes [] and {} to the same empty table: check the bytes too
      contains(body(DOCUMENTED_OPTS), '"fields":{}')
    end)

    it("is the same bytes every time for the same opts", function()
      local a = body(DOCUMENTED_OPTS)
      for _ = 1, 5 do assert.equal(a, body(DOCUMENTED_OPTS)) end
      -- a table built in another order gives the same bytes
      local other = {}
      for i = #KNOWN_KEYS, 1, -1 do
        local k = KNOWN_KEYS[i]
        other[k] = DOCUMENTED_OPTS[k]
      end
      assert.equal(a, body(other))
    end)

    it("does not modify opts", function()
      local opts = { title = "t", mentionUsers = { 1, "2" }, message = "m", fields = { a = 1 } }
      body(opts)
      assert.same({ title = "t", mentionUsers = { 1, "2" }, message = "m", fields = { a = 1 } }, opts)
    end)

    describe("each key alone", function()
      local cases = {
        { { title = "Refund" }, '{"title":"Refund"}' },
        { { title = "" }, '{"title":""}' },
        { { source = "firstMessage" }, '{"source":"firstMessage"}' },
        { { channel = "chat" }, '{"channel":"chat"}' },
        { { mentionUsers = { "00" } }, '{"mentionUsers":["00"]}' },
        { { mentionUsers = {} }, '{"mentionUsers":[]}' },
        { { mentionUsers = { 25, "26", 0 } }, '{"mentionUsers":["25","26","0"]}' },
        { { mentionUsers = { 1234567890123456 } }, '{"mentionUsers":["1234567890123456"]}' },
        { { message = "hi" }, '{"message":{"type":"message","message":"hi","translateLangKey":""}}' },
        { { message = "" }, '{"message":{"type":"message","message":"","translateLangKey":""}}' },
        { { message = { message = "hi" } }, '{"message":{"type":"message","message":"hi","translateLangKey":""}}' },
        { { message = { type = "message", message = "hi" } },
          '{"message":{"type":"message","message":"hi","translateLangKey":""}}' },
        { { message = { type = "message", message = "hola", translateLangKey = "es" } },
          '{"message":{"type":"message","message":"hola","translateLangKey":"es"}}' },
        { { message = { translateLangKey = "", message = "x" } },
          '{"message":{"type":"message","message":"x","translateLangKey":""}}' },
        { { routeAgentId = 0 }, '{"routeAgentId":0}' },
        { { routeAgentId = 12 }, '{"routeAgentId":12}' },
        { { agentId = 0 }, '{"agentId":0}' },
        { { agentId = 25 }, '{"agentId":25}' },
        { { agentId = 25.0 }, '{"agentId":25}' },
        { { isFromCobrowse = true }, '{"isFromCobrowse":true}' },
        { { isFromCobrowse = false }, '{"isFromCobrowse":false}' },
        { { fields = {} }, '{"fields":{}}' },
        { { fields = { plan = "pro" } }, '{"fields":{"plan":"pro"}}' },
        { { threadId = 1683 }, '{"threadId":1683}' },
        { { threadId = 0 }, '{"threadId":0}' },
        { { sessionId = 3711819272 }, '{"sessionId":3711819272}' },
        { { sessionId = 3711819272.0 }, '{"sessionId":3711819272}' },
        { { sessionId = 1234567890123456 }, '{"sessionId":1234567890123456}' },
      }
      for _, case in ipairs(cases) do
        it("writes " .. case[2], function()
          assert.equal(case[2], body(case[1]))
        end)
      end
    end)

    it("writes every known key in the documented order whatever the table order", function()
      local opts = {
        sessionId = 3711819272, threadId = 1683, fields = { plan = "pro" },
        isFromCobrowse = false, agentId = 25, routeAgentId = 7, channel = "chat",
        message = { message = "m", translateLangKey = "en" }, mentionUsers = { 25, "26" },
        source = "api", title = "T",
      }
      assert.equal('{"title":"T","source":"api","mentionUsers":["25","26"],'
        .. '"message":{"type":"message","message":"m","translateLangKey":"en"},"channel":"chat",'
        .. '"routeAgentId":7,"agentId":25,"isFromCobrowse":false,"fields":{"plan":"pro"},'
        .. '"threadId":1683,"sessionId":3711819272}', body(opts))
    end)

    it("writes the documented reopen (threadId 1683, sessionId 3711819272) after the create body", function()
      local opts = {}
      for k, v in pairs(DOCUMENTED_OPTS) do opts[k] = v end
      opts.threadId = 1683
      opts.sessionId = 3711819272
      local expected = DOCUMENTED_BODY:sub(1, -2) .. ',"threadId":1683,"sessionId":3711819272}'
      assert.equal(expected, body(opts))
    end)

    it("writes a 16-digit id exactly", function()
      assert.equal('{"agentId":1234567890123456,"threadId":1234567890123456}',
        body({ agentId = 1234567890123456, threadId = 1234567890123456 }))
    end)

    if math.type and math.maxinteger then
      it("writes math.maxinteger exactly (64-bit integers, Lua 5.3+)", function()
        assert.equal('{"sessionId":9223372036854775807}', body({ sessionId = math.maxinteger }))
      end)
    end

    describe("fields", function()
      it("writes string, number, boolean and null values, keys sorted bytewise", function()
        local f = {
          b = "x", a = 1, c = true, d = acquire.null, e = 1.5, A = "up", _ = false,
          ["\195\169"] = "u", ab = -7, aa = 0,
        }
        assert.equal('{"fields":{"A":"up","_":false,"a":1,"aa":0,"ab":-7,"b":"x","c":true,"d":null,"e":1.5,'
          .. '"\195\169":"u"}}', body({ fields = f }))
      end)

      it("writes integers exactly and non-integral floats in their shortest round-trip form", function()
        assert.equal('{"fields":{"a":1.5,"b":0.1,"c":-2.25,"d":1234567890123456,"e":3711819272}}',
          body({ fields = { a = 1.5, b = 0.1, c = -2.25, d = 1234567890123456, e = 3711819272 } }))
      end)

      it("writes 1/3 so that it reads back as the same double", function()
        local s = body({ fields = { x = 1 / 3 } })
        local num = s:match('^{"fields":{"x":([^}]+)}}$')
        assert.is_string(num)
        assert.equal(1 / 3, tonumber(num))
        assert.is_nil(num:find("%s"))
      end)

      it("escapes the keys", function()
        assert.equal('{"fields":{"k\\"ey":"v"}}', body({ fields = { ['k"ey'] = "v" } }))
      end)
    end)

    describe("strings", function()
      it("escapes quote, backslash and control characters and leaves / alone", function()
        local s = 'q"b\\s/\b\f\n\r\t\0\1\27\31\127'
        assert.equal([[{"title":"q\"b\\s/\b\f\n\r\t\u0000\u0001\u001b\u001f]] .. "\127" .. [["}]],
          body({ title = s }))
      end)

      it("writes NUL as \\u0000 in every string position", function()
        assert.equal([[{"title":"a\u0000b"}]], body({ title = "a\0b" }))
        assert.equal([[{"message":{"type":"message","message":"\u0000","translateLangKey":""}}]],
          body({ message = "\0" }))
        assert.equal([[{"mentionUsers":["\u0000"]}]], body({ mentionUsers = { "\0" } }))
        assert.equal([[{"fields":{"\u0000k":"\u0000v"}}]], body({ fields = { ["\0k"] = "\0v" } }))
      end)

      it("passes valid UTF-8 through raw", function()
        -- é (2 bytes), € (3 bytes), U+1F600 (4 bytes), U+10FFFF
        local s = "\195\169\226\130\172\240\159\152\128\244\143\191\191"
        assert.equal('{"title":"' .. s .. '"}', body({ title = s }))
        assert.equal('{"message":{"type":"message","message":"' .. s .. '","translateLangKey":""}}',
          body({ message = s }))
      end)

      local invalid = {
        { "a lone 0xFF byte", "a\255b" },
        { "a truncated 2-byte sequence", "a\195" },
        { "a lone continuation byte", "\128" },
        { "an overlong encoding of '/'", "\192\175" },
        { "an overlong 3-byte encoding", "\224\128\175" },
        { "a UTF-16 surrogate (U+D800)", "\237\160\128" },
        { "a code point above U+10FFFF", "\244\144\128\128" },
        { "a truncated 4-byte sequence", "\240\159\152" },
      }
      for _, case in ipairs(invalid) do
        it("raises on " .. case[1] .. " (message mentions UTF-8)", function()
          contains(bad_opts({ title = case[2] }), "UTF-8")
        end)
      end

      it("raises on invalid UTF-8 in every string position", function()
        local x = "\255"
        contains(bad_opts({ source = x }), "UTF-8")
        contains(bad_opts({ channel = x }), "UTF-8")
        contains(bad_opts({ message = x }), "UTF-8")
        contains(bad_opts({ message = { message = x } }), "UTF-8")
        contains(bad_opts({ message = { message = "m", translateLangKey = x } }), "UTF-8")
        contains(bad_opts({ mentionUsers = { "ok", x } }), "UTF-8")
        contains(bad_opts({ fields = { k = x } }), "UTF-8")
        contains(bad_opts({ fields = { [x] = "v" } }), "UTF-8")
      end)
    end)

    describe("numbers", function()
      it("raises on NaN and infinities", function()
        bad_opts({ fields = { x = 0 / 0 } })
        bad_opts({ fields = { x = math.huge } })
        bad_opts({ fields = { x = -math.huge } })
        contains(bad_opts({ agentId = 0 / 0 }), "agentId")
        contains(bad_opts({ sessionId = math.huge }), "sessionId")
      end)

      it("names a NaN nan and an infinity inf, whatever the sign bit and the Lua", function()
        for _, nan in ipairs({ 0 / 0, -(0 / 0) }) do
          contains(bad_opts({ agentId = nan }), "bad field 'agentId' (integer expected, got nan)")
          contains(bad_opts({ mentionUsers = { nan } }),
            "bad field 'mentionUsers[1]' (string or integer expected, got nan)")
          contains(bad_opts({ fields = { x = nan } }), "bad field 'fields.x' (finite number expected, got nan)")
          contains(raises(acquire.build_request, nan, nil, CFG), "contactId must be a positive integer, got nan)")
        end
        contains(bad_opts({ threadId = -math.huge }), "bad field 'threadId' (integer expected, got -inf)")
        contains(raises(acquire.build_request, math.huge, nil, CFG), "contactId must be a positive integer, got inf)")
        local c = acquire.new(CFG)                   -- create_cases checks every item before sending
        contains(raises(c.create_cases, c, { { 0 / 0 } }), "bad item #1: contactId must be a positive integer, got nan")
        c:close()
      end)
    end)
  end)

  describe("type errors", function()
    local function bad_field(opts, prefix)
      contains(bad_opts(opts), prefix)
    end

    for _, k in ipairs({ "title", "source", "channel" }) do
      it("raises for a non-string " .. k, function()
        bad_field({ [k] = 5 }, "bad field '" .. k .. "' (string expected, got number)")
        bad_field({ [k] = true }, "bad field '" .. k .. "' (string expected, got boolean)")
        bad_field({ [k] = {} }, "bad field '" .. k .. "' (string expected, got table)")
      end)
    end

    for _, k in ipairs({ "routeAgentId", "agentId", "threadId", "sessionId" }) do
      it("raises for a " .. k .. " that is not a non-negative integer", function()
        bad_field({ [k] = "5" }, "bad field '" .. k .. "' (integer expected, got string)")
        bad_field({ [k] = true }, "bad field '" .. k .. "' (integer expected, got boolean)")
        bad_field({ [k] = {} }, "bad field '" .. k .. "' (integer expected, got table)")
        bad_field({ [k] = 1.5 }, "bad field '" .. k .. "'")
        bad_field({ [k] = -1 }, "bad field '" .. k .. "'")
      end)
    end

    it("raises the documented message for agentId = '1'", function()
      local msg = bad_opts({ agentId = "1" })
      contains(msg, "bad field 'agentId' (integer expected, got string)")
    end)

    it("raises for a non-boolean isFromCobrowse", function()
      bad_field({ isFromCobrowse = "yes" }, "bad field 'isFromCobrowse' (boolean expected, got string)")
      bad_field({ isFromCobrowse = 1 }, "bad field 'isFromCobrowse' (boolean expected, got number)")
    end)

    it("raises for mentionUsers that is not a table", function()
      bad_field({ mentionUsers = "00" }, "bad field 'mentionUsers'")
      bad_field({ mentionUsers = 5 }, "bad field 'mentionUsers'")
    end)

    it("raises for a bad mentionUsers element, naming its index", function()
      local msg = bad_opts({ mentionUsers = { "a", true } })
      contains(msg, "bad field 'mentionUsers[2]'")
      contains(msg, "got boolean")
      bad_field({ mentionUsers = { {} } }, "bad field 'mentionUsers[1]'")
      bad_field({ mentionUsers = { "a", "b", 1.5 } }, "bad field 'mentionUsers[3]'")
    end)

    it("raises for mentionUsers with non-sequence keys", function()
      bad_field({ mentionUsers = { a = "1" } }, "mentionUsers")
    end)

    it("raises for a message that is neither a string nor a table", function()
      bad_field({ message = 5 }, "bad field 'message'")
      bad_field({ message = true }, "bad field 'message'")
    end)

    it("raises for a message table without a string message", function()
      bad_field({ message = {} }, "bad field 'message.message'")
      bad_field({ message = { type = "message" } }, "bad field 'message.message'")
      bad_field({ message = { message = 5 } }, "bad field 'message.message' (string expected, got number)")
    end)

    it("raises for a bad message.type or message.translateLangKey", function()
      bad_field({ message = { message = "m", type = 5 } }, "bad field 'message.type'")
      bad_field({ message = { message = "m", translateLangKey = false } }, "bad field 'message.translateLangKey'")
    end)

    it("raises for fields that is not a table", function()
      bad_field({ fields = "x" }, "bad field 'fields'")
      bad_field({ fields = 1 }, "bad field 'fields'")
    end)

    it("raises for a fields value that is not string, number, boolean or null, naming the key", function()
      local msg = bad_opts({ fields = { ok = "v", plan = {} } })
      contains(msg, "bad field 'fields.plan'")
      contains(msg, "got table")
      bad_field({ fields = { cb = print } }, "bad field 'fields.cb'")
    end)

    it("raises for a fields key that is not a string", function()
      bad_field({ fields = { "positional" } }, "fields")
      bad_field({ fields = { [true] = "x" } }, "fields")
    end)
  end)

  describe("unknown keys", function()
    it("raise naming the key and listing the allowed ones", function()
      local msg = bad_opts({ title = "t", foo = 1 })
      contains(msg, "unknown field 'foo'")
      for _, k in ipairs(KNOWN_KEYS) do contains(msg, k) end
    end)

    it("raise for a misspelled known key", function()
      contains(bad_opts({ agentID = 1 }), "unknown field 'agentID'")
    end)

    it("raise for a non-string key", function()
      bad_opts({ "positional" })
    end)

    it("are compared byte for byte: a NUL inside makes another key", function()
      contains(bad_opts({ ["title\0x"] = "t" }), "unknown field 'title\\0x'")
      contains(bad_opts({ message = { ["type\0"] = "x" } }), "unknown field 'message.type\\0'")
    end)

    it("raise with strict = true given explicitly", function()
      contains(bad_opts({ foo = 1 }, { account_id = "mycompany", api_key = "k", strict = true }),
        "unknown field 'foo'")
    end)

    describe("with strict = false", function()
      local LAX = { account_id = "mycompany", api_key = "k", strict = false }

      it("are sent after the known keys in bytewise-sorted order", function()
        local opts = {
          zeta = 1, title = "t", alpha = { x = acquire.null, arr = { 1, "a", true, false } },
          Beta = "b", agentId = 3, _u = acquire.null,
        }
        assert.equal('{"title":"t","agentId":3,"Beta":"b","_u":null,'
          .. '"alpha":{"arr":[1,"a",true,false],"x":null},"zeta":1}', body(opts, LAX))
      end)

      it("encode nested sequences and string-keyed tables", function()
        local opts = { list = { { b = 2, a = 1 }, { acquire.null }, "s" }, f = 1.5 }
        assert.equal('{"f":1.5,"list":[{"a":1,"b":2},[null],"s"]}', body(opts, LAX))
      end)

      it("send a key with a NUL inside as its own key, beside the known one", function()
        assert.equal('{"title":"b","title\\u0000x":"a"}', body({ ["title\0x"] = "a", title = "b" }, LAX))
      end)

      it("write unknown strings with the same escapes", function()
        assert.equal([[{"note":"a\"\n\u0000/"}]], body({ note = 'a"\n\0/' }, LAX))
      end)

      it("still check the known keys", function()
        contains(bad_opts({ agentId = "x", foo = 1 }, LAX),
          "bad field 'agentId' (integer expected, got string)")
      end)

      it("still raise on values that have no JSON form", function()
        bad_opts({ cb = print }, LAX)
        bad_opts({ n = 0 / 0 }, LAX)
        bad_opts({ s = "\255" }, LAX)
      end)

      it("leave the known-key bytes unchanged", function()
        assert.equal(DOCUMENTED_BODY, body(DOCUMENTED_OPTS, LAX))
      end)
    end)
  end)

  describe("config", function()
    it("raises exactly as acquire.new does", function()
      contains(raises(acquire.build_request, 597752, nil, { account_id = "mycompany" }), "api_key")
      contains(raises(acquire.build_request, 597752, nil, { account_id = "evil.com/x?", api_key = "k" }),
        "account_id")
      contains(raises(acquire.build_request, 597752, nil, { base_url = "http://h/x", api_key = "k" }),
        "base_url")
      contains(raises(acquire.build_request, 597752, nil, { account_id = "a", api_key = "k", foo = 1 }),
        "bad option 'foo'")
    end)

    it("gives the same opts errors as client:create_case, word for word", function()
      -- nothing listens on port 9; a raising call never connects anyway
      local cfg = { base_url = "http://127.0.0.1:9", api_key = "k", max_retries = 0 }
      local c = acquire.new(cfg)
      local bad = {
        { agentId = "1" }, { foo = 1 }, { title = "\255" }, { mentionUsers = { "a", true } },
        { fields = { plan = {} } }, { message = { type = "message" } }, { isFromCobrowse = "yes" },
        { sessionId = -1 }, { fields = { x = 0 / 0 } },
      }
      for _, opts in ipairs(bad) do
        local ok1, e1 = pcall(acquire.build_request, 597752, opts, cfg)
        local ok2, e2 = pcall(c.create_case, c, 597752, opts)
        assert.is_false(ok1)
        assert.is_false(ok2)
        assert.equal(e1, e2)
      end
      c:close()
    end)

    it("never puts the key in an error message", function()
      local key = "sekrit-key-123"
      local cfg = { account_id = "mycompany", api_key = key }
      not_contains(raises(acquire.build_request, "12a", nil, cfg), key)
      not_contains(raises(acquire.build_request, 1, { foo = 1 }, cfg), key)
      not_contains(raises(acquire.build_request, 1, { title = "\255" }, cfg), key)
    end)
  end)
end)
