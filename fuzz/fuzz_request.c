/* Request encoding, fuzzed Lua tables in: the bytes drive a small generator
   of opts tables (any key, any value type: invalid UTF-8, NUL, NaN,
   infinities, null, nested, sparse and cyclic tables) and contact ids.
   acquire.build_request may raise (misuse); when it does not, its body must
   be a JSON object lua-cjson can read and its URL must be the API's. */
#include <stdint.h>
#include "harness.h"

static const char checker[] =
    "local acquire = ...\n"
    "local cjson = require 'cjson'\n"
    "local KEYS = { 'title', 'source', 'mentionUsers', 'message', 'channel', 'routeAgentId',\n"
    "  'agentId', 'isFromCobrowse', 'fields', 'threadId', 'sessionId', 'extra', 'x' }\n"
    "local IDS = { 597752, '597752', '12a', 0, -1, 1.5, 2^53, '9223372036854775807', '99999999999999999999', {} }\n"
    "return function(s)\n"
    "  local pos = 0\n"
    "  local function byte() pos = pos + 1; return s:byte(pos) or 0 end\n"
    "  local function str() local t = {}; for i = 1, byte() % 12 do t[i] = string.char(byte()) end; return table.concat(t) end\n"
    "  local function value(depth)\n"
    "    local k = byte() % 12\n"
    "    if k == 0 then return str()\n"
    "    elseif k == 1 then return byte() * 256 + byte() - 1000\n"
    "    elseif k == 2 then return (byte() - 128) / 7\n"
    "    elseif k == 3 then return byte() % 2 == 0\n"
    "    elseif k == 4 then return acquire.null\n"
    "    elseif k == 5 then return 0 / 0\n"
    "    elseif k == 6 then return -math.huge\n"
    "    elseif k == 7 and depth < 5 then local t = {}; for i = 1, byte() % 4 do t[i] = value(depth + 1) end; return t\n"
    "    elseif k == 8 and depth < 5 then local t = {}; for _ = 1, byte() % 4 do t[str()] = value(depth + 1) end; return t\n"
    "    elseif k == 9 and depth < 5 then local t = {}; t[byte() % 5 + 1] = value(depth + 1); return t\n"
    "    elseif k == 10 then local t = {}; t.self = t; return t\n"
    "    else return math.maxinteger - byte() end\n"
    "  end\n"
    "  local opts = {}\n"
    "  for _ = 1, byte() % 8 do opts[KEYS[byte() % #KEYS + 1]] = value(0) end\n"
    "  local cfg = { account_id = 'x', api_key = 'k', strict = byte() % 2 == 0 }\n"
    "  local ok, req = pcall(acquire.build_request, IDS[byte() % #IDS + 1], opts, cfg)\n"
    "  if ok then\n"
    "    assert(req.body:sub(1, 1) == '{', req.body)\n"
    "    local good, doc = pcall(cjson.decode, req.body)\n"
    "    assert(good and type(doc) == 'table', 'not JSON: ' .. req.body)\n"
    "    assert(req.url:find('^https://x%.acquire%.io/api/v1/crm/messenger/chat/create%?contactId=%d+$'), req.url)\n"
    "  else\n"
    "    assert(type(req) == 'string', 'raised a non-string')\n"
    "  end\n"
    "end\n";

FUZZ_INITIALIZE(checker)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_push_checker();
    lua_pushlstring(fuzz_L, (const char *)data, size);
    fuzz_call(1);
    return 0;
}
