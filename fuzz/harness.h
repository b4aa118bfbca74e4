/* libFuzzer harness plumbing: one Lua 5.4 state with the module and a
   checker function (a Lua chunk) that the harness calls per input; a Lua
   error from the checker is a finding (abort). */
#ifndef ACQUIRE_FUZZ_HARNESS_H
#define ACQUIRE_FUZZ_HARNESS_H
#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_acquire(lua_State *L);

static lua_State *fuzz_L;
static int fuzz_checker;                /* registry ref */
static unsigned long fuzz_runs;

static void fuzz_setup(const char *chunk) {
    fuzz_L = luaL_newstate();
    luaL_openlibs(fuzz_L);
    luaL_requiref(fuzz_L, "acquire", luaopen_acquire, 0);
    if (luaL_loadstring(fuzz_L, chunk) != 0) {
        fprintf(stderr, "%s\n", lua_tostring(fuzz_L, -1));
        abort();
    }
    lua_insert(fuzz_L, -2);                       /* chunk(acquire) */
    if (lua_pcall(fuzz_L, 1, 1, 0) != 0) {
        fprintf(stderr, "%s\n", lua_tostring(fuzz_L, -1));
        abort();
    }
    fuzz_checker = luaL_ref(fuzz_L, LUA_REGISTRYINDEX);
}

/* Calls the checker with the n values the caller pushed after it. */
static void fuzz_call(int n) {
    if (lua_pcall(fuzz_L, n, 0, 0) != 0) {
        fprintf(stderr, "finding: %s\n", lua_tostring(fuzz_L, -1));
        abort();
    }
    if (++fuzz_runs % 1000 == 0) lua_gc(fuzz_L, LUA_GCCOLLECT, 0);
}

/* libFuzzer's initializer: the state and the checker chunk, once. */
#define FUZZ_INITIALIZE(chunk) \
    int LLVMFuzzerInitialize(int *argc, char ***argv); \
    int LLVMFuzzerInitialize(int *argc, char ***argv) { \
        (void)argc; (void)argv; \
        fuzz_setup(chunk); \
        return 0; \
    }

static void fuzz_push_checker(void) {
    lua_rawgeti(fuzz_L, LUA_REGISTRYINDEX, fuzz_checker);
}
#endif
