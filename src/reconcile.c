/*
 * reconcile.c: reading cases back, to turn "maybe created" into an answer.
 *
 * Acquire documents a case list on the same host and key
 * (GET /api/v1/crm/objects/case, spec/fixtures/api/case-list.md) but not
 * how an array parameter is written, nor paging, nor the list's order. So
 * the list is asked for one condition only, `where=contactId|eq|N` (one
 * value: no array question), `limit=100` and `page=0, 1, …`, and every
 * other criterion is checked here, on the cases that come back: created no
 * earlier than a time (less ACQ_RECONCILE_SKEW for clocks that disagree),
 * the title and the description that were sent. A lookup may miss a case
 * (lag, paging the server reads differently): the module concludes
 * "created" from what it finds, never "not created" from what it does not.
 * Nothing here touches the network.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "core.h"

size_t reconcile_list_url(const acq_config_t *cfg, long long contact, int page, char *out) {
    size_t n = cfg->base_len;
    memcpy(out, cfg->base_url, n);
    return n + (size_t)snprintf(out + n, ACQ_LIST_URL_MAX - n,
                                ACQ_LIST_PATH "?where=contactId%%7Ceq%%7C%lld&limit=%d&page=%d",
                                contact, ACQ_LIST_LIMIT, page);
}

/* "2020-08-11T07:25:59.000Z" (milliseconds optional) -> seconds since the
   epoch; -1 if it is not that. */
static double parse_iso(const char *s) {
    int y, mo, d, h, mi, sec, used = 0;
    long era, yoe, doy, doe, days;
    double frac = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &used) != 6)
        return -1;
    s += used;
    if (*s == '.') {
        double scale = 0.1;
        for (s++; *s >= '0' && *s <= '9'; s++, scale /= 10) frac += (*s - '0') * scale;
    }
    if (strcmp(s, "Z") != 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    y -= mo <= 2;                                   /* days from civil, as response.c */
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    days = era * 146097 + doe - 719468;
    return (double)days * 86400.0 + h * 3600.0 + mi * 60.0 + sec + frac;
}

/* filter = { since = seconds, title = s | acquire.null, description = s | acquire.null }
   at idx (none or nil: everything). Raises on misuse. */
void reconcile_check_filter(lua_State *L, int idx, acq_filter_t *f) {
    memset(f, 0, sizeof *f);
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    idx = acq_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (acq_equals(L, -2, "since")) {
            lua_Number v = lua_tonumber(L, -1);
            if (lua_type(L, -1) != LUA_TNUMBER || !(v - v == 0))
                luaL_error(L, "bad filter 'since' (seconds since the epoch expected, got %s)",
                           acq_typename(L, -1));
            f->since = (double)v;
            f->has_since = 1;
        } else if (acq_equals(L, -2, "title") || acq_equals(L, -2, "description")) {
            int title = acq_equals(L, -2, "title");
            if (lua_type(L, -1) != LUA_TSTRING && !acq_isnull(L, -1))
                luaL_error(L, "bad filter '%s' (string or acquire.null expected, got %s)",
                           title ? "title" : "description", acq_typename(L, -1));
            if (title) f->has_title = 1; else f->has_desc = 1;
        } else if (acq_equals(L, -2, "contactId")) {
            if (!request_parse_contact_id(L, -1, &f->contact))
                luaL_error(L, "bad filter 'contactId' (a positive integer expected)");
        } else {
            luaL_error(L, "bad filter '%s' (expected one of: since, title, description, contactId)",
                       error_pushname(L, -2));
        }
        lua_pop(L, 1);
    }
    f->table = idx;
}

/* t[field] against the filter's value for it (a string, or acquire.null:
   absent or null in the case). */
static int same(lua_State *L, int c, int filter, const char *field) {
    int ok;
    lua_getfield(L, filter, field);
    lua_getfield(L, c, field);
    if (acq_isnull(L, -2)) ok = lua_isnil(L, -1) || acq_isnull(L, -1);
    else ok = lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return ok;
}

