/*
 * fuzz_dates: the two date parsers, Retry-After (response.c's
 * response_parse_retry_after, called directly) and reconcile's dateCreated
 * (reconcile.c's parse_iso, static: reached through acquire.match_cases
 * with a `since` filter, which keeps a case when its date is no earlier
 * than since - 300 s).
 *
 * Byte 1 picks `now` (for Retry-After) and the mode: below 0x80 the rest of
 * the input is the string, raw; from 0x80 the next bytes build a date in
 * one of the shapes (IMF-fixdate, RFC 850, asctime, ISO 8601 with or
 * without milliseconds, delay-seconds) with fields in and out of range,
 * and the bytes after it are appended.
 *
 * Always checked: Retry-After is -1 (none) or a finite number >= 0; delay
 * seconds (blanks around digits, under 1e9) read as written; a valid
 * IMF-fixdate reads as max(0, date - now). dateCreated: a date never
 * matches since = 1e300 (the result is finite, not NaN), matching is
 * monotone in since, a valid "YYYY-MM-DDTHH:MM:SS[.f+]Z" from 1970 on reads
 * as that instant (to 10 ms), before 1970 too (a negative instant).
 * With H.strict (FUZZ_STRICT=1; issue 22's finding 7, not fixed yet): what
 * either parser accepts has two-digit fields and a real calendar date, and
 * Retry-After accepts RFC 850 and asctime dates (RFC 9110 5.6.7).
 */
#include <math.h>
#include "harness.h"
#include "core.h"

/* H.retry_after(s, now) -> response_parse_retry_after(s, now) */
static int fuzz_retry_after(lua_State *L) {
    const char *v = luaL_checkstring(L, 1);
    lua_pushnumber(L, response_parse_retry_after(v, (double)luaL_checknumber(L, 2)));
    return 1;
}

static const luaL_Reg extra[] = {
    { "retry_after", fuzz_retry_after },
    { NULL, NULL }
};

