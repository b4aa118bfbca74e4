/*
 * lua-acquire: create cases in Acquire's CRM from Lua.
 *
 * This file is the table of contents: the module's functions, the
 * Client's methods and metamethods, and the opening of each area.
 *
 *   src/config.c     the options of acquire.new: one table of them
 *   src/proxy.c      the proxy: the option or the environment, NO_PROXY, its mode
 *   src/url.c        the one URL and host:port parser
 *   src/request.c    contactId + opts -> url, headers, body
 *   src/transport.c  libcurl easy handle: bytes out, bytes in
 *   src/response.c   status, headers, body -> res | nil, err (lua-cjson)
 *   src/policy.c     retry or give up
 *   src/error.c      the err table
 *   src/reconcile.c  reading cases back: the list's URL, matching what was sent
 *   src/redact.c     the key out of errors and logs, raw or JSON-escaped
 *   src/call.c       the call engine: attempts, retries, reconcile, the log's
 *                    and errors' words; no I/O (SEND, WAIT, DONE); acquire.engine
 *   src/engine.c     the engine's Lua face (acquire.engine, call:next), for Lua drivers
 *   src/client.c     acquire.Client: the blocking driver of the engine
 *   src/batch.c      create_cases: many at once on a curl multi handle
 *   src/pending.c    start_case: a pending call, pollable (pollfd, events, timeout, step)
 *   src/group.c      client:group(): many pending calls on one multi handle and descriptor
 *   src/buffer.c     C-owned byte buffers
 *   src/journal.c    the journal's file: exclusive create, lock, whole appends
 *   src/jrecord.c    the journal's records (formatted, parsed) and digests
 *   src/jsync.c      the journal's syncs and its flushing thread
 *   src/compat.h     Lua 5.1-5.4 / LuaJIT differences
 */
#include "src/pending.h"
#include "src/journal.h"

#if defined(__GNUC__)
#define ACQ_EXPORT __attribute__((visibility("default")))
#else
#define ACQ_EXPORT
#endif

static const luaL_Reg module_functions[] = {
    { "new", client_l_new },
    { "configure", client_l_configure },
    { "env", client_l_env },
    { "config", config_l_config },
    { "create_case", client_l_default_create_case },
    { "create_cases", batch_l_default_create_cases },
    { "fields", response_l_fields },
    { "build_request", request_l_build },
    { "request_fields", request_l_fields },
    { "decode_response", response_l_decode },
    { "retry_after", policy_l_retry_after },
    { "proxy_answered", policy_l_proxy_answered },
    { "redact", redact_l_redact },
    { "encode", json_l_encode },
    { "find_cases", client_l_default_find_cases },
    { "build_list_request", reconcile_l_build },
    { "match_cases", reconcile_l_match },
    { "sent_filter", reconcile_l_filter },
    { "settle", reconcile_l_settle },
    { "claims", reconcile_l_claims },
    { "claim", reconcile_l_claim },
    { "engine", engine_l_new },                  /* for drivers written in Lua */
    { "_journal_open", journal_l_open },          /* for acquire.journal only */
    { NULL, NULL }
};

static const luaL_Reg client_methods[] = {
    { "create_case", client_l_create_case },
    { "create_cases", batch_l_create_cases },
    { "find_cases", client_l_find_cases },
    { "start_case", pending_l_start_case },
    { "start_find", pending_l_start_find },
    { "group", group_l_new },
    { "close", client_l_close },
    { NULL, NULL }
};

static const luaL_Reg client_metamethods[] = {
    { "__gc", client_l_close },
#if LUA_VERSION_NUM >= 504
    { "__close", client_l_close },
#endif
    { "__tostring", client_l_tostring },
    { NULL, NULL }
};

static void client_open(lua_State *L) {
    luaL_newmetatable(L, ACQ_MT_CLIENT);
    acq_setfuncs(L, client_metamethods, 0);
    lua_createtable(L, 0, 2);
    acq_setfuncs(L, client_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, ACQ_MT_CLIENT);
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, ACQ_MT_CLIENT);                /* getmetatable(client): its type, locked */
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

ACQ_EXPORT int luaopen_acquire(lua_State *L);

ACQ_EXPORT int luaopen_acquire(lua_State *L) {
    /* curl_global_init counts its calls, once per state that loads the
       module (libcurl 7.84+ makes it thread-safe; older ones want it called
       before any thread starts, which a Lua host does when it loads us
       from its main thread). */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return luaL_error(L, "acquire: curl_global_init failed");
    buf_open(L);
    error_open(L);
    client_open(L);
    engine_open(L);
    pending_open(L);
    group_open(L);
    response_open(L);
    journal_open(L);
    lua_createtable(L, 0, 10);
    acq_setfuncs(L, module_functions, 0);
    response_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushliteral(L, ACQ_VERSION);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