int reconcile_matches(lua_State *L, int c, const acq_filter_t *f) {
    if (!lua_istable(L, c)) return 0;
    c = acq_absindex(L, c);
    if (f->has_since) {
        double at;
        lua_getfield(L, c, "dateCreated");
        at = lua_type(L, -1) == LUA_TSTRING ? parse_iso(lua_tostring(L, -1)) : -1;
        lua_pop(L, 1);
        if (at < 0 || at < f->since - ACQ_RECONCILE_SKEW) return 0;
    }
    if (f->has_title && !same(L, c, f->table, "title")) return 0;
    if (f->has_desc && !same(L, c, f->table, "description")) return 0;
    if (f->contact > 0) {                      /* in case the server ignored where= */
        long long v = 0;
        int ok;
        lua_getfield(L, c, "contactId");
        if (lua_isnil(L, -1)) {                /* or the contact object's id */
            lua_pop(L, 1);
            lua_getfield(L, c, "contact");
            if (lua_istable(L, -1)) lua_getfield(L, -1, "id"); else lua_pushnil(L);
            lua_remove(L, -2);
        }
        ok = (lua_type(L, -1) == LUA_TNUMBER && json_to_int(L, -1, &v)) ||
             (lua_type(L, -1) == LUA_TSTRING && request_parse_contact_id(L, -1, &v));
        lua_pop(L, 1);
        if (!ok || v != f->contact) return 0;
    }
    return 1;
}

static int page_cases(lua_State *L, int res, int page, int *more);

int reconcile_collect(lua_State *L, int res, int page, const acq_filter_t *f, int out) {
    int i, n, more, k;
    out = acq_absindex(L, out);
    k = (int)acq_rawlen(L, out);
    n = page_cases(L, res, page, &more);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (reconcile_matches(L, -1, f)) lua_rawseti(L, out, ++k);
        else lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return more;
}

/* acquire.match_cases(res, filter [, page = 0]) -> the matching cases of
   one page of the list (res, as decode_response gave it), and whether
   another page may follow */
int reconcile_l_match(lua_State *L) {
    acq_filter_t f;
    int more;
    lua_Integer page;
    luaL_checktype(L, 1, LUA_TTABLE);
    reconcile_check_filter(L, 2, &f);
    page = luaL_optinteger(L, 3, 0);
    luaL_argcheck(L, page >= 0 && page < ACQ_LIST_MAX_PAGES, 3, "page out of range");
    lua_settop(L, 3);
    lua_newtable(L);                                              /* 4 */
    more = reconcile_collect(L, 1, (int)page, &f, 4);
    lua_pushboolean(L, more);
    return 2;
}

/* The filter of what a call sent: its contact, title, message (the case's
   description) and when its first attempt began. Pushes it. */
void reconcile_push_filter(lua_State *L, long long id, int opts, double started) {
    static const char *const fields[2][2] = { { "title", "title" }, { "message", "description" } };
    int i;
    opts = acq_absindex(L, opts);
    lua_createtable(L, 0, 4);
    for (i = 0; i < 2; i++) {
        if (lua_istable(L, opts)) lua_getfield(L, opts, fields[i][0]); else lua_pushnil(L);
        if (i == 1 && lua_istable(L, -1)) {                     /* message = { message = … } */
            lua_getfield(L, -1, "message");
            lua_remove(L, -2);
        }
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            response_push_null(L);
        }
        lua_setfield(L, -2, fields[i][1]);
    }
    lua_pushnumber(L, started);
    lua_setfield(L, -2, "since");
    acq_pushint64(L, id);
    lua_setfield(L, -2, "contactId");
}

/* acquire.sent_filter(contactId, opts, started) -> the filter reconcile looks with */
int reconcile_l_filter(lua_State *L) {
    long long id = request_check_contact_id(L, 1);
    double started = (double)luaL_checknumber(L, 3);
    reconcile_push_filter(L, id, 2, started);
    return 1;
}

