-- acquire-case's JSON input, every number exactly what the text says: --json opts and a
-- --batch line's object, decoded by lua-cjson (which reads numbers as doubles) with the
-- numbers a double cannot carry put back as exact values or refused, naming the field;
-- and the exact integers of flags and CSV cells. Part of bin/acquire-case.
local out = require "acquire.cli.output"

local fail, usage_error, strip_position, try = out.fail, out.usage_error, out.strip_position, out.try
local EXIT_USAGE, EXIT_SERVER = out.USAGE, out.SERVER

local M = {}

-- ---------------------------------------------------------------------
-- Integers, exactly. A double holds every integer up to 2^53 and rounds
-- past it (9007199254740993 becomes ...992: another contact). Lua 5.3+ has
-- 64-bit integers; 5.1, 5.2 and LuaJIT have only doubles.

local INT64 = math.type ~= nil and math.maxinteger == 9223372036854775807
local TWO53 = "9007199254740992"
local TOO_BIG = INT64 and "outside the 64-bit integer range"
  or "integers beyond 2^53: this Lua has no 64-bit integers"

-- Compares two strings of digits without leading zeros by value.
local function cmp_digits(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end

-- The Lua number that is exactly the integer written as digits ("-" allowed,
-- no leading zeros), or nil when this Lua has none.
local function exact_integer(s)
  local neg = s:sub(1, 1) == "-"
  local mag = neg and s:sub(2) or s
  if cmp_digits(mag, TWO53) <= 0 then return tonumber(s) end
  if INT64 and cmp_digits(mag, neg and "9223372036854775808" or "9223372036854775807") <= 0 then
    local v = math.tointeger(tonumber(s))
    if v and string.format("%d", v) == s then return v end
  end
  return nil
end

-- A non-negative integer from its digits, exactly, or a usage error.
local function parse_uint(name, s)
  if not s:match("^%d+$") then
    usage_error("--" .. name .. " expects a non-negative integer, got '" .. s .. "'")
  end
  local v = exact_integer(s:match("^0*(%d-%d)$"))
  if v == nil then
    fail(EXIT_USAGE, "--" .. name .. " " .. s .. " cannot be carried exactly (" .. TOO_BIG .. ")")
  end
  return v
end

-- ---------------------------------------------------------------------
-- JSON, decoded (acquire.encode writes it).

local cjson = nil

local function json()
  if cjson == nil then
    local ok, mod = try(require, "cjson")
    if not ok then fail(EXIT_SERVER, "cannot load lua-cjson: " .. strip_position(mod)) end
    cjson = mod.new and mod.new() or mod
    if cjson.decode_invalid_numbers then try(cjson.decode_invalid_numbers, false) end
  end
  return cjson
end

-- lua-cjson decodes every JSON number through a double, so an integer
-- past 2^53 would arrive rounded. Before that can happen, the text is
-- scanned for the numbers a double cannot carry: integers past 2^53, a
-- fraction that a double rounds to an integer, and the few forms lua-cjson
-- accepts that are not JSON numbers. Each one is swapped for a stand-in
-- that decodes exactly (2^62 + k * 1024: an integer past 2^53, which no
-- number left in the text can be), and after decoding the stand-ins are put
-- back as exact values where their place allows it, else refused:
--   contactId (a --batch line) and mentionUsers[i]: the digits, as a string
--     (the module takes a contact id as digits, and sends user ids as strings);
--   anywhere else: a Lua 5.3+ integer if it fits in 64 bits;
--   otherwise: exit 2, naming the field.
local STAND_IN, STAND_IN_STEP = 2^62, 1024

-- What a double cannot carry about the number token tok, or nil if it
-- can. Returns kind ("integer", "rounds", "syntax") and, for "integer",
-- the integer's digits with its sign and no leading zeros.
local function inexact(tok)
  -- JSON's grammar, plus what lua-cjson also takes: "1.", "1.e5", "-007"
  local sign, int, rest = tok:match("^(%-?)(%d+)(.*)$")
  if not sign then return "syntax" end
  local frac, exp = "", ""
  local f, after = rest:match("^%.(%d*)(.*)$")
  if f then frac, rest = f, after end
  if rest ~= "" then
    exp = rest:match("^[eE]([-+]?%d+)$")
    if not exp then return "syntax" end
  end
  local digits = (int .. frac):gsub("^0+", "")
  if digits == "" then return nil end                      -- zero
  local e = exp:gsub("^%+", ""):gsub("^(%-?)0+(%d)", "%1%2")
  if #e > 7 then e = e:sub(1, 1) == "-" and "-9999999" or "9999999" end
  local shift = tonumber(e ~= "" and e or "0") - #frac     -- value = digits * 10^shift
  while shift < 0 and digits:sub(-1) == "0" do
    digits, shift = digits:sub(1, -2), shift + 1
  end
  if shift < 0 then                                        -- not an integer
    local d = tonumber(tok)
    if d == math.floor(d) then return "rounds" end         -- ... but its double is
    return nil
  end
  if #digits + shift > 25 then return "integer", nil end   -- far past 64 bits
  digits = digits .. ("0"):rep(shift)
  if cmp_digits(digits, TWO53) <= 0 then return nil end
  return "integer", sign .. digits
end

-- Decodes text like cjson.decode, but with every number exactly what the
-- text says, or fails naming it. where: "line 3" or "--json FILE".
-- as_digits(parent, key, root): true where digits as a string are exact.
-- Returns ok, value | false, cjson's message.
local function decode_exact(codec, text, where, as_digits)
  local ok, doc = try(codec.decode, text)
  if not ok or type(doc) ~= "table" then return ok, doc end
  -- where no digit is followed by anything but a digit or a delimiter, and no 16 digits run, every
  -- number token is an integer below 2^53: the scan below would flag nothing (strings may make
  -- it scan when it need not, never the other way)
  if not text:find('%d[^%d%s,:%[%]{}"]') and not text:find("%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d") then
    return true, doc
  end
  -- The text is JSON (lua-cjson's reading of it): outside strings, a number
  -- token is a "-" or a digit up to the next delimiter.
  local pieces, flagged, from, i, n = {}, {}, 1, 1, #text
  while i <= n do
    local c = text:byte(i)
    if c == 34 then                                        -- a string: skip it
      i = i + 1
      while true do
        local j = text:find('["\\]', i)
        if not j then i = n + 1 break end
        if text:byte(j) == 92 then i = j + 2 else i = j + 1 break end
      end
    elseif c == 45 or (c >= 48 and c <= 57) then
      local j = text:find('[%s,:%[%]{}"]', i) or n + 1
      local tok = text:sub(i, j - 1)
      local kind, digits = inexact(tok)
      if kind then
        flagged[#flagged + 1] = { tok = tok, kind = kind, digits = digits }
        pieces[#pieces + 1] = text:sub(from, i - 1)
        pieces[#pieces + 1] = string.format("%.0f", STAND_IN + (#flagged - 1) * STAND_IN_STEP)
        from = j
      end
      i = j
    else
      i = i + 1
    end
  end
  if #flagged == 0 then return true, doc end
  pieces[#pieces + 1] = text:sub(from)
  ok, doc = try(codec.decode, table.concat(pieces))
  if not ok then fail(EXIT_SERVER, where .. ": internal error: " .. strip_position(doc)) end
  local worst = nil                                        -- the first refused, in text order
  local function put_back(t, path, depth)
    if depth > 1000 then fail(EXIT_USAGE, where .. ": nested too deep") end
    for k, v in pairs(t) do
      local name = type(k) == "number" and ("%s[%d]"):format(path or "", k)
        or (path and path .. "." .. tostring(k) or tostring(k))
      if type(v) == "table" then
        put_back(v, name, depth + 1)
      elseif type(v) == "number" and v >= STAND_IN and v < 2^63 then
        local idx = (v - STAND_IN) / STAND_IN_STEP + 1
        local f = flagged[idx]
        if idx ~= math.floor(idx) or not f then
          fail(EXIT_SERVER, where .. ": internal error: stray number at " .. name)
        end
        local exact = nil
        if f.kind == "integer" and f.digits then
          if as_digits(path, k, depth) then
            exact = f.digits
          else
            exact = exact_integer(f.digits)
          end
        end
        if exact ~= nil then
          t[k] = exact
        elseif not worst or idx < worst.idx then
          worst = { idx = idx, name = name, f = f }
        end
      end
    end
  end
  put_back(doc, nil, 0)
  if worst then
    local f = worst.f
    local why = f.kind == "syntax" and "is not a JSON number"
      or f.kind == "rounds" and "cannot be carried exactly (not an integer, but a double rounds it to one)"
      or "cannot be carried exactly (" .. TOO_BIG .. ")"
    fail(EXIT_USAGE, where .. ": " .. worst.name .. " " .. f.tok .. " " .. why)
  end
  return true, doc
end

-- Where a --batch line or --json opts can take an integer as its digits.
local function digits_in_opts(path, key, depth)
  return depth == 1 and path == "mentionUsers" and type(key) == "number"
end

local function digits_in_line(path, key, depth)
  return (depth == 0 and key == "contactId") or digits_in_opts(path, key, depth)
end

-- A JSON null decodes to cjson.null, which is acquire.null: lua-cjson's null is
-- lightuserdata NULL, and so is the module's (response_push_null), so decoded
-- opts go to the module as they are.
local function read_json_opts(source)
  local text, err
  if source == "-" then
    text = io.stdin:read("*a")
    if text == nil then fail(EXIT_USAGE, "--json -: cannot read standard input") end
  else
    local f
    f, err = io.open(source, "rb")
    if not f then fail(EXIT_USAGE, "cannot read --json: " .. tostring(err)) end
    text = f:read("*a") or ""
    f:close()
  end
  local c = json()
  local ok, opts = decode_exact(c, text, "--json " .. source, digits_in_opts)
  if not ok then
    fail(EXIT_USAGE, "--json " .. source .. ": not valid JSON (" .. strip_position(opts) .. ")")
  end
  if type(opts) ~= "table" then
    fail(EXIT_USAGE, "--json " .. source .. ": a JSON object expected")
  end
  return opts
end

-- A --batch line's JSON object: ok, value | false, cjson's message.
local function decode_line(text, where)
  return decode_exact(json(), text, where, digits_in_line)
end

M.exact_integer, M.TOO_BIG, M.parse_uint = exact_integer, TOO_BIG, parse_uint
M.read_json_opts, M.decode_line = read_json_opts, decode_line
return M
