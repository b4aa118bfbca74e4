/* Response decoding, bytes in: acquire.decode_response must never raise,
   whatever the status, Retry-After and body; err tables must print on one
   line; acquire.fields must take any decoded contact. */
#include <stdint.h>
#include "harness.h"

static const char checker[] =
    "local acquire = ...\n"
    "return function(status, ra, body)\n"
    "  local res, err = acquire.decode_response(status, { ['Retry-After'] = ra }, body)\n"
    "  if res then\n"
    "    assert(type(res) == 'table')\n"
    "    if type(res.data) == 'table' and type(res.data.contact) == 'table' then\n"
    "      assert(type(acquire.fields(res.data.contact)) == 'table')\n"
    "    end\n"
    "  else\n"
    "    assert(type(err) == 'table' and (err.kind == 'http' or err.kind == 'decode'))\n"
    "    local s = tostring(err)\n"
    "    assert(not s:find('\\n'), 'tostring(err) spans lines')\n"
    "    assert(#(err.body or '') <= 4096)\n"
    "  end\n"
    "end\n";

static const int statuses[] = { 200, 201, 204, 299, 302, 400, 401, 403, 404, 429, 500, 502, 503 };

FUZZ_INITIALIZE(checker)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char ra[40];
    if (size < 2) return 0;
    fuzz_push_checker();
    lua_pushinteger(fuzz_L, statuses[data[0] % (sizeof statuses / sizeof statuses[0])]);
    if (data[1] < 100) snprintf(ra, sizeof ra, "%u", data[1]);
    else if (data[1] < 200) snprintf(ra, sizeof ra, "Sun, %02u Nov 2094 08:49:37 GMT", data[1] % 31 + 1);
    else snprintf(ra, sizeof ra, "%c%c garbage", data[1], data[0]);
    lua_pushstring(fuzz_L, ra);
    lua_pushlstring(fuzz_L, (const char *)data + 2, size - 2);
    fuzz_call(3);
    return 0;
}
