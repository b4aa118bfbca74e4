-- Configuration: acquire.new, acquire.configure and the keys they take.
-- Every rule: what raises (naming the option) and what is accepted.
-- The URL a configuration gives is read through acquire.build_request,
-- which takes the same keys as acquire.new.
local acquire = require "acquire"
local cjson = require "cjson"
local helper = require "spec.helper"
local raises, contains = helper.raises, helper.contains

local PATH = helper.API_PATH .. "?contactId=597752"

-- A copy of base with the pairs of over set.
local function with(base, over)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(over or {}) do t[k] = v end
  return t
end

local GOOD = { account_id = "mycompany", api_key = "k" }

-- acquire.new(cfg) must raise naming `option`; build_request and configure too.
local function rejects(cfg, option)
  contains(raises(acquire.new, cfg), option)
  contains(raises(acquire.build_request, 597752, nil, cfg), option)
  contains(raises(acquire.configure, cfg), option)
end

local function url_of(cfg)
  return acquire.build_request(597752, nil, cfg).url
end

local function accepts(cfg)
  local c = acquire.new(cfg)
  assert.is_not_nil(c)
  c:close()
  return url_of(cfg)
end

describe("acquire module", function()
  it("has _VERSION 0.1.0", function()
    assert.equal("0.1.0", acquire._VERSION)
  end)

  it("has null, the same lightuserdata as cjson.null", function()
    assert.equal("userdata", type(acquire.null))
    assert.equal(cjson.null, acquire.null)
    assert.is_true(rawequal(cjson.null, acquire.null))
  end)

  it("has the documented functions", function()
    for _, name in ipairs({ "new", "configure", "create_case", "fields", "build_request", "decode_response" }) do
      assert.equal("function", type(acquire[name]), name)
    end
  end)

  it("returns the same module table from a second require", function()
    assert.equal(acquire, require "acquire")
  end)
end)

