-- API keys as a server might echo them, for the redaction specs (07, 13): generated keys,
-- their JSON escapings, junk around them, and a reader of JSON string escapes. Generated from
-- math.random: seed it in the spec. Lua 5.1-5.4 and LuaJIT.
--
--   local keys = require "spec.keys"
--   keys.random() -> a key; keys.encode(key) -> it as some JSON encoder might write it;
--   keys.junk() -> a few JSON-ish bytes; keys.unescape(s) -> s as a JSON reader sees it
local keys = {}

-- JSON string escapes read back (invalid ones kept as they are): what a JSON reader sees.
local function utf8char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local SIMPLE = { ["/"] = "/", ['"'] = '"', ["\\"] = "\\", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

function keys.unescape(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == "\\" then
      local e = s:sub(i + 1, i + 1)
      local hi = s:match("^u(%x%x%x%x)", i + 1)
      if SIMPLE[e] then
        out[#out + 1] = SIMPLE[e]; i = i + 2
      elseif hi then
        local cp = tonumber(hi, 16)
        local lo = cp >= 0xD800 and cp <= 0xDBFF and s:match("^\\u([dD][c-fC-F]%x%x)", i + 6)
        if lo then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (tonumber(lo, 16) - 0xDC00)
          i = i + 12
        else
          i = i + 6
        end
        out[#out + 1] = utf8char(cp)
      else
        out[#out + 1] = c; i = i + 1
      end
    else
      out[#out + 1] = c; i = i + 1
    end
  end
  return table.concat(out)
end

-- A random key: base64 (as API keys are), sometimes with a quote, a backslash or non-ASCII.
local KEYCHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
local EXTRA = { '"', "\\", "\195\169", "\240\159\152\128", "<", "&" }
function keys.random()
  local parts = {}
  for i = 1, math.random(6, 40) do
    if i > 1 and math.random() < 0.08 then
      parts[#parts + 1] = EXTRA[math.random(#EXTRA)]
    else
      local k = math.random(#KEYCHARS)
      parts[#parts + 1] = KEYCHARS:sub(k, k)
    end
  end
  return table.concat(parts)
end

-- key written as some JSON encoder might: each character raw (where JSON allows it), with
-- its short escape, or as \uXXXX in either case (surrogate pairs past the BMP).
function keys.encode(key)
  local out, i = {}, 1
  while i <= #key do
    local b = key:byte(i)
    local len = b < 0x80 and 1 or b < 0xE0 and 2 or b < 0xF0 and 3 or 4
    local ch = key:sub(i, i + len - 1)
    local cp = b
    if len == 2 then cp = (b - 0xC0) * 64 + key:byte(i + 1) - 0x80
    elseif len == 3 then cp = (b - 0xE0) * 4096 + (key:byte(i + 1) - 0x80) * 64 + key:byte(i + 2) - 0x80
    elseif len == 4 then
      cp = (b - 0xF0) * 262144 + (key:byte(i + 1) - 0x80) * 4096 + (key:byte(i + 2) - 0x80) * 64
        + key:byte(i + 3) - 0x80
    end
    local hex = math.random() < 0.5 and "%04x" or "%04X"
    local r = math.random(3)
    if (ch == '"' or ch == "\\") and r == 1 then r = 2 end
    if r == 1 then
      out[#out + 1] = ch
    elseif r == 2 and (ch == "/" or ch == '"' or ch == "\\") then
      out[#out + 1] = "\\" .. ch
    elseif cp >= 0x10000 then
      local v = cp - 0x10000
      out[#out + 1] = ("\\u" .. hex .. "\\u" .. hex):format(0xD800 + math.floor(v / 1024), 0xDC00 + v % 1024)
    else
      out[#out + 1] = ("\\u" .. hex):format(cp)
    end
    i = i + len
  end
  return table.concat(out)
end

local JUNK = { "a", "b", "/", "\\", "\\/", "\\u00", '"', " ", "\n", "x", "{", "}" }
function keys.junk()
  local t = {}
  for _ = 1, math.random(0, 6) do t[#t + 1] = JUNK[math.random(#JUNK)] end
  return table.concat(t)
end

return keys