static const char checker[] =
    "local acquire, H = ...\n"
    "local NOWS = { 0, 784111777, 1700000000, 2147483648, 4102444800, 253402300799 }\n"
    "local DAYS = { 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun' }\n"
    "local LONGDAYS = { 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday' }\n"
    "local MONTHS = { 'Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec' }\n"
    "local MON = {}\n"
    "for i, m in ipairs(MONTHS) do MON[m] = i end\n"
    "local WDAY = {}\n"
    "for _, d in ipairs(DAYS) do WDAY[d] = true end\n"
    "local function leap(y) return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) end\n"
    "local function mdays(y, m)\n"
    "  return ({ 31, leap(y) and 29 or 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 })[m]\n"
    "end\n"
    "local function civil(y, m, d, hh, mm, ss)   -- seconds since the epoch (proleptic Gregorian)\n"
    "  y = m <= 2 and y - 1 or y\n"
    "  local era = (y >= 0 and y or y - 399) // 400\n"
    "  local yoe = y - era * 400\n"
    "  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1\n"
    "  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy\n"
    "  return (era * 146097 + doe - 719468) * 86400.0 + hh * 3600 + mm * 60 + ss\n"
    "end\n"
    "local function valid(y, m, d, hh, mm, ss)\n"
    "  return m >= 1 and m <= 12 and d >= 1 and d <= mdays(y, m) and hh <= 23 and mm <= 59 and ss <= 60\n"
    "end\n"
    "local function q(s) return string.format('%q', s:sub(1, 120)) end\n"
    "\n"
    "-- The IMF-fixdate of s as the module must read it (nil if s is not one).\n"
    "local function imf(s)\n"
    "  local w, d, mo, y, hh, mm, ss = s:match('^[ \\t]*(%a%a%a), (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT[ \\t]*$')\n"
    "  if not w or not WDAY[w] or not MON[mo] then return nil end\n"
    "  y, d, mo, hh, mm, ss = tonumber(y), tonumber(d), MON[mo], tonumber(hh), tonumber(mm), tonumber(ss)\n"
    "  if y < 1900 or not valid(y, mo, d, hh, mm, ss) then return nil end\n"
    "  return civil(y, mo, d, hh, mm, ss)\n"
    "end\n"
    "local LONG_DAYS = { Monday = true, Tuesday = true, Wednesday = true, Thursday = true, Friday = true,\n"
    "  Saturday = true, Sunday = true }\n"
    "local function rfc850(s)   -- Sunday, 06-Nov-94 08:49:37 GMT\n"
    "  local w, d, mo, y, hh, mm, ss = s:match('^[ \\t]*(%a+), (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT[ \\t]*$')\n"
    "  if not d or not MON[mo] or not LONG_DAYS[w] then return nil end\n"
    "  y = 1900 + tonumber(y); if y < 1970 then y = y + 100 end\n"
    "  if not valid(y, MON[mo], tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)) then return nil end\n"
    "  return true\n"
    "end\n"
    "local function asctime(s)  -- Sun Nov  6 08:49:37 1994\n"
    "  local w, mo, d, hh, mm, ss, y = s:match('^[ \\t]*(%a%a%a) (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)[ \\t]*$')\n"
    "  if not w or not WDAY[w] or not MON[mo] then return nil end\n"
    "  y = tonumber(y)\n"
    "  if y < 1900 or not valid(y, MON[mo], tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)) then return nil end\n"
    "  return true\n"
    "end\n"
    "-- The ISO date of s as reconcile must read it (nil if s is not one).\n"
    "local function iso(s)\n"
    "  local y, mo, d, hh, mm, ss, rest = s:match('^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(.*)$')\n"
    "  if not y then return nil end\n"
    "  local frac = rest:match('^%.(%d+)Z$')\n"
    "  if not frac and rest ~= 'Z' then return nil end\n"
    "  y, mo, d, hh, mm, ss = tonumber(y), tonumber(mo), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)\n"
    "  if not valid(y, mo, d, hh, mm, ss) then return nil end\n"
    "  return civil(y, mo, d, hh, mm, ss) + (frac and tonumber('0.' .. frac) or 0)\n"
    "end\n"
    "-- what strict mode asks of an accepted date: two-digit fields, a real day\n"
    "local function sane_iso(s)\n"
    "  local y, mo, d, hh, mm, ss = s:match('^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt](%d%d):(%d%d):(%d%d)')\n"
    "  return y and valid(tonumber(y), tonumber(mo), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss))\n"
    "end\n"
    "\n"
    "local function check_retry_after(s, now)\n"
    "  local r = H.retry_after(s, now)\n"
    "  assert(r == -1 or (r >= 0 and r < math.huge), 'Retry-After ' .. q(s) .. ' read as ' .. tostring(r))\n"
    "  local digits = s:match('^[ \\t]*(%d+)[ \\t]*$')\n"
    "  if digits and tonumber(digits) < 1e9 then\n"
    "    assert(r == tonumber(digits), 'Retry-After seconds ' .. q(s) .. ' read as ' .. r)\n"
    "  end\n"
    "  local at = not s:find('\\0', 1, true) and imf(s)\n"
    "  if at then\n"
    "    local want = at > now and at - now or 0\n"
    "    assert(r == want, 'Retry-After date ' .. q(s) .. ' read as ' .. r .. ', not ' .. want)\n"
    "  end\n"
    "  if H.strict then\n"
    "    local c = s:match('^[^\\0]*')\n"
    "    if r ~= -1 and not c:match('^[ \\t]*%d+[ \\t]*$') then\n"
    "      assert(imf(c) or rfc850(c) or asctime(c), 'Retry-After ' .. q(s) .. ' accepted, read as ' .. r)\n"
    "    end\n"
    "    if rfc850(c) or asctime(c) then\n"
    "      assert(r >= 0, 'Retry-After ' .. q(s) .. ' (RFC 850 or asctime) ignored')\n"
    "    end\n"
    "  end\n"
    "  -- and the same through decode_response: the err's retry_after never negative\n"
    "  local _, err = acquire.decode_response(503, { ['Retry-After'] = s }, '')\n"
    "  assert(err.retry_after == nil or (err.retry_after >= 0 and err.retry_after < math.huge),\n"
    "         'err.retry_after ' .. tostring(err.retry_after))\n"
    "end\n"
    "\n"
    "local function check_iso(s)\n"
    "  local case = { dateCreated = s }\n"
    "  local res = { data = { data = { case } } }\n"
    "  local function matched(since)\n"
    "    local found = acquire.match_cases(res, { since = since })\n"
    "    assert(#found == 0 or (#found == 1 and found[1] == case), 'match_cases made up a case')\n"
    "    return #found == 1\n"
    "  end\n"
    "  assert(not matched(1e300), 'dateCreated ' .. q(s) .. ' is after 1e300 s: not finite')\n"
    "  local low = matched(-1e15)\n"
    "  local want = not s:find('\\0', 1, true) and iso(s)\n"
    "  if want then                         -- before 1970 too: a negative instant\n"
    "    assert(matched(want + 300 - 0.01) and not matched(want + 300 + 0.01),\n"
    "           'dateCreated ' .. q(s) .. ' not read as ' .. string.format('%.3f', want))\n"
    "  end\n"
    "  if low then   -- monotone: what matches a later since matches an earlier one\n"
    "    local hi = matched(2e11)\n"
    "    assert(not hi or matched(1.5e9), 'matching is not monotone in since for ' .. q(s))\n"
    "  else\n"
    "    assert(not matched(0) and not matched(1.7e9), 'matching is not monotone in since for ' .. q(s))\n"
    "  end\n"
    "  if H.strict and low then\n"
    "    assert(sane_iso(s) and not s:find('\\0', 1, true), 'dateCreated ' .. q(s) .. ' accepted')\n"
    "  end\n"
    "end\n"
    "\n"
    "-- byte 1: now = NOWS[b % 6 + 1]; b >= 0x80: a date built from the next bytes\n"
    "local function built(s)\n"
    "  local b = { s:byte(2, 10) }\n"
    "  for i = 1, 9 do b[i] = b[i] or 0 end\n"
    "  local shape = b[1] % 6\n"
    "  local wild = b[1] >= 128                 -- fields out of range too\n"
    "  local y = wild and (b[2] * 256 + b[3]) % 10000 or 1900 + (b[2] * 256 + b[3]) % 300\n"
    "  local mo = wild and b[4] % 14 or b[4] % 12 + 1\n"
    "  local d = wild and b[5] % 33 or b[5] % 31 + 1\n"
    "  local hh, mm, ss = b[6] % (wild and 26 or 24), b[7] % (wild and 62 or 60), b[8] % (wild and 63 or 61)\n"
    "  local wd, mn = DAYS[b[9] % 7 + 1], MONTHS[(mo - 1) % 12 + 1]\n"
    "  local out\n"
    "  if shape == 0 then out = string.format('%s, %02d %s %04d %02d:%02d:%02d GMT', wd, d, mn, y, hh, mm, ss)\n"
    "  elseif shape == 1 then\n"
    "    out = string.format('%s, %02d-%s-%02d %02d:%02d:%02d GMT', LONGDAYS[b[9] % 7 + 1], d, mn, y % 100, hh, mm, ss)\n"
    "  elseif shape == 2 then out = string.format('%s %s %2d %02d:%02d:%02d %04d', wd, mn, d, hh, mm, ss, y)\n"
    "  elseif shape == 3 then out = string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', y, mo, d, hh, mm, ss)\n"
    "  elseif shape == 4 then\n"
    "    out = string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, mo, d, hh, mm, ss, b[9] * 3 % 1000)\n"
    "  else out = string.format('%d', (b[2] * 256 + b[3]) * 65536 + b[4] * 256 + b[5]) end\n"
    "  return out .. s:sub(11)\n"
    "end\n"
    "\n"
    "return function(s)\n"
    "  local b = s:byte(1) or 0\n"
    "  local now = NOWS[b % #NOWS + 1]\n"
    "  local v = b >= 128 and built(s) or s:sub(2)\n"
    "  check_retry_after(v, now)\n"
    "  check_iso(v)\n"
    "end\n";

FUZZ_HARNESS("fuzz_dates", checker, extra)