describe("acquire.new", function()
  it("returns a client with create_case and close", function()
    local c = acquire.new(GOOD)
    assert.equal("function", type(c.create_case))
    assert.equal("function", type(c.close))
    c:close()
  end)

  it("accepts every documented option at once", function()
    local c = acquire.new{
      account_id = "mycompany", api_key = "k", base_url = nil, timeout = 30, connect_timeout = 10,
      max_retries = 2, user_agent = "ua/1", ca_file = nil, insecure = false, strict = true,
    }
    c:close()
    c = acquire.new{
      base_url = "https://example.com", api_key = "k", timeout = 0.5, connect_timeout = 0.25,
      max_retries = 0, user_agent = "ua/1", ca_file = "/etc/ssl/certs/ca-certificates.crt",
      insecure = true, strict = false,
    }
    c:close()
  end)

  it("raises without a table", function()
    raises(acquire.new)
    raises(acquire.new, "mycompany")
  end)

  it("raises on an unknown option, naming it", function()
    contains(raises(acquire.new, with(GOOD, { foo = 1 })), "bad option 'foo'")
    contains(raises(acquire.build_request, 597752, nil, with(GOOD, { foo = 1 })), "bad option 'foo'")
    contains(raises(acquire.configure, with(GOOD, { foo = 1 })), "bad option 'foo'")
    contains(raises(acquire.new, with(GOOD, { apiKey = "k" })), "bad option 'apiKey'")
  end)

  it("compares option names byte for byte: a NUL inside is another name", function()
    -- found by make fuzz: "timeout\0" was read as timeout
    contains(raises(acquire.new, with(GOOD, { ["timeout\0\n"] = 1 })), "bad option 'timeout\\0\\10'")
  end)

  describe("api_key", function()
    it("is required", function()
      rejects({ account_id = "mycompany" }, "api_key")
    end)

    it("must not be empty", function()
      rejects(with(GOOD, { api_key = "" }), "api_key")
    end)

    it("must be a string", function()
      rejects(with(GOOD, { api_key = {} }), "api_key")
      rejects(with(GOOD, { api_key = true }), "api_key")
    end)

    for _, case in ipairs({ { "CR", "a\rb" }, { "LF", "a\nb" }, { "NUL", "a\0b" }, { "CRLF", "k\r\nX-Evil: 1" } }) do
      it("must not contain " .. case[1], function()
        rejects(with(GOOD, { api_key = case[2] }), "api_key")
      end)
    end

    it("does not appear in the error message", function()
      local msg = raises(acquire.new, with(GOOD, { api_key = "secret\nvalue" }))
      assert.is_nil(msg:find("secret", 1, true))
    end)
  end)

  describe("user_agent", function()
    for _, case in ipairs({ { "CR", "ua\r" }, { "LF", "ua\nX: y" }, { "NUL", "u\0a" } }) do
      it("must not contain " .. case[1], function()
        rejects(with(GOOD, { user_agent = case[2] }), "user_agent")
      end)
    end

    it("replaces the default", function()
      local req = acquire.build_request(597752, nil, with(GOOD, { user_agent = "x/1" }))
      assert.equal("x/1", req.headers["User-Agent"])
    end)
  end)

  describe("account_id", function()
    it("gives https://{account_id}.acquire.io", function()
      assert.equal("https://mycompany.acquire.io" .. PATH, accepts(GOOD))
    end)

    local good = {
      "a", "0", "abc123", "my-company", "a-b-c", "a1-2b", "MyCompany",
      "a" .. string.rep("b", 61) .. "c", -- 63 characters
    }
    for _, id in ipairs(good) do
      it("accepts " .. string.format("%q", id), function()
        local url = accepts({ account_id = id, api_key = "k" })
        assert.equal(("https://" .. id .. ".acquire.io" .. PATH):lower(), url:lower())
      end)
    end

    local bad = {
      "evil.com/x?", "a b", "", "-x", "x-", "a.b", "a_b", "a/b", "a?b", "a#b", "a@b", "a:1",
      "\195\169t\195\169", "a\0b", "a\nb",
      string.rep("a", 64),
    }
    for _, id in ipairs(bad) do
      it("rejects " .. string.format("%q", id), function()
        rejects({ account_id = id, api_key = "k" }, "account_id")
      end)
    end

    it("rejects a non-string", function()
      rejects({ account_id = {}, api_key = "k" }, "account_id")
      rejects({ account_id = true, api_key = "k" }, "account_id")
    end)

    it("is required when base_url is not given", function()
      local msg = raises(acquire.new, { api_key = "k" })
      assert.is_true(msg:find("account_id", 1, true) ~= nil or msg:find("base_url", 1, true) ~= nil, msg)
      raises(acquire.build_request, 597752, nil, { api_key = "k" })
    end)

    it("is still checked when base_url is given", function()
      rejects({ account_id = "evil.com/x?", base_url = "http://127.0.0.1:8080", api_key = "k" }, "account_id")
    end)
  end)

  describe("base_url", function()
    local good = {
      { "http://127.0.0.1:8080", "http://127.0.0.1:8080" },
      { "https://example.com", "https://example.com" },
      { "http://localhost", "http://localhost" },
      { "https://example.com/", "https://example.com" },
      { "http://127.0.0.1:8080/", "http://127.0.0.1:8080" },
      { "https://api.example.co.uk:443", "https://api.example.co.uk:443" },
      { "http://h:1", "http://h:1" },
      { "http://h:65535", "http://h:65535" },
      { "http://[::1]:8080", "http://[::1]:8080" },
      { "http://[::FFFF:127.0.0.1]", "http://[::FFFF:127.0.0.1]" },
      { "http://8ball:1", "http://8ball:1" },                -- a name may begin with a digit
      { "http://1.2.3.4.5", "http://1.2.3.4.5" },            -- five numbers: a name, for curl too
      { "http://0.0.0.0", "http://0.0.0.0" },
    }
    for _, case in ipairs(good) do
      it("accepts " .. case[1], function()
        assert.equal(case[2] .. PATH, accepts({ base_url = case[1], api_key = "k" }))
      end)
    end

    it("makes account_id optional", function()
      assert.equal("http://127.0.0.1:9" .. PATH, accepts({ base_url = "http://127.0.0.1:9", api_key = "k" }))
    end)

    it("raises with account_id too: both name the host, and one would silently lose", function()
      local cfg = { base_url = "http://127.0.0.1:9", account_id = "mycompany", api_key = "k" }
      rejects(cfg, "base_url")
      rejects(cfg, "account_id")
      contains(raises(acquire.config, cfg), "bad option 'base_url' (not with account_id")
    end)

    local bad = {
      "http://u:p@h", "http://u@h", "http://h/x", "http://h/x/", "http://h//", "http://h?x", "http://h/?x",
      "http://h#f", "ftp://h", "h", "127.0.0.1:8080", "//h", "http://", "https://", "http://:80",
      "http://h:99999", "http://h:65536", "http://h:abc", "http://h:", "", "http://a b", "http://h\r\n",
      "file:///etc/passwd",
      -- issue 17.11 and 22.2: an IPv6 literal must be an address; a NUL is not one of its digits
      "http://[...]:1", "http://[:]", "http://[::1::1]", "http://[1:2:3:4:5:6:7:8:9]", "http://[::1%25lo]",
      "https://[::1\0dead:beef]:443", "http://[\0\0]:1", "http://[::1\0]", "http://[]",
      -- numbers curl would rewrite as another IPv4 address: only the dotted quad itself
      "http://127.1", "http://0x7f.0.0.1", "http://0x7f000001", "http://2130706433", "http://127.000.0.1",
      "http://017700000001", "http://256.1.1.1", "http://1.2.3.04",
    }
    for _, u in ipairs(bad) do
      it("rejects " .. string.format("%q", u), function()
        rejects({ base_url = u, api_key = "k" }, "base_url")
      end)
    end

    it("says why an IPv6 literal or a host of numbers is refused", function()
      contains(raises(acquire.new, { base_url = "http://[...]:1", api_key = "k" }),
        "an IPv6 literal must be an address")
      contains(raises(acquire.new, { base_url = "http://127.1", api_key = "k" }),
        "a host of numbers must be an IPv4 address in dotted-decimal form")
    end)

    it("rejects a non-string", function()
      rejects({ base_url = {}, api_key = "k" }, "base_url")
      rejects({ base_url = 8080, account_id = "a", api_key = "k" }, "base_url")
    end)
  end)

  for _, opt in ipairs({ "timeout", "connect_timeout" }) do
    describe(opt, function()
      for _, v in ipairs({ 30, 1, 0.5, 0.001, 600 }) do
        it("accepts " .. tostring(v), function()
          accepts(with(GOOD, { [opt] = v }))
        end)
      end
      local bad = { { "0", 0 }, { "-1", -1 }, { "-0.5", -0.5 }, { "NaN", 0 / 0 }, { "a string", "abc" },
                    { "a table", {} }, { "true", true } }
      for _, case in ipairs(bad) do
        it("rejects " .. case[1], function()
          rejects(with(GOOD, { [opt] = case[2] }), opt)
        end)
      end
    end)
  end

  describe("max_retries", function()
    for _, v in ipairs({ 0, 1, 2, 10, 2.0 }) do
      it("accepts " .. tostring(v), function()
        accepts(with(GOOD, { max_retries = v }))
      end)
    end
    local bad = { { "-1", -1 }, { "11", 11 }, { "1.5", 1.5 }, { "100", 100 }, { "NaN", 0 / 0 },
                  { "a string", "abc" }, { "a table", {} }, { "true", true } }
    for _, case in ipairs(bad) do
      it("rejects " .. case[1], function()
        rejects(with(GOOD, { max_retries = case[2] }), "max_retries")
      end)
    end
  end)

  describe("a NaN", function()
    -- printf writes 0/0 as "-nan" on x86: the message says nan, on every Lua
    for _, case in ipairs({
      { "timeout", "bad option 'timeout' (seconds from 0.001 to 86400 expected, got nan)" },
      { "connect_timeout", "bad option 'connect_timeout' (seconds from 0.001 to 86400 expected, got nan)" },
      { "max_retries", "bad option 'max_retries' (integer from 0 to 10 expected, got nan)" },
      { "max_response_bytes", "bad option 'max_response_bytes' (integer from 1 to 1073741824 expected, got nan)" },
      { "reconcile", "bad option 'reconcile' (boolean, or seconds from 0 to 60 expected, got nan)" },
    }) do
      it("in " .. case[1] .. " reads got nan", function()
        for _, nan in ipairs({ 0 / 0, -(0 / 0) }) do
          local msg = raises(acquire.new, with(GOOD, { [case[1]] = nan }))
          assert.equal(case[2], (msg:gsub("^[^\n]-:%d+: ", "")))
        end
      end)
    end

    it("and other numbers read as numbers", function()
      contains(raises(acquire.new, with(GOOD, { timeout = -1 })), "got -1)")
      contains(raises(acquire.new, with(GOOD, { timeout = math.huge })), "got inf)")
      contains(raises(acquire.new, with(GOOD, { max_retries = 11 })), "got 11)")
      contains(raises(acquire.new, with(GOOD, { max_retries = 1.5 })), "got 1.5)")
      contains(raises(acquire.new, with(GOOD, { reconcile = "x" })), "got string)")
    end)
  end)

  describe("insecure and strict", function()
    it("accept booleans", function()
      accepts(with(GOOD, { insecure = true }))
      accepts(with(GOOD, { insecure = false }))
      accepts(with(GOOD, { strict = true }))
      accepts(with(GOOD, { strict = false }))
    end)

    it("strict defaults to true", function()
      contains(raises(acquire.build_request, 597752, { foo = 1 }, GOOD), "unknown field 'foo'")
    end)

    it("strict = false lets unknown opts keys through", function()
      local req = acquire.build_request(597752, { foo = 1 }, with(GOOD, { strict = false }))
      assert.equal('{"foo":1}', req.body)
    end)
  end)
end)

