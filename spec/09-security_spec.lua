-- Hostile input raises and sends nothing; the key stays out of every output,
-- the debug log included.
local acquire = require "acquire"
local helper = require "spec.helper"

local CONTACT = 597752

describe("hostile input", function()
  local srv = helper.server()
  local c
  setup(function() c = acquire.new{ base_url = srv.base_url, api_key = srv.key, max_retries = 0 } end)
  teardown(function() c:close() end)

  local function rejected(contact, opts, needle)
    local ok, err = pcall(c.create_case, c, contact, opts)
    assert.is_false(ok)
    if needle then helper.contains(err, needle) end
    assert.equal(0, srv:stats().requests, "nothing may be sent")
  end

  it("a contactId that could inject into the query raises", function()
    for _, id in ipairs{ "1&x=2", "1 ", " 1", "1\n", "1#", "1/../x", "0x10", "1e3", "+1" } do
      rejected(id, nil, "contactId")
    end
  end)

  it("configuration that could redirect the host, add a path or a query raises", function()
    for _, cfg in ipairs{
      { account_id = "evil.com/x?", api_key = "k" },
      { account_id = "a.b", api_key = "k" },
      { account_id = "a@b", api_key = "k" },
      { account_id = "a#", api_key = "k" },
      { base_url = "http://127.0.0.1@evil.com", api_key = "k" },
      { base_url = "http://evil.com#@127.0.0.1", api_key = "k" },
      { base_url = "http://h/api?x=", api_key = "k" },
      { base_url = "http://h:80\r\nX: y", api_key = "k" },
      { base_url = "file:///etc/passwd", api_key = "k" },
      { account_id = "x", api_key = "k\r\nX-Injected: 1" },
      { account_id = "x", api_key = "k\0" },
      { account_id = "x", api_key = "k", user_agent = "ua\nX: 1" },
    } do
      assert.is_false(pcall(acquire.new, cfg))
    end
  end)

  it("cyclic tables raise (strict = false), as do NaN and infinities", function()
    local loose = acquire.new{ base_url = srv.base_url, api_key = srv.key, strict = false }
    local cyc = {}
    cyc.self = cyc
    local ok, err = pcall(loose.create_case, loose, CONTACT, { extra = cyc })
    assert.is_false(ok)
    helper.contains(err, "nested deeper than 32")
    assert.is_false(pcall(loose.create_case, loose, CONTACT, { fields = { x = 0 / 0 } }))
    assert.is_false(pcall(loose.create_case, loose, CONTACT, { fields = { x = math.huge } }))
    assert.is_false(pcall(loose.create_case, loose, CONTACT, { fields = { x = -math.huge } }))
    loose:close()
    assert.equal(0, srv:stats().requests)
  end)

  it("invalid UTF-8 anywhere in opts raises", function()
    rejected(CONTACT, { title = "a\192\128" }, "UTF-8")
    rejected(CONTACT, { message = "\237\160\128" }, "UTF-8")          -- a surrogate
    rejected(CONTACT, { mentionUsers = { "\255" } }, "UTF-8")
    rejected(CONTACT, { fields = { ["k\254"] = "v" } }, "UTF-8")
    rejected(CONTACT, { fields = { k = "\244\144\128\128" } }, "UTF-8") -- above U+10FFFF
  end)

  it("fields holding tables, sparse or mixed mentionUsers raise", function()
    rejected(CONTACT, { fields = { k = { 1 } } }, "fields.k")
    rejected(CONTACT, { mentionUsers = { "a", nil, "c" } }, "mentionUsers")
    rejected(CONTACT, { mentionUsers = { "a", x = "b" } }, "mentionUsers")
    rejected(CONTACT, { mentionUsers = { [2] = "b" } }, "mentionUsers")
  end)

  it("strings with NUL bytes are legal JSON: sent escaped, received intact", function()
    local res = c:create_case(CONTACT, { title = "a\0b", fields = { note = "x\0\1\31y" } })
    assert.is_table(res)
    local body = srv:last_request().body
    assert.equal('{"title":"a\\u0000b","fields":{"note":"x\\u0000\\u0001\\u001fy"}}', body)
    assert.equal("a\0b", res.data.title)                 -- the server echoed it back
  end)
end)

describe("the key", function()
  local KEY = "sk-live-7f3a9c1e"

  it("never shows in the debug log, bodies included (debug = \"body\")", function()
    local srv = helper.start_server()
    local _, out, log = helper.run_lua(([[
local acquire = require "acquire"
local c = acquire.new{ base_url = %q, api_key = %q, debug = "body", max_retries = 0 }
local res, err = c:create_case(597752, { title = %q })
print(res and "created" or tostring(err))
]]):format(srv.base_url, KEY, KEY))
    srv:stop()
    -- the server answers 401 for this key and echoes the title back
    helper.contains(out, "acquire: http 401")
    helper.contains(log, "acquire: debug: attempt 1: POST " .. srv.base_url
      .. helper.API_PATH .. "?contactId=597752\n")
    helper.contains(log, "acquire: debug: attempt 1: > {\"title\":\"[REDACTED]\"}\n")
    helper.contains(log, "acquire: debug: attempt 1: 401 in ")
    helper.contains(log, "acquire: debug: attempt 1: < {")
    helper.contains(log, "acquire: error: attempt 1 failed: acquire: http 401")
    helper.not_contains(log, KEY)
    helper.not_contains(out, KEY)
  end)

  it("too short to be told from text, it is redacted where it stands; the rest stays readable", function()
    local srv = helper.start_server()
    srv:fault{ action = "status", status = 401, content_type = "text/plain",
               body = "rejected: Authorization: Bearer k\r\nkeep kind words; via http://kk:k@h/k" }
    local c = acquire.new{ base_url = srv.base_url, api_key = "k", max_retries = 0 }
    local _, err = c:create_case(597752)
    c:close()
    srv:stop()
    assert.equal(401, err.status)
    assert.equal("rejected: Authorization: Bearer [REDACTED]\r\nkeep kind words; via http://[REDACTED]@h/k", err.body)
  end)

  it("never shows in tostring(client), nor in a closed one", function()
    local c = acquire.new{ account_id = "x", api_key = KEY }
    helper.not_contains(tostring(c), KEY)
    c:close()
    helper.not_contains(tostring(c), KEY)
  end)
end)
