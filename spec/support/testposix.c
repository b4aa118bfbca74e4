/*
 * testposix.c: fork(), waitpid() and _exit() for the specs, on every Lua
 * the suite runs (Debian's lua-posix has no 5.4 build). Test code only:
 * built into .tmp/, never installed, never part of acquire.so.
 */
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <lua.h>
#include <lauxlib.h>

static int l_fork(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)fork());
    return 1;
}

/* waitpid(pid) -> exit status, or 128 + signal */
static int l_waitpid(lua_State *L) {
    int status = 0;
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    if (waitpid(pid, &status, 0) != pid) return luaL_error(L, "waitpid failed");
    lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 1;
}

static int l_exit(lua_State *L) {          /* no atexit, no lua_close */
    _exit((int)luaL_optinteger(L, 1, 0));
    return 0;
}

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

int luaopen_testposix(lua_State *L);
int luaopen_testposix(lua_State *L) {
    lua_newtable(L);
    lua_pushcfunction(L, l_fork);   lua_setfield(L, -2, "fork");
    lua_pushcfunction(L, l_waitpid); lua_setfield(L, -2, "waitpid");
    lua_pushcfunction(L, l_exit);   lua_setfield(L, -2, "_exit");
    lua_pushcfunction(L, l_getpid); lua_setfield(L, -2, "getpid");
    return 1;
}
