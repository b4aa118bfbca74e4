-- The parsers that read what a server says about time (issue: memory safety, finding 7):
-- Retry-After (RFC 9110 10.2.3: delay-seconds or an HTTP-date in any of its three forms) and
-- a case's dateCreated (RFC 3339, read by reconcile). Each leans strict: what is not the form
-- is ignored (Retry-After: as if absent; dateCreated: the case does not match), never read
-- as something else. Generators draw real dates, write them in every form, and check the
-- value read back; and draw corruptions of them, which must be refused. Seeded (SPEC_SEED).
local acquire = require "acquire"

local SEED = tonumber(os.getenv("SPEC_SEED")) or os.time()
local SKEW = 300                                   -- ACQ_RECONCILE_SKEW
local CONTACT = 597752
local DAYS = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" }
local LONG = { "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

-- the oracle: days from 1970-01-01 (Howard Hinnant's days_from_civil)
local function days(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (m + (m > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function mdays(y, m)
  local n = ({ 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 })[m]
  if m == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then n = 29 end
  return n
end
local function draw()
  local y, m = math.random(1970, 2090), math.random(12)
  return { y = y, m = m, d = math.random(mdays(y, m)), h = math.random(0, 23), mi = math.random(0, 59),
           s = math.random(0, 59) }
end
local function epoch(t) return days(t.y, t.m, t.d) * 86400 + t.h * 3600 + t.mi * 60 + t.s end
local function wday(t) return (days(t.y, t.m, t.d) + 3) % 7 + 1 end   -- 1970-01-01 was a Thursday

-- err.retry_after for a 503 carrying v
local function retry_after(v)
  local _, err = acquire.decode_response(503, { ["Retry-After"] = v }, "")
  return err.retry_after
end

local function http_dates(t)
  local hms = ("%02d:%02d:%02d"):format(t.h, t.mi, t.s)
  return {
    ("%s, %02d %s %04d %s GMT"):format(DAYS[wday(t)], t.d, MONTHS[t.m], t.y, hms),      -- IMF-fixdate
    ("%s, %02d-%s-%02d %s GMT"):format(LONG[wday(t)], t.d, MONTHS[t.m], t.y % 100, hms), -- RFC 850
    ("%s %s %2d %s %04d"):format(DAYS[wday(t)], MONTHS[t.m], t.d, hms, t.y),             -- asctime
  }
end

-- corruptions a strict reader refuses
local function corrupt(s, hows)
  local i = math.random(#s)
  local how = hows and hows[math.random(#hows)] or math.random(6)
  if how == 1 then return s:sub(1, i - 1) .. s:sub(i + 1)               -- a byte gone
  elseif how == 2 then return s:sub(1, i - 1) .. "-" .. s:sub(i + 1)    -- a sign
  elseif how == 3 then return s:sub(1, i) .. "\0" .. s:sub(i + 1)       -- a NUL inside
  elseif how == 4 then return s .. "x"                                   -- something after
  elseif how == 5 then return s:sub(1, i - 1) .. "+" .. s:sub(i)        -- a byte more
  else return s:sub(1, i - 1) .. "\t" .. s:sub(i + 1) end               -- a blank inside
end

describe("Retry-After", function()
  it("delay-seconds: digits only", function()
    assert.equal(5, retry_after("5"))
    assert.equal(120, retry_after(" 120 "))
    for _, bad in ipairs { "-1", "+5", "1.5", "5s", "0x10", "", " ", "1 2", "1e3" } do
      assert.is_nil(retry_after(bad), bad)
    end
  end)

  it("an HTTP-date in all three forms (generator, seed " .. SEED .. ")", function()
    math.randomseed(SEED)
    for _ = 1, 200 do
      local t = draw()
      local future = epoch(t) > os.time() + 5
      for form, v in ipairs(http_dates(t)) do
        local got = retry_after(v)
        local want_at = epoch(t)
        if form == 2 then        -- two digits: 20yy, or 19yy when 20yy is over 50 years ahead
          local y = 2000 + t.y % 100
          if y > tonumber(os.date("!%Y")) + 50 then y = y - 100 end
          if y ~= t.y then want_at = nil end
        end
        if want_at then
          assert(got, ("seed %d: %q not read"):format(SEED, v))
          if future then
            local delta = got - (want_at - os.time())
            assert(math.abs(delta) <= 2, ("seed %d: %q read as %s s from now"):format(SEED, v, got))
          else
            assert.equal(0, got)
          end
        end
        local bad = corrupt(v)
        if bad:match("^[ \t]*(.-)[ \t]*$") ~= v then
          local r = retry_after(bad)
          -- a corruption may still be a date (a space in asctime's day): then it reads the same,
          -- give or take the second that may have turned since `got` was read (seconds from now)
          assert(r == nil or (got and math.abs(r - got) <= 1),
            ("seed %d: %q (from %q) read as %s, the date as %s"):format(SEED, bad, v, tostring(r), tostring(got)))
        end
      end
    end
  end)

  it("refuses impossible dates", function()
    for _, bad in ipairs {
      "Sun, 31 Feb 2027 08:49:37 GMT", "Sun, 06 Nov 2027 24:00:00 GMT", "Sun, 6 Nov 2027 08:49:37 GMT",
      "Sun, 06 Nov 2027 08:49:37 UTC", "Xyz, 06 Nov 2027 08:49:37 GMT", "Sun, 06 Foo 2027 08:49:37 GMT",
      "Sun, 06 Nov 2027 -8:49:37 GMT", "Sunday, 06-Nov-2027 08:49:37 GMT", "Sun Nov 6 08:49:37 2027",
    } do
      assert.is_nil(retry_after(bad), bad)
    end
  end)
end)

describe("dateCreated", function()
  -- does a case created at iso match a filter since `since`?
  local function matches(iso, since)
    local page = { data = { data = { { id = 1, contactId = CONTACT, dateCreated = iso } }, count = 1 } }
    return #acquire.match_cases(page, { since = since, contactId = CONTACT }) == 1
  end

  it("RFC 3339 read exactly (generator, seed " .. SEED .. ")", function()
    math.randomseed(SEED + 1)
    for _ = 1, 300 do
      local t = draw()
      local frac = ({ "", ".0", ".123", ".5" })[math.random(4)]
      local off = math.random(3)
      local at, zone = epoch(t), "Z"
      if off == 2 then zone = "+02:30" at = at - 9000 elseif off == 3 then zone = "-05:00" at = at + 18000 end
      local iso = ("%04d-%02d-%02dT%02d:%02d:%02d%s%s"):format(t.y, t.m, t.d, t.h, t.mi, t.s, frac, zone)
      assert(matches(iso, at + SKEW), ("seed %d: %s not read as %d"):format(SEED, iso, at))
      assert(not matches(iso, at + SKEW + 1), ("seed %d: %s read later than %d"):format(SEED, iso, at))
      local bad = corrupt(iso, { 1, 3, 4, 6 })   -- (a sign could make another real offset)
      if bad ~= iso then
        -- refused (never matches), or still a date (".5" less a digit): then read no later
        assert(not matches(bad, at + SKEW + 1), ("seed %d: %q (from %q) matched"):format(SEED, bad, iso))
      end
    end
  end)

  it("refuses what is not the form", function()
    for _, bad in ipairs {
      "2027-02-31T00:00:00Z", "2027-2-01T00:00:00Z", "2027-02-01T0:00:00Z", "2027-02-01T-1:-1:-1Z",
      "2027-02-01T00:00:00.Z", "2027-02-01 00:00:00Z", "+2027-02-01T00:00:00Z", "2027-02-01T00:00:00",
      "2027-02-01T00:00:00Z\0junk", "2027-02-01T00:00:00+0000", " 2027-02-01T00:00:00Z",
    } do
      assert.is_false(matches(bad, 0), bad)
    end
    assert.is_true(matches("2027-02-01T00:00:00+00:00", 0))
  end)
end)

describe("lists end at their first hole", function()
  it("acquire.fields and match_cases read ipairs' length, whatever the border", function()
    local fields = { { field = { key = "a" }, value = 1 } }
    fields[3] = { field = { key = "c" }, value = 3 }
    fields[2 ^ 31 - 1] = { field = { key = "far" }, value = 4 }
    local got = acquire.fields({ fields = fields })
    assert.equal(1, got.a)
    assert.is_nil(got.c)
    assert.is_nil(got.far)
    local cases = { { id = 1, contactId = CONTACT } }
    cases[2 ^ 31 - 1] = { id = 2, contactId = CONTACT }
    assert.equal(1, #acquire.match_cases({ data = { data = cases, count = 2 } }, { contactId = CONTACT }))
  end)
end)
