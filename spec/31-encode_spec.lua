-- acquire.encode, the module's one JSON writer for Lua (acquire-case prints through it), and
-- acquire.request_fields, the request's known opts as data. A generator: random values,
-- encoded, read back by lua-cjson as the same value, every object's keys sorted (or in the
-- order asked for), the same value always the same bytes.
local cjson = require "cjson"
local acquire = require "acquire"

local INT64 = math.type ~= nil

-- A random value of depth at most d: strings (ASCII, escapes, UTF-8), integers (every size
-- this Lua carries), fractions, booleans, null, arrays and objects.
local function value(d)
  local pick = math.random(1, d > 0 and 9 or 6)
  if pick == 1 then
    local t = {}
    for i = 1, math.random(0, 8) do
      local c = math.random(1, 6)
      t[i] = c == 1 and string.char(math.random(0, 31)) or c == 2 and ({ '"', "\\", "/" })[math.random(1, 3)]
        or c == 3 and "\195\169" or c == 4 and "\226\130\172" or string.char(math.random(32, 126))
    end
    return table.concat(t)
  elseif pick == 2 then
    local n = math.random(-2 ^ 31, 2 ^ 31) * math.random(0, 2 ^ 21)         -- below 2^53
    return INT64 and math.tointeger(n) or n
  elseif pick == 3 then
    return math.random() * 10 ^ math.random(-20, 20) * (math.random(0, 1) * 2 - 1)
  elseif pick == 4 then
    return math.random(0, 1) == 1
  elseif pick == 5 then
    return acquire.null
  elseif pick == 6 then
    if INT64 then   -- the whole 64-bit range (5.3's random takes an interval below 2^63 wide)
      return math.random(math.mininteger / 4, math.maxinteger / 4) * 4 + math.random(0, 3)
    end
    return 2 ^ 53 * math.random(2, 1000)                                    -- past 2^53, a double
  elseif pick == 7 then
    local t = {}
    for i = 1, math.random(1, 4) do t[i] = value(d - 1) end
    return t
  else
    local t = {}
    for _ = 1, math.random(0, 4) do t["k" .. math.random(1, 20) .. string.char(math.random(97, 122))] = value(d - 1) end
    return t
  end
end

-- Whether a and b (b read back by cjson, through doubles) are the same value; the integers
-- a double cannot carry must appear in text in all their digits.
local function same(a, b, text)
  if a == acquire.null then return b == cjson.null end
  if type(a) == "number" then
    if INT64 and math.type(a) == "integer" and not text:find(("%d"):format(a), 1, true) then return false end
    return type(b) == "number" and a + 0.0 == b + 0.0
  end
  if type(a) ~= "table" then return a == b end
  if type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not same(v, b[k], text) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- The keys of every object in text, in the order written: a list of lists.
local function key_runs(text)
  local runs, stack, i = {}, {}, 1
  while i <= #text do
    local c = text:sub(i, i)
    if c == '"' then
      local j = i + 1
      while text:sub(j, j) ~= '"' do j = j + (text:sub(j, j) == "\\" and 2 or 1) end
      if text:sub(j + 1, j + 1) == ":" and stack[#stack] then table.insert(stack[#stack], text:sub(i + 1, j - 1)) end
      i = j + 1
    else
      if c == "{" then stack[#stack + 1] = {} elseif c == "[" then stack[#stack + 1] = false
      elseif c == "}" or c == "]" then
        local top = table.remove(stack)
        if top then runs[#runs + 1] = top end
      end
      i = i + 1
    end
  end
  return runs
end

describe("acquire.encode", function()
  it("writes what lua-cjson reads back as the same value, keys sorted, the same bytes each time", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    math.randomseed(seed)
    local why = " (seed " .. seed .. ": SPEC_SEED=" .. seed .. " repeats this run)"
    for n = 1, 500 do
      local v = value(4)
      local text = acquire.encode(v)
      local ok, back = pcall(cjson.decode, text)
      assert(ok, "value " .. n .. ": not JSON: " .. text .. why)
      assert(same(v, back, text), "value " .. n .. ": reads back different: " .. text .. why)
      assert.equal(text, acquire.encode(v), why)
      for _, keys in ipairs(key_runs(text)) do
        for i = 2, #keys do assert(keys[i - 1] < keys[i], "keys not sorted: " .. text .. why) end
      end
    end
  end)

  it("puts the keys named in order first, in that order, then the rest sorted", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    math.randomseed(seed)
    local why = " (seed " .. seed .. ")"
    local names = { "line", "row", "contactId", "ok", "id", "error", "kind", "zeta", "alpha" }
    for _ = 1, 200 do
      local t, order = {}, {}
      for _, k in ipairs(names) do
        if math.random(0, 2) > 0 then t[k] = math.random(1, 9) end
        if math.random(0, 1) == 1 then table.insert(order, math.random(1, #order + 1), k) end
      end
      local text = acquire.encode(t, { order = order })
      assert.same(t, cjson.decode(text), text .. why)
      local want, named = {}, {}
      for _, k in ipairs(order) do
        if t[k] ~= nil then want[#want + 1] = k end
        named[k] = true
      end
      local rest = {}
      for k in pairs(t) do if not named[k] then rest[#rest + 1] = k end end
      table.sort(rest)
      for _, k in ipairs(rest) do want[#want + 1] = k end
      assert.same(want, key_runs(text)[1] or {}, text .. why)
    end
  end)

  it("gives an empty table as {}, null, scalars alone, and exact integers", function()
    assert.equal("{}", acquire.encode({}))
    assert.equal("null", acquire.encode(acquire.null))
    assert.equal('"a/b"', acquire.encode("a/b"))
    assert.equal("[1,2,3]", acquire.encode({ 1, 2, 3 }, { order = { "x" } }))
    assert.equal("123456789012345", acquire.encode(123456789012345))
    if INT64 then assert.equal("9223372036854775807", acquire.encode(math.maxinteger)) end
  end)

  it("raises on what has no JSON", function()
    local cyclic = {}
    cyclic.self = cyclic
    for _, bad in ipairs({ 0 / 0, math.huge, "\255", print, { [1] = 1, [3] = 3 }, { [true] = 1 }, cyclic }) do
      assert.has_error(function() acquire.encode(bad) end)
    end
    assert.has_error(function() acquire.encode() end)
    assert.has_error(function() acquire.encode({}, 1) end)
    assert.has_error(function() acquire.encode({ a = 1 }, { order = { 1 } }) end)
  end)
end)

describe("acquire.request_fields", function()
  it("names every opt build_request knows, with its type; the rest are refused", function()
    local fields = acquire.request_fields()
    local config = { base_url = "http://127.0.0.1:9", api_key = "k" }
    local sample = { string = "s", users = { "1" }, message = "m", id = 7, boolean = true, fields = { a = "b" } }
    local n = 0
    for name, kind in pairs(fields) do
      n = n + 1
      assert.is_not_nil(sample[kind], name .. ": unknown type " .. tostring(kind))
      local req = acquire.build_request(1, { [name] = sample[kind] }, config)
      assert.is_truthy(req.body:find('"' .. name .. '":', 1, true), name)
    end
    assert.equal(11, n)
    assert.equal("id", fields.agentId)
    assert.equal("users", fields.mentionUsers)
    assert.has_error(function() acquire.build_request(1, { nosuch = "x" }, config) end)
  end)
end)