int reconcile_settle(lua_State *L, int err, int found, int lookup_err) {
    int n;
    err = acq_absindex(L, err);
    found = acq_absindex(L, found);
    lookup_err = acq_absindex(L, lookup_err);
    if (!lua_istable(L, found)) {
        lua_pushvalue(L, lookup_err);
        lua_setfield(L, err, "lookup");
        lua_pushliteral(L, "lookup failed");
        lua_setfield(L, err, "reconcile");
    } else if ((n = (int)acq_rawlen(L, found)) == 1) {
        lua_createtable(L, 0, 2);
        lua_rawgeti(L, found, 1);
        lua_setfield(L, -2, "data");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "reconciled");
        return 1;
    } else if (n == 0) {
        lua_pushliteral(L, "not found");
        lua_setfield(L, err, "reconcile");
    } else {
        int i;
        lua_pushliteral(L, "ambiguous");
        lua_setfield(L, err, "reconcile");
        lua_createtable(L, n, 0);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, found, i);
            if (lua_istable(L, -1)) lua_getfield(L, -1, "id"); else lua_pushnil(L);
            lua_remove(L, -2);
            lua_rawseti(L, -2, i);
        }
        lua_setfield(L, err, "candidates");
    }
    lua_pushnil(L);
    lua_pushvalue(L, err);
    return 2;
}

/* acquire.settle(err, cases | nil [, lookup_err]) -> res | nil, err: the
   reconcile decision, once the lookup for what was sent (sent_filter) is
   done. Exactly one case makes the call a success ({ data = case,
   reconciled = true }); otherwise err says why not (err.reconcile: "not
   found", "ambiguous" with err.candidates, "lookup failed" with
   err.lookup). Never "not created": a list can lag or page. */
int reconcile_l_settle(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 3);
    if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    return reconcile_settle(L, 1, 2, 3);
}

/* acquire.build_list_request(contactId, page, config)
   -> { method = "GET", url = …, headers = { name = value } } */
int reconcile_l_build(lua_State *L) {
    acq_config_t cfg;
    acq_header_t h[ACQ_NHEADERS];
    long long id;
    lua_Integer page;
    char *url;
    int i, n;
    lua_settop(L, 3);
    config_check(L, 3, &cfg);                                /* 4: base_url */
    id = request_check_contact_id(L, 1);
    page = luaL_checkinteger(L, 2);
    luaL_argcheck(L, page >= 0 && page < ACQ_LIST_MAX_PAGES, 2, "page out of range");
    lua_createtable(L, 0, 3);
    lua_pushliteral(L, "GET");
    lua_setfield(L, -2, "method");
    url = (char *)acq_newuserdata(L, ACQ_LIST_URL_MAX);
    lua_pushlstring(L, url, reconcile_list_url(&cfg, id, (int)page, url));
    lua_setfield(L, -3, "url");
    lua_pop(L, 1);
    n = request_headers(&cfg, cfg.user_agent, h);
    lua_createtable(L, 0, n);
    for (i = 0; i < n; i++) {
        if (strcmp(h[i].name, "Content-Type") == 0) continue;   /* a GET has no body */
        lua_pushstring(L, h[i].prefix);
        lua_pushstring(L, h[i].value);
        lua_concat(L, 2);
        lua_setfield(L, -2, h[i].name);
    }
    lua_setfield(L, -2, "headers");
    return 1;
}

/* The cases of one page of the list (res at idx): its data.data array, and
   whether more may follow (the page was full and count says so). Pushes
   the array (an empty table when the answer is not a list). */
static int page_cases(lua_State *L, int res, int page, int *more) {
    int n = 0;
    lua_Number count = -1;
    res = acq_absindex(L, res);
    *more = 0;
    lua_getfield(L, res, "data");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "count");
        if (lua_type(L, -1) == LUA_TNUMBER) count = lua_tonumber(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, -1, "data");
        lua_remove(L, -2);
    }
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        return 0;
    }
    n = (int)acq_rawlen(L, -1);
    *more = n >= ACQ_LIST_LIMIT && (count < 0 || (double)(page + 1) * ACQ_LIST_LIMIT < count) &&
            page + 1 < ACQ_LIST_MAX_PAGES;
    return n;
}
