/*
 * fuzz_config: acquire.config{...} and acquire.new{...} on fuzzed base_url,
 * account_id, proxy (the option, or http_proxy / https_proxy / ALL_PROXY in
 * the environment, set per input), NO_PROXY / no_proxy and the contents of
 * ca_file (written to a temp regular file each input).
 *
 * The input: byte 1 is flags, then three fields, each a length byte and
 * that many bytes (base_url, proxy, NO_PROXY), then the rest: ca_file's
 * contents.
 *   flags & 3        0 base_url = field, 1 "https://" .. field,
 *                    2 "http://[" .. field .. "]:8080", 3 account_id = field
 *   flags >> 2 & 3   0 proxy = false, 1 proxy = field (0x80: "http://" ..
 *                    field), 2 the environment (0x80: ALL_PROXY, else both
 *                    http_proxy and https_proxy) = field, 3 none anywhere
 *   0x10             the exemptions in no_proxy, else NO_PROXY
 *   0x20             ca_file given
 *   0x40             acquire.new too (and client:close())
 * An error is fine (a string, without the key); a
 * crash, hang or UB is a finding. When config returns: base_url, host, port
 * and the proxy's url/port are well formed, secrets[1] is the key, the
 * proxy's decoded credentials (its Basic authorization) hold no NUL, and
 * acquire.new accepts exactly what acquire.config accepts.
 * With H.strict (FUZZ_STRICT=1; issue 22's finding 2, not fixed yet): no
 * NUL in base_url or host, and proxy.url is "http://" .. its host .. ":"
 * .. its port (a NUL in the host cuts it short today).
 */
#include "harness.h"

/* H.setenv(name, value | nil) */
static int fuzz_setenv(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    if (lua_isnoneornil(L, 2)) unsetenv(name);
    else setenv(name, luaL_checkstring(L, 2), 1);
    return 0;
}

static const luaL_Reg extra[] = {
    { "setenv", fuzz_setenv },
    { NULL, NULL }
};

