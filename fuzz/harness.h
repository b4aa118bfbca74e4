/*
 * harness.h: what the two libFuzzer harnesses share.
 *
 * Each harness is a Lua chunk (the checker) and this file: one Lua 5.4
 * state, made once in LLVMFuzzerInitialize, with the standard libraries, the
 * module (compiled into the harness, opened with luaL_requiref) and Debian's
 * lua-cjson (which the module itself requires). The chunk is called with the
 * module and a table, H: H.strict (FUZZ_STRICT=1 in the environment: the
 * checks of known findings not fixed yet are on too) and the harness's own C
 * functions, if it has any (a luaL_Reg list). It returns a function; every
 * input is passed to that function as one Lua string. Whatever the function
 * raises is a finding: the harness prints it with a traceback and aborts, so
 * libFuzzer saves the input.
 *
 * Leaks: the state keeps garbage between inputs, so libFuzzer's check after
 * every input (-detect_leaks=1) would run on most of them and slow the
 * start of a run to a crawl; make fuzz passes -detect_leaks=0 and keeps
 * LeakSanitizer's check at exit (ASAN_OPTIONS=detect_leaks=1). The state is
 * closed at exit (atexit, registered after LeakSanitizer's, so it runs
 * first): what is still allocated then is a real leak.
 *
 * The state lives for the whole run (millions of inputs), so every
 * FUZZ_GC_EVERY inputs a full collection runs, and what is still alive after
 * it must stay under FUZZ_MAX_LIVE_KB: anything the module keeps per call (a
 * registry entry never released, say) shows up as a finding, not as a slow
 * climb to the RSS limit.
 */
#ifndef ACQUIRE_FUZZ_HARNESS_H
#define ACQUIRE_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define FUZZ_GC_EVERY     1024
#define FUZZ_MAX_LIVE_KB  (32 * 1024)

int luaopen_acquire(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *fuzz_L;
static int fuzz_checker = LUA_NOREF;     /* registry ref to the function */
static unsigned long fuzz_runs;

static int fuzz_traceback(lua_State *L) {
    luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

static void fuzz_fail(const char *what) {
    fprintf(stderr, "\n== fuzz finding: %s\n%s\n\n", what,
            fuzz_L && lua_gettop(fuzz_L) > 0 && lua_isstring(fuzz_L, -1)
                ? lua_tostring(fuzz_L, -1) : "");
    abort();
}

/* At exit: the state closed (every __gc run: clients, temp files), so that
   LeakSanitizer's check finds only what nothing frees. */
static void fuzz_close(void) {
    if (fuzz_L) lua_close(fuzz_L);
    fuzz_L = NULL;
}

static void fuzz_setup(const char *name, const char *chunk, const luaL_Reg *extra) {
    const char *strict = getenv("FUZZ_STRICT");
    lua_State *L = fuzz_L = luaL_newstate();
    if (L == NULL) fuzz_fail("luaL_newstate failed");
    luaL_openlibs(L);
    lua_pushcfunction(L, fuzz_traceback);                     /* 1 */
    if (luaL_loadbuffer(L, chunk, strlen(chunk), name) != LUA_OK) /* 2 */
        fuzz_fail("the checker does not compile");
    luaL_requiref(L, "acquire", luaopen_acquire, 0);          /* 3 */
    lua_newtable(L);                                          /* 4: H */
    lua_pushboolean(L, strict != NULL && strcmp(strict, "1") == 0);
    lua_setfield(L, -2, "strict");
    if (extra) luaL_setfuncs(L, extra, 0);
    if (lua_pcall(L, 2, 1, 1) != LUA_OK) fuzz_fail("the checker did not load");
    if (!lua_isfunction(L, -1)) fuzz_fail("the checker returned no function");
    fuzz_checker = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    atexit(fuzz_close);
}

static void fuzz_one(const uint8_t *data, size_t size) {
    lua_State *L = fuzz_L;
    lua_pushcfunction(L, fuzz_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_checker);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK) fuzz_fail("the checker raised");
    lua_settop(L, 0);
    if (++fuzz_runs % FUZZ_GC_EVERY == 0) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        if (lua_gc(L, LUA_GCCOUNT, 0) > FUZZ_MAX_LIVE_KB) {
            lua_pushfstring(L, "%d KB still alive after a full collection",
                            lua_gc(L, LUA_GCCOUNT, 0));
            fuzz_fail("Lua memory keeps growing");
        }
    }
}

/* Defines libFuzzer's two entry points for the checker chunk `chunk`;
   extra (a luaL_Reg list, or NULL): C functions put in H. */
#define FUZZ_HARNESS(name, chunk, extra)                                 \
    int LLVMFuzzerInitialize(int *argc, char ***argv) {                 \
        (void)argc; (void)argv;                                         \
        fuzz_setup("=" name, chunk, extra);                             \
        return 0;                                                       \
    }                                                                   \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {      \
        fuzz_one(data, size);                                           \
        return 0;                                                       \
    }

#endif
