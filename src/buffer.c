/*
 * buffer.c: growable byte buffers owned by C.
 *
 * A Lua error may be raised halfway through encoding (a bad field is only
 * found when reached), so a buffer that Lua code can abandon lives inside
 * a userdata whose __gc frees it.
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

int buf_reserve(acq_buf_t *b, size_t extra) {
    size_t need, cap;
    char *p;
    if (extra <= b->cap - b->len) return 1;
    if (extra > ((size_t)-1) / 2 - b->len) return 0;
    need = b->len + extra;
    cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL) return 0;
    b->p = p;
    b->cap = cap;
    return 1;
}

void buf_free(acq_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void buf_lreserve(lua_State *L, acq_buf_t *b, size_t extra) {
    if (!buf_reserve(b, extra)) luaL_error(L, "not enough memory");
}

static int buf_l_gc(lua_State *L) {
    buf_free((acq_buf_t *)luaL_checkudata(L, 1, ACQ_MT_BUFFER));
    return 0;
}

acq_buf_t *buf_push(lua_State *L) {
    acq_buf_t *b = (acq_buf_t *)acq_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    acq_setmetatable(L, ACQ_MT_BUFFER);
    return b;
}

void buf_open(lua_State *L) {
    if (luaL_newmetatable(L, ACQ_MT_BUFFER)) {
        lua_pushcfunction(L, buf_l_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}