static const char checker[] =
    "local acquire, H = ...\n"
    "local KEY = 'fuzz-secret-key-config-4711'\n"
    "local VARS = { 'http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY',\n"
    "  'no_proxy', 'NO_PROXY' }\n"
    "local path = os.tmpname()\n"
    "local cleanup = setmetatable({}, { __gc = function() os.remove(path) end })\n"
    "local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'\n"
    "local function unbase64(s)\n"
    "  local out, bits, n = {}, 0, 0\n"
    "  for c in s:gmatch('[^=]') do\n"
    "    local v = B64:find(c, 1, true)\n"
    "    assert(v, 'not base64: ' .. string.format('%q', s))\n"
    "    bits, n = bits * 64 + v - 1, n + 6\n"
    "    if n >= 8 then n = n - 8; out[#out + 1] = string.char(bits >> n & 255); bits = bits & ((1 << n) - 1) end\n"
    "  end\n"
    "  return table.concat(out)\n"
    "end\n"
    "local function q(s) return string.format('%q', tostring(s):sub(1, 200)) end\n"
    "local function port_ok(p) return math.type(p) == 'integer' and p >= 1 and p <= 65535 end\n"
    "\n"
    "return function(s)\n"
    "  local _ = cleanup\n"
    "  local pos = 2\n"
    "  local function field()\n"
    "    local n = s:byte(pos) or 0\n"
    "    local f = s:sub(pos + 1, pos + n)\n"
    "    pos = pos + 1 + n\n"
    "    return f\n"
    "  end\n"
    "  local flags = s:byte(1) or 0\n"
    "  local base, proxy, exempt = field(), field(), field()\n"
    "  local ca = s:sub(pos)\n"
    "  for _, v in ipairs(VARS) do H.setenv(v, nil) end\n"
    "  local t = { api_key = KEY, timeout = 1 }\n"
    "  local bm = flags & 3\n"
    "  if bm == 0 then t.base_url = base\n"
    "  elseif bm == 1 then t.base_url = 'https://' .. base\n"
    "  elseif bm == 2 then t.base_url = 'http://[' .. base .. ']:8080'\n"
    "  else t.account_id = base end\n"
    "  local pm = flags >> 2 & 3\n"
    "  if pm == 0 then t.proxy = false\n"
    "  elseif pm == 1 then t.proxy = (flags & 0x80 ~= 0 and 'http://' or '') .. proxy\n"
    "  elseif pm == 2 then\n"
    "    if flags & 0x80 ~= 0 then H.setenv('ALL_PROXY', proxy)\n"
    "    else H.setenv('http_proxy', proxy); H.setenv('https_proxy', proxy) end\n"
    "  end\n"
    "  H.setenv(flags & 0x10 ~= 0 and 'no_proxy' or 'NO_PROXY', exempt)\n"
    "  if flags & 0x20 ~= 0 then\n"
    "    local f = assert(io.open(path, 'wb'))\n"
    "    f:write(ca)\n"
    "    f:close()\n"
    "    t.ca_file = path\n"
    "  end\n"
    "  local userinfo = proxy:match('^[^@]*://([^@/]*)@') or proxy:match('^([^@/]*)@')\n"
    "\n"
    "  local ok, c = pcall(acquire.config, t)\n"
    "  if not ok then\n"
    "    assert(type(c) == 'string', 'config raised a non-string: ' .. q(c))\n"
    "    assert(not c:find(KEY, 1, true), 'the key is in the error: ' .. q(c))\n"
    "  else\n"
    "    assert(type(c) == 'table', 'config returned no table')\n"
    "    assert(type(c.base_url) == 'string' and c.base_url:match('^https?://'), 'base_url ' .. q(c.base_url))\n"
    "    assert(type(c.host) == 'string' and #c.host > 0, 'host ' .. q(c.host))\n"
    "    assert(port_ok(c.port), 'port ' .. q(c.port))\n"
    "    assert(c.secrets[1] == KEY, 'secrets[1] is not the key')\n"
    "    if H.strict then\n"
    "      assert(not c.base_url:find('\\0', 1, true) and not c.host:find('\\0', 1, true),\n"
    "             'a NUL in base_url ' .. q(c.base_url))\n"
    "    end\n"
    "    if c.proxy then\n"
    "      local p = c.proxy\n"
    "      assert(type(p.url) == 'string' and p.url:match('^http://') and not p.url:find('@', 1, true),\n"
    "             'proxy.url ' .. q(p.url))\n"
    "      assert(port_ok(p.port), 'proxy.port ' .. q(p.port))\n"
    "      assert(type(p.display) == 'string' and not p.display:find(KEY, 1, true), 'proxy.display')\n"
    "      if H.strict then\n"
    "        local h, digits = p.url:match('^http://(.*):(%d+)$')\n"
    "        assert(h == p.host and tonumber(digits) == p.port and not h:find('\\0', 1, true),\n"
    "               'proxy.url ' .. q(p.url) .. ' is not its host and port')\n"
    "      end\n"
    "      if p.authorization then\n"
    "        local b = p.authorization:match('^Basic (.*)$')\n"
    "        assert(b, 'proxy.authorization ' .. q(p.authorization))\n"
    "        local pair = unbase64(b)\n"
    "        assert(pair:find(':', 1, true), 'the credentials have no colon: ' .. q(pair))\n"
    "        assert(not pair:find('\\0', 1, true), 'a NUL in the decoded proxy credentials: ' .. q(pair))\n"
    "        if userinfo and #userinfo >= 6 then\n"
    "          -- (the host, shown, may hold the same bytes: it is left out of the search)\n"
    "          local d = p.display\n"
    "          if type(p.host) == 'string' and #p.host > 0 then\n"
    "            local i, j = d:find(p.host, 1, true)\n"
    "            if i then d = d:sub(1, i - 1) .. d:sub(j + 1) end\n"
    "          end\n"
    "          assert(not d:find(userinfo, 1, true), 'the userinfo is in proxy.display: ' .. q(p.display))\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if flags & 0x40 ~= 0 then\n"
    "    local ok2, client = pcall(acquire.new, t)\n"
    "    assert(ok2 == ok, 'acquire.new ' .. (ok2 and 'accepted' or 'refused') .. ' what acquire.config '\n"
    "           .. (ok and 'accepted' or 'refused') .. ': ' .. q(ok2 and '' or client))\n"
    "    if ok2 then\n"
    "      local line = tostring(client)\n"
    "      assert(type(line) == 'string' and not line:find(KEY, 1, true), 'tostring(client) ' .. q(line))\n"
    "      client:close()\n"
    "    end\n"
    "  end\n"
    "end\n";

FUZZ_HARNESS("fuzz_config", checker, extra)
