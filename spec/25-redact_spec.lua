-- acquire.redact, the routine behind err, the log and tostring(client): credentials where they
-- stand (a URL's userinfo, Authorization and Proxy-Authorization values, Bearer/Basic tokens)
-- whatever their length; each secret of 6 bytes or more wherever it appears, raw or JSON-escaped,
-- read from any byte; overlapping matches merged; work linear in the text. README: acquire.redact.
local acquire = require "acquire"
local helper = require "spec.helper"
local keys = require "spec.keys"

local SEED = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
local MIN, TAIL_MIN = 6, 4
local R = "[REDACTED]"
local unpack = table.unpack or unpack

-- ---- an oracle, written apart from the C: is secret readable in text? ----------------------
-- Raw, or in the JSON reading from any byte (keys.unescape is a JSON reader), quadratic but
-- plain: the property the C promises in linear time.
local function readable(text, secret)
  if text:find(secret, 1, true) then return true end
  local first = secret:sub(1, 1)
  for p = 1, #text do
    local c = text:sub(p, p)
    if c == "\\" or c == first then
      if keys.unescape(text:sub(p, p + 12 * #secret)):sub(1, #secret) == secret then return true end
    end
  end
  return false
end

-- ---- the generator's pieces -----------------------------------------------------------------
-- Secrets: every byte class an encoder treats apart; no '[' or ']', so that no secret can borrow
-- bytes from a "[REDACTED]" beside it.
local ALPHABET = { "a", "b", "z", "Q", "0", "7", "+", "=", "-", ":", "@", "/", "\\", "\\", '"', ".",
  " ", "u", "\195\169", "\226\130\172", "\240\159\152\128", "\0", "\1", "\8", "\12", "\10", "\13",
  "\9", "\31", "\127", "\200" }

local function secret(len)
  local t = {}
  for i = 1, len do t[i] = ALPHABET[math.random(#ALPHABET)] end
  return table.concat(t):sub(1, len)                          -- UTF-8 may be cut: bytes are bytes
end

-- s as a JSON encoder might write it, the form drawn per character: raw (never a backslash),
-- its short escape, \uXXXX in either case, a surrogate pair past the BMP.
local SHORT = { ["/"] = "\\/", ['"'] = '\\"', ["\\"] = "\\\\", ["\8"] = "\\b", ["\12"] = "\\f",
  ["\10"] = "\\n", ["\13"] = "\\r", ["\9"] = "\\t" }
local function encode(s)
  local out, i = {}, 1
  while i <= #s do
    local b = s:byte(i)
    local len = b < 0x80 and 1 or b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC2 and 2 or 1
    for k = i + 1, i + len - 1 do                             -- not UTF-8: one byte, passed on raw
      local c = s:byte(k)
      if not c or c < 0x80 or c > 0xBF then len = 1 end
    end
    local ch = s:sub(i, i + len - 1)
    local cp = len == 1 and b
      or len == 2 and (b - 0xC0) * 64 + ch:byte(2) - 0x80
      or len == 3 and (b - 0xE0) * 4096 + (ch:byte(2) - 0x80) * 64 + ch:byte(3) - 0x80
      or (b - 0xF0) * 262144 + (ch:byte(2) - 0x80) * 4096 + (ch:byte(3) - 0x80) * 64 + ch:byte(4) - 0x80
    if len == 1 and b >= 0x80 then
      out[#out + 1] = ch
    else
      local hex = math.random() < 0.5 and "%04x" or "%04X"
      local r = math.random(3)
      if r == 1 and ch ~= "\\" then
        out[#out + 1] = ch
      elseif r == 2 and SHORT[ch] then
        out[#out + 1] = SHORT[ch]
      elseif cp >= 0x10000 then
        local v = cp - 0x10000
        out[#out + 1] = ("\\u" .. hex .. "\\u" .. hex):format(0xD800 + math.floor(v / 1024), 0xDC00 + v % 1024)
      else
        out[#out + 1] = ("\\u" .. hex):format(cp)
      end
    end
    i = i + len
  end
  return table.concat(out)
end

-- Text around: words, punctuation, stray backslashes and escapes; never "://", "authorization",
-- "Bearer " or "Basic ", so whatever the redactor takes out of it is a secret's.
local FILL = { "the ", "proxy ", "error", ", ", ". ", "\\", "\\\\", "\\u00", "\\n", '"', "{", "}", ":",
  "x", "p", "u", "@", "é", " \\/ ", "\\u0041", "\n" }
local function filler(shorts)
  local t = {}
  for _ = 1, math.random(0, 5) do
    t[#t + 1] = (#shorts > 0 and math.random() < 0.3) and shorts[math.random(#shorts)] or FILL[math.random(#FILL)]
  end
  return table.concat(t)
end

local function pct(s)                                          -- a URL's userinfo, encoded
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local T68 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
local function token68(len)
  local t = {}
  for i = 1, len do local k = math.random(#T68); t[i] = T68:sub(k, k) end
  return table.concat(t)
end

local function b64(s)
  local t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      out[#out + 1] = t:sub(v + 1, v + 1)
    end
    if not b then out[#out - 1], out[#out] = "=", "="
    elseif not c then out[#out] = "=" end
  end
  return table.concat(out)
end

describe("acquire.redact", function()
  describe("the findings, as rows", function()
    it("a short proxy password is redacted where it stands only: errors stay readable", function()
      local port = helper.free_port()
      local c = acquire.new{ base_url = "http://127.0.0.1:1", api_key = "k", max_retries = 0,
                             proxy = ("http://u:p@127.0.0.1:%d"):format(port) }
      local _, err = c:create_case(597752, { title = "x" })
      c:close()
      assert.equal("proxy", err.kind)
      helper.contains(err.message, ("proxy http://[REDACTED]@127.0.0.1:%d: could not connect (Failed to connect to 127.0.0.1 port %d")
        :format(port, port))
      local secrets = acquire.config{ base_url = "http://x", api_key = "k", proxy = "http://u:p@127.0.0.1:3128" }.secrets
      assert.equal("acquire: proxy: proxy http://[REDACTED]@127.0.0.1:3128: answered CONNECT with 407",
        acquire.redact("acquire: proxy: proxy http://u:p@127.0.0.1:3128: answered CONNECT with 407", unpack(secrets)))
      assert.equal("Proxy-Authorization: Basic [REDACTED]\r\nAuthorization: Bearer [REDACTED]\r\nHost: x",
        acquire.redact("Proxy-Authorization: Basic dTpw\r\nAuthorization: Bearer k\r\nHost: x", unpack(secrets)))
      assert.equal("keep the p, k and u:p of a sentence",
        acquire.redact("keep the p, k and u:p of a sentence", unpack(secrets)))
    end)

    it("overlapping and adjacent secrets leave no tail", function()
      assert.equal(R, acquire.redact("user:hunter2", "user:hun", "hunter2"))
      assert.equal(R, acquire.redact("user:hunter2", "hunter2", "user:hun"))
      assert.equal("<" .. R .. ">", acquire.redact("<user:hunter2>", "user:hun", "hunter2"))
      assert.equal("<" .. R .. ">", acquire.redact("<hunter2user:hun>", "user:hun", "hunter2"))   -- adjacent
      assert.equal("a" .. R .. "b", acquire.redact("aababab-ab-abb", "ababab", "ab-ab-ab"))
      assert.equal(R .. " and " .. R, acquire.redact("user:hunt\\u0065r2 and user:hunter2", "user:hun", "hunter2"))
    end)

    it("a secret of many backslashes is redacted in every form (9 to 40 of them)", function()
      for _, n in ipairs{ 8, 9, 12, 24, 40 } do
        local s = ("\\"):rep(n) .. "key"
        for _, form in ipairs{ s, (s:gsub("\\", "\\\\")), (s:gsub("\\", "\\u005c")), (s:gsub("\\", "\\u005C")),
                               (s:gsub("\\", function() return math.random() < 0.5 and "\\\\" or "\\u005c" end)) } do
          assert.equal('{"echo":"' .. R .. '"}', acquire.redact('{"echo":"' .. form .. '"}', s),
            ("%d backslashes as %q"):format(n, form))
        end
      end
    end)

    it("a stray backslash before an escaped secret hides nothing", function()
      assert.equal(R .. "!", acquire.redact("\\\\u0041BCDEF!", "ABCDEF"))
      assert.equal("x" .. R, acquire.redact("x\\u004" .. "1BCDEF", "1BCDEF"))
    end)

    it("a secret cut short by the end of the text, from 4 bytes on", function()
      assert.equal("body " .. R, acquire.redact("body secr", "secret-key"))
      assert.equal("body " .. R, acquire.redact("body s\\u0065cr", "secret-key"))
      assert.equal("body " .. R, acquire.redact("body secr\\u00", "secret-key"))
      assert.equal("body sec", acquire.redact("body sec", "secret-key"))
      -- after a long text: escapes and backslash runs of either parity before the cut
      for _, head in ipairs{ ("x"):rep(5000), ("\\u0041"):rep(900), ("\\"):rep(2000), ("x"):rep(999) .. ("\\"):rep(2) } do
        assert.equal(head .. R, acquire.redact(head .. "s\\u0065cr", "secret-key"), #head)
        assert.equal(head .. R, acquire.redact(head .. "secr\\u00", "secret-key"), #head)
      end
      local odd = ("\\"):rep(2001) .. "u0073ecr"                  -- 1000 "\\" then \u0073: "s"
      assert.equal(("\\"):rep(2000) .. R, acquire.redact(odd, "secret-key"))
    end)
  end)

  describe("where credentials stand", function()
    it("a URL's userinfo, raw or escaped; the rest of the URL kept", function()
      local cases = {
        { "see http://u:p@h:1/x", "see http://" .. R .. "@h:1/x" },
        { "https://tok@host", "https://" .. R .. "@host" },
        { "http://a:b@c@[::1]:8080?q=1#f", "http://" .. R .. "@[::1]:8080?q=1#f" },
        { '{"u":"http:\\/\\/us:pw@h\\/p"}', '{"u":"http:\\/\\/' .. R .. '@h\\/p"}' },
        { "http://host/path@x and a@b.c and mailto:a@b", "http://host/path@x and a@b.c and mailto:a@b" },
        { "http://" .. R .. "@h", "http://" .. R .. "@h" },
      }
      for _, c in ipairs(cases) do assert.equal(c[2], acquire.redact(c[1], "unrelated-secret")) end
    end)

    it("Authorization values, headers and JSON, the scheme word kept", function()
      local cases = {
        { "> Authorization: Bearer abc\r\n> Host: h", "> Authorization: Bearer " .. R .. "\r\n> Host: h" },
        { "proxy-authorization:Basic dTpw\n", "proxy-authorization:Basic " .. R .. "\n" },
        { "Authorization: token123", "Authorization: " .. R },
        { '{"Authorization":"Bearer a","n":1}', '{"Authorization":"Bearer ' .. R .. '","n":1}' },
        { '{"raw":"Authorization: Bearer a\\r\\nX: 1"}', '{"raw":"Authorization: Bearer ' .. R .. '\\r\\nX: 1"}' },
        { "bad token Bearer a.b-c rejected", "bad token Bearer " .. R .. " rejected" },
        { "Basic auth is required", "Basic auth is required" },             -- "auth" holds no ':'
        { "no authorization header", "no authorization header" },
        { "Bearer ab\0cd and \0://u:p@h", "Bearer " .. R .. "\0cd and \0://u:p@h" },   -- NUL is no token, no scheme
      }
      for _, c in ipairs(cases) do assert.equal(c[2], acquire.redact(c[1], "unrelated-secret")) end
    end)
  end)

  it("applies when a secret is given: decode_response without one leaves the body as it came", function()
    local body = "via http://u:p@h\r\nAuthorization: Bearer x"
    assert.equal(body, (select(2, acquire.decode_response(401, nil, body))).body)
    assert.equal(body, (select(2, acquire.decode_response(401, nil, body, ""))).body)
    assert.equal("via http://" .. R .. "@h\r\nAuthorization: Bearer " .. R,
      (select(2, acquire.decode_response(401, nil, body, "unrelated-key"))).body)
  end)

  it("generated secrets, texts and encodings: nothing readable, the rest untouched (generator)", function()
    math.randomseed(SEED)
    for case = 1, 400 do
      local why = ("seed %d case %d"):format(SEED, case)
      local secrets = {}
      for i = 1, math.random(1, 4) do
        if i > 1 and math.random() < 0.3 then                    -- overlapping the one before
          local prev = secrets[i - 1]
          secrets[i] = prev:sub(math.random(1, #prev)) .. secret(math.random(0, 12))
        else
          secrets[i] = secret(math.random() < 0.3 and math.random(1, MIN - 1) or math.random(1, 40))
        end
      end
      local shorts, longs = {}, {}
      for _, s in ipairs(secrets) do
        if #s < MIN then shorts[#shorts + 1] = s else longs[#longs + 1] = s end
      end

      -- a text without any secret readable in it comes out as it went in, short secrets and all
      local plain = filler(shorts) .. filler(shorts) .. filler(shorts) .. "."
      local clean = not plain:find("://", 1, true) and not keys.unescape(plain):find("://", 1, true)
      for _, s in ipairs(longs) do
        if readable(plain, s) then clean = false end
        for k = TAIL_MIN, #s - 1 do                              -- a secret cut short at the end
          local head = s:sub(1, k)
          if plain:sub(-k) == head or keys.unescape(plain):sub(-k) == head then clean = false end
        end
      end
      if clean then assert.equal(plain, acquire.redact(plain, unpack(secrets)), why) end

      -- a text with them: raw, encoded, overlapping, adjacent, in URLs and Authorization values
      local parts, standing = {}, {}
      for _ = 1, math.random(1, 8) do
        parts[#parts + 1] = math.random() < 0.3 and "" or filler(shorts)         -- "": adjacent
        local s = secrets[math.random(#secrets)]
        local r = math.random(6)
        if r == 1 then
          parts[#parts + 1] = s
        elseif r == 2 then
          parts[#parts + 1] = encode(s)
        elseif r == 3 then                                       -- two secrets run together
          local t = secrets[math.random(#secrets)]
          parts[#parts + 1] = math.random() < 0.5 and s .. t or encode(s .. t)
        elseif r == 4 then                                       -- a URL's userinfo
          local ui = pct(s) .. ":" .. pct(secrets[math.random(#secrets)])
          local url = "http://" .. ui .. "@127.0.0.1:3128/"
          standing[#standing + 1] = { "://" .. ui .. "@" }
          parts[#parts + 1] = " " .. (math.random() < 0.5 and url or encode(url)) .. " "
        elseif r == 5 then                                       -- a Bearer value
          local v = s:match("^[%w%-%._~%+/]+=*$") and s or token68(math.random(1, 40))
          standing[#standing + 1] = { "Bearer " .. v }
          parts[#parts + 1] = math.random() < 0.5 and "\r\nAuthorization: Bearer " .. v .. "\r\n"
            or '{"Authorization":"Bearer ' .. v .. '"}'
        else                                                     -- a Basic value
          local v = b64(pct(s) .. ":" .. pct(secrets[math.random(#secrets)]))
          standing[#standing + 1] = { "Basic " .. v }
          parts[#parts + 1] = "\nProxy-Authorization: Basic " .. v .. "\n"
        end
      end
      local cut = math.random() < 0.2 and longs[1]
      if cut then parts[#parts + 1] = " " .. cut:sub(1, math.random(TAIL_MIN, #cut - 1)) end
      local text = table.concat(parts)
      local out = acquire.redact(text, unpack(secrets))
      for _, s in ipairs(longs) do
        assert(not readable(out, s), ("%s: secret %q readable in %q (from %q)"):format(why, s, out, text))
      end
      for _, st in ipairs(standing) do
        assert(not out:find(st[1], 1, true) and not keys.unescape(out):find(st[1], 1, true),
          ("%s: %q survives in %q (from %q)"):format(why, st[1], out, text))
      end
      if cut then assert(out:sub(-#R) == R, ("%s: a secret cut short survives in %q"):format(why, out)) end
    end
  end)

  it("linear work: 64 KiB and 1 MiB of backslash-heavy text, CPU time in proportion", function()
    local s = ("\\"):rep(40) .. "end"                            -- 40 backslashes: 2^40 readings, once
    local unit = ("\\"):rep(78) .. "x"        -- almost the secret as "\\"s: each one read raw or as an escape
    local function text(bytes)
      local t, n = {}, 0
      while n < bytes do
        local piece = math.random() < 0.01 and encode(s) or unit
        t[#t + 1] = piece
        n = n + #piece
      end
      return table.concat(t)
    end
    math.randomseed(SEED)
    local c0 = os.clock()                -- the finding's size: 24 of them, 256 bytes (4 s before the fix)
    acquire.redact((("\\"):rep(48) .. "x"):rep(6):sub(1, 256), ("\\"):rep(24) .. "end")
    assert(os.clock() - c0 < 1, ("seed %d: 256 bytes took %.3f s"):format(SEED, os.clock() - c0))
    local small, big = text(64 * 1024), text(1024 * 1024)
    local function cpu(t, times)
      local start = os.clock()
      for _ = 1, times do acquire.redact(t, s, "\\u005c\\u005c\\u005c", ("\\"):rep(24)) end
      return os.clock() - start
    end
    cpu(small, 1)                                                -- warm
    local t_small = cpu(small, 16)                               -- 1 MiB of work in 64 KiB pieces
    local t_big = cpu(big, 1)
    -- linear: both did the same bytes of work; a wide margin for a shared 2-core machine
    assert(t_big < 4 * t_small + 0.5, ("seed %d: 16 x 64 KiB took %.3f s, 1 MiB %.3f s"):format(SEED, t_small, t_big))
    assert(t_big < 10, ("seed %d: 1 MiB took %.3f s of CPU"):format(SEED, t_big))
    assert(not readable(acquire.redact(small, s):sub(1, 4096), s), "seed " .. SEED)
  end)
end)