describe("a proxy's IPv6 literal", function()
  -- issue 22.2: strchr(set, c) also finds the terminating NUL
  for _, u in ipairs({ "http://u:p@[\0\0]:3128", "http://[::1\0dead:beef]:3128", "http://[...]:3128",
                       "http://[]:3128" }) do
    it("refuses " .. string.format("%q", u), function()
      contains(raises(acquire.config, with(GOOD, { proxy = u })), "bad option 'proxy'")
    end)
  end

  it("reads an address as one", function()
    local c = acquire.config(with(GOOD, { proxy = "http://u:p@[::1]:3128" }))
    assert.equal("http://[::1]:3128", c.proxy.url)
    assert.equal("[::1]", c.proxy.host)
  end)
end)

describe("acquire.config's proxy_mode", function()
  -- A generator: the mode every transport obeys is decided once, with the proxy: "tunnel" for an
  -- https target, "plain" for an http one, false without a proxy; the proxy's url is its host and port.
  it("is the target's scheme's, or false without a proxy", function()
    local seed = tonumber(os.getenv("SPEC_SEED")) or os.time()
    math.randomseed(seed)
    local R = math.random
    local HOSTS = { "h", "proxy.example", "127.0.0.1", "[::1]", "[2001:db8::7]", "8ball" }
    local CREDS = { "", "u@", "u:p@", "us%40er:p%3Ass@" }
    local counts = { plain = 0, tunnel = 0, none = 0 }
    for n = 1, 300 do
      local scheme = R(2) == 1 and "http" or "https"
      local base = scheme .. "://" .. HOSTS[R(#HOSTS)] .. (R(2) == 1 and "" or ":" .. R(1, 65535))
      local proxy = false
      if R(3) > 1 then
        proxy = (R(2) == 1 and "http://" or "HTTP://") .. CREDS[R(#CREDS)] .. HOSTS[R(#HOSTS)] .. ":" .. R(1, 65535)
          .. (R(4) == 1 and "/" or "")
      end
      local why = ("SPEC_SEED=%d, draw %d: base_url %s, proxy %s"):format(seed, n, base, tostring(proxy))
      local c = acquire.config({ base_url = base, api_key = "k", proxy = proxy })
      assert(c.target == nil, why .. ": a target")
      if proxy then
        local want = scheme == "https" and "tunnel" or "plain"
        assert(c.proxy_mode == want, why .. ": proxy_mode " .. tostring(c.proxy_mode) .. ", not " .. want)
        assert(c.proxy.url == "http://" .. c.proxy.host .. ":" .. c.proxy.port, why .. ": url " .. c.proxy.url)
        counts[want] = counts[want] + 1
      else
        assert(c.proxy == false and c.proxy_mode == false, why .. ": proxy_mode " .. tostring(c.proxy_mode))
        counts.none = counts.none + 1
      end
    end
    for k, v in pairs(counts) do assert(v > 10, ("SPEC_SEED=%d: only %d draws %s"):format(seed, v, k)) end
  end)
end)

describe("the option table", function()
  -- One table drives the name check and acquire.config: every option the unknown-option message
  -- lists is one acquire.config reads back (given a value), and nothing else is accepted.
  it("lists exactly the options acquire.config reads back", function()
    local msg = raises(acquire.config, with(GOOD, { nosuch = 1 }))
    local list = msg:match("expected one of: ([%w_, ]+)%)")
    assert(list, msg)
    local given = { api_key = "k", base_url = "http://127.0.0.1:9", timeout = 2.5, connect_timeout = 1,
                    max_retries = 3, user_agent = "ua/1", ca_file = "/etc/ssl/certs/ca-certificates.crt",
                    insecure = true, strict = false, max_response_bytes = 99, debug = "body", reconcile = 0.5,
                    proxy = "http://p:1", logger = print }
    local names = {}
    for name in list:gmatch("[%w_]+") do names[#names + 1] = name end
    assert.equal(15, #names)
    for _, name in ipairs(names) do
      if name ~= "account_id" then assert(given[name] ~= nil, "no value for " .. name) end
    end
    local c = acquire.config(given)
    for _, name in ipairs(names) do
      if name ~= "account_id" then
        assert(c[name] ~= nil, "acquire.config does not read back " .. name)
      end
    end
    assert.equal("https://a.acquire.io", acquire.config({ account_id = "a", api_key = "k" }).base_url)
    assert.equal("a", acquire.config({ account_id = "a", api_key = "k" }).account_id)
  end)
end)

describe("ca_file", function()
  local dir
  before_each(function() dir = helper.tmpdir() end)
  after_each(function() helper.rmrf(dir) end)

  -- in a child with a time limit: on a build that reads a FIFO or /dev/zero, the check never returns
  local function check_in_child(path)
    local code, out, err = helper.run_lua(([[
local acquire = require "acquire"
local ok, e = pcall(acquire.new, { base_url = "https://127.0.0.1:9", api_key = "k", ca_file = %q })
io.write(ok and "accepted" or e)
]]):format(path), { limit = 10 })
    assert(code == 0, "the check did not return (exit " .. tostring(code) .. "): " .. out .. err)
    return out
  end

  it("refuses a FIFO at once, saying why (issue 22.4)", function()
    local fifo = dir .. "/fifo"
    assert.equal(0, select(2, helper.sh("mkfifo " .. helper.shell_quote(fifo))))
    local msg = check_in_child(fifo)
    contains(msg, "bad option 'ca_file'")
    contains(msg, "a FIFO, not a regular file")
  end)

  it("refuses /dev/zero and /dev/null: devices, not files", function()
    for _, dev in ipairs({ "/dev/zero", "/dev/null" }) do
      local msg = check_in_child(dev)
      contains(msg, "bad option 'ca_file'")
      contains(msg, "a device, not a regular file")
    end
  end)

  it("refuses a file larger than 16 MiB without reading it", function()
    local big = dir .. "/big.pem"
    local f = assert(io.open(big, "wb"))
    f:seek("set", 16 * 1024 * 1024)
    f:write("x")                                   -- sparse: nothing of it is on disk
    f:close()
    local msg = raises(acquire.new, with(GOOD, { ca_file = big }))
    contains(msg, "bad option 'ca_file'")
    contains(msg, "16777217 bytes, more than the 16 MiB")
  end)

  it("still takes a bundle of certificates", function()
    local c = acquire.config(with(GOOD, { ca_file = "/etc/ssl/certs/ca-certificates.crt" }))
    assert.equal("/etc/ssl/certs/ca-certificates.crt", c.ca_file)
  end)
end)

describe("every number's range", function()
  -- { option, lo, hi, integer?, "boolean, or " when a boolean is taken too }; README's table
  local RANGES = {
    { "timeout", 0.001, 86400, false, "" },
    { "connect_timeout", 0.001, 86400, false, "" },
    { "max_retries", 0, 10, true, "" },
    { "max_response_bytes", 1, 1073741824, true, "" },
    { "reconcile", 0, 60, false, "boolean, or " },
  }
  local function fmt(x) return (("%.14g"):format(x)) end

  -- A generator: numbers of every kind against every option; each either raises naming the
  -- option and its range, or is read back through acquire.config inside the range (and as an
  -- integer where one is needed): no value slips through converted out of range.
  it("refuses what is outside, naming the option and its range; keeps what is inside", function()
    local seed = tonumber(os.getenv("SPEC_SEED")) or os.time()
    math.randomseed(seed)
    local R = math.random
    local SPECIAL = { 0 / 0, -(0 / 0), math.huge, -math.huge, 0, -0.0, 2 ^ 31, 2 ^ 31 - 1, -2 ^ 31, 2 ^ 32,
                      2 ^ 53, 2 ^ 53 + 1, 2 ^ 63, -2 ^ 63, 2 ^ 64, 1e300, -1e300, 1e-300, -1e-300, 5e-324,
                      0.0005, 0.001, 0.0010000001, 0.5, 1, 1.5, 10, 10.5, 11, 60, 60.000001, 86400,
                      86400.001, 1073741824, 1073741825, 2 ^ 30 + 0.5, 1 - 2 ^ -53, 2 ^ -1074 }
    if math.maxinteger then
      SPECIAL[#SPECIAL + 1] = math.maxinteger
      SPECIAL[#SPECIAL + 1] = math.mininteger
      SPECIAL[#SPECIAL + 1] = math.tointeger(2 ^ 31)
    end
    local function draw()
      local k = R(4)
      if k == 1 then return SPECIAL[R(#SPECIAL)] end
      if k == 2 then return (R() - 0.5) * 10 ^ R(-8, 12) end           -- any size, any sign
      if k == 3 then return R(-3, 100) + (R(2) == 1 and 0 or R()) end  -- near the ranges
      return R() * 2 ^ R(-1074, 1023) * (R(2) == 1 and -1 or 1)        -- any double
    end
    for n = 1, 400 do
      local r = RANGES[(n - 1) % #RANGES + 1]
      local opt, lo, hi, integer, also = r[1], r[2], r[3], r[4], r[5]
      local v = draw()
      local why = ("SPEC_SEED=%d: %s = %s"):format(seed, opt, ("%.17g"):format(v))
      local ok, c = pcall(acquire.config, with(GOOD, { [opt] = v }))
      local inside = v >= lo and v <= hi and (not integer or v == math.floor(v))
      if ok then
        assert(inside, why .. ": accepted, outside its range")
        local got = c[opt]
        assert(type(got) == "number" and got >= lo and got <= hi, why .. ": read back as " .. tostring(got))
        if integer then
          assert(got == v and got == math.floor(got), why .. ": read back as " .. tostring(got))
        else
          -- kept in whole milliseconds, rounded up
          assert(got >= v and got - v <= 0.001, why .. ": read back as " .. tostring(got))
        end
        assert(acquire.new(with(GOOD, { [opt] = v }))):close()
      else
        assert(not inside, why .. ": refused, inside its range: " .. tostring(c))
        local want = ("bad option '%s' (%s%s from %s to %s expected, got "):format(opt, also,
          integer and "integer" or "seconds", fmt(lo), fmt(hi))
        assert(tostring(c):find(want, 1, true), why .. ": the message does not say " .. want .. ": " .. tostring(c))
      end
    end
  end)

  it("names the range for a value of another type too", function()
    for _, r in ipairs(RANGES) do
      for _, v in ipairs({ "1", {}, r[1] == "reconcile" and "x" or true }) do
        contains(raises(acquire.new, with(GOOD, { [r[1]] = v })),
          ("bad option '%s' (%s%s from %s to %s expected, got %s)"):format(r[1], r[5],
            r[4] and "integer" or "seconds", fmt(r[2]), fmt(r[3]), type(v)))
      end
    end
  end)
end)

describe("acquire.configure", function()
  it("raises on bad configuration, naming the option", function()
    contains(raises(acquire.configure, { account_id = "mycompany" }), "api_key")
    contains(raises(acquire.configure, { account_id = "evil.com/x?", api_key = "k" }), "account_id")
    contains(raises(acquire.configure, { base_url = "http://h/x", api_key = "k" }), "base_url")
    contains(raises(acquire.configure, with(GOOD, { timeout = 0 })), "timeout")
    contains(raises(acquire.configure, with(GOOD, { max_retries = 11 })), "max_retries")
    contains(raises(acquire.configure, with(GOOD, { foo = true })), "bad option 'foo'")
  end)

  it("makes the client acquire.create_case uses", function()
    local port = helper.free_port()
    acquire.configure{ base_url = "http://127.0.0.1:" .. port, api_key = "k", max_retries = 0 }
    local res, err = acquire.create_case(597752, { title = "t" })
    assert.is_nil(res)
    assert.is_table(err)
    assert.equal("network", err.kind)
    assert.equal(7, err.code)
    assert.is_nil(err.status)
  end)

  it("keeps the default client's strict setting for acquire.create_case", function()
    acquire.configure{ base_url = "http://127.0.0.1:" .. helper.free_port(), api_key = "k", max_retries = 0 }
    contains(raises(acquire.create_case, 597752, { foo = 1 }), "unknown field 'foo'")
    contains(raises(acquire.create_case, "12a"), "contactId")
  end)

  it("leaves the previous default client in place when the new configuration raises", function()
    local port = helper.free_port()
    acquire.configure{ base_url = "http://127.0.0.1:" .. port, api_key = "k", max_retries = 0 }
    raises(acquire.configure, { base_url = "http://h/x", api_key = "k" })
    local res, err = acquire.create_case(597752)
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.equal(7, err.code)
  end)
end)
