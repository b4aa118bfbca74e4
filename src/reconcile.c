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
#include <time.h>
#include "core.h"

size_t reconcile_list_url(const acq_config_t *cfg, long long contact, int page, char *out) {
    size_t n = cfg->base_len;
    memcpy(out, cfg->base_url, n);
    return n + (size_t)snprintf(out + n, ACQ_LIST_URL_MAX - n,
                                ACQ_LIST_PATH "?where=contactId%%7Ceq%%7C%lld&limit=%d&page=%d",
                                contact, ACQ_LIST_LIMIT, page);
}

/* n digits at s, exactly (no sign, no blank): their value, or -1. */
static int digits(const char *s, int n) {
    int v = 0, i;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* "2020-08-11T07:25:59.000Z" -> seconds since the epoch (before 1970:
   negative); NAN if it is not that. The form is RFC 3339's, read strictly: four-digit year, two-digit
   fields, a real day of its month, a fraction of one digit or more, and
   "Z" or an offset "+hh:mm" / "-hh:mm"; nothing after it. */
static double parse_iso(const char *s, size_t len) {
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int y, mo, d, h, mi, sec, leap;
    size_t at = 19;
    double frac = 0, offset = 0;
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
        s[13] != ':' || s[16] != ':')
        return NAN;
    y = digits(s, 4); mo = digits(s + 5, 2); d = digits(s + 8, 2);
    h = digits(s + 11, 2); mi = digits(s + 14, 2); sec = digits(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 ||
        sec < 0 || sec > 60)
        return NAN;
    leap = mo == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    if (d > mdays[mo - 1] + leap) return NAN;
    if (s[at] == '.') {
        double scale = 0.1;
        size_t first = ++at;
        for (; at < len && s[at] >= '0' && s[at] <= '9'; at++, scale /= 10) frac += (s[at] - '0') * scale;
        if (at == first) return NAN;
    }
    if (at + 1 == len && (s[at] == 'Z' || s[at] == 'z')) {
        offset = 0;
    } else if (at + 6 == len && (s[at] == '+' || s[at] == '-') && s[at + 3] == ':') {
        int oh = digits(s + at + 1, 2), om = digits(s + at + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59) return NAN;
        offset = (s[at] == '-' ? -1 : 1) * (oh * 3600.0 + om * 60.0);
    } else {
        return NAN;
    }
    return (double)response_days_from_civil(y, mo, d) * 86400.0 +
           h * 3600.0 + mi * 60.0 + sec + frac - offset;
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
        if (acq_equals(L, -2, "since") || acq_equals(L, -2, "before")) {
            int since = acq_equals(L, -2, "since");
            lua_Number v = lua_tonumber(L, -1);
            if (lua_type(L, -1) != LUA_TNUMBER || !(v - v == 0))
                luaL_error(L, "bad filter '%s' (seconds since the epoch expected, got %s)",
                           since ? "since" : "before", acq_typename(L, -1));
            if (since) f->since = (double)v, f->has_since = 1;
            else f->until = (double)v, f->has_until = 1;
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
            luaL_error(L, "bad filter '%s' (expected one of: since, before, title, description, contactId)",
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

static int reconcile_matches(lua_State *L, int c, const acq_filter_t *f) {
    if (!lua_istable(L, c)) return 0;
    c = acq_absindex(L, c);
    if (f->has_since || f->has_until) {      /* within [since, until], less/plus the skew */
        double at = NAN;
        lua_getfield(L, c, "dateCreated");
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t n;
            const char *d = lua_tolstring(L, -1, &n);
            at = parse_iso(d, n);
        }
        lua_pop(L, 1);
        if (isnan(at) || (f->has_since && at < f->since - ACQ_RECONCILE_SKEW) ||
            (f->has_until && at > f->until + ACQ_RECONCILE_SKEW))
            return 0;
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

/* The id of the case at idx as a decimal key (a string pushed), or nothing
   pushed and 0 when it has none. */
static int push_id_key(lua_State *L, int idx) {
    long long v = 0;
    char buf[32];
    int ok;
    idx = acq_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TNUMBER || lua_type(L, idx) == LUA_TSTRING) {
        lua_pushvalue(L, idx);
    } else if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "id");
    } else {
        return 0;
    }
    ok = (lua_type(L, -1) == LUA_TNUMBER && json_to_int(L, -1, &v)) ||
         (lua_type(L, -1) == LUA_TSTRING && request_parse_contact_id(L, -1, &v));
    lua_pop(L, 1);
    if (!ok) return 0;
    snprintf(buf, sizeof buf, "%lld", v);
    lua_pushstring(L, buf);
    return 1;
}

/* Is the case at c already in the list at out (the same id listed twice)? */
static int listed(lua_State *L, int out, int n, int c) {
    int i, dup = 0;
    if (!push_id_key(L, c)) return 0;
    for (i = 1; i <= n && !dup; i++) {
        lua_rawgeti(L, out, i);
        if (push_id_key(L, -1)) {
            dup = lua_rawequal(L, -1, -3);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return dup;
}

int reconcile_collect(lua_State *L, int res, int page, const acq_filter_t *f, int out) {
    int i, n, more, k;
    out = acq_absindex(L, out);
    k = (int)acq_rawlen(L, out);
    n = page_cases(L, res, page, &more);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (reconcile_matches(L, -1, f) && !listed(L, out, k, -1)) lua_rawseti(L, out, ++k);
        else lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return more;
}

/* ---- claims: a case id settles one request at most -------------------- */

/* A claims set: { cur = { [id] = true }, old = { ... }, n = #cur }. Two
   generations of ACQ_CLAIMS_GEN ids: at least the last ACQ_CLAIMS_GEN
   claimed are remembered, at most twice as many. */
void reconcile_push_claims(lua_State *L) {
    lua_createtable(L, 0, 3);
    lua_newtable(L);
    lua_setfield(L, -2, "cur");
    lua_newtable(L);
    lua_setfield(L, -2, "old");
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "n");
}

static int reconcile_claimed(lua_State *L, int claims, int c) {
    int hit = 0, g;
    static const char *const gens[2] = { "cur", "old" };
    claims = acq_absindex(L, claims);
    if (!lua_istable(L, claims) || !push_id_key(L, c)) return 0;
    for (g = 0; g < 2 && !hit; g++) {
        lua_getfield(L, claims, gens[g]);
        if (lua_istable(L, -1)) {
            lua_pushvalue(L, -2);
            lua_rawget(L, -2);
            hit = lua_toboolean(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return hit;
}

void reconcile_claim(lua_State *L, int claims, int v) {
    lua_Integer n;
    int top = lua_gettop(L);
    claims = acq_absindex(L, claims);
    v = acq_absindex(L, v);
    if (!lua_istable(L, claims)) return;
    if (lua_istable(L, v)) {                        /* res = { data = case } or a case */
        lua_getfield(L, v, "data");
        if (lua_istable(L, -1)) v = lua_gettop(L);
    }
    if (!push_id_key(L, v) || reconcile_claimed(L, claims, -1)) {
        lua_settop(L, top);
        return;
    }
    lua_getfield(L, claims, "n");
    n = lua_tointeger(L, -1) + 1;
    lua_pop(L, 1);
    if (n > ACQ_CLAIMS_GEN) {                       /* a new generation */
        lua_getfield(L, claims, "cur");
        lua_setfield(L, claims, "old");
        lua_newtable(L);
        lua_setfield(L, claims, "cur");
        n = 1;
    }
    lua_pushinteger(L, n);
    lua_setfield(L, claims, "n");
    lua_getfield(L, claims, "cur");
    lua_insert(L, -2);                              /* cur, key */
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_settop(L, top);
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
void reconcile_push_filter(lua_State *L, long long id, int opts, double started, double until) {
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
    lua_pushnumber(L, until);                       /* a case from the future is not ours */
    lua_setfield(L, -2, "before");
    acq_pushint64(L, id);
    lua_setfield(L, -2, "contactId");
}

/* The wall clock. */
static double reconcile_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* acquire.sent_filter(contactId, opts, started [, until = now]) -> the
   filter reconcile looks with */
int reconcile_l_filter(lua_State *L) {
    long long id = request_check_contact_id(L, 1);
    double started = (double)luaL_checknumber(L, 3);
    double until = lua_isnoneornil(L, 4) ? reconcile_now() : (double)luaL_checknumber(L, 4);
    reconcile_push_filter(L, id, 2, started, until);
    return 1;
}

/* Settles err with the cases found, leaving out those claims holds (ids
   another request of this client already has); the one case that settles
   it is claimed. Candidates all taken: "not found", with err.taken. */
int reconcile_settle(lua_State *L, int err, int found, int lookup_err, int claims) {
    int n = 0, ntaken = 0, i, all, free_, taken;
    err = acq_absindex(L, err);
    found = acq_absindex(L, found);
    lookup_err = acq_absindex(L, lookup_err);
    if (claims) claims = acq_absindex(L, claims);
    if (!lua_istable(L, found)) {
        lua_pushvalue(L, lookup_err);
        lua_setfield(L, err, "lookup");
        lua_pushliteral(L, "lookup failed");
        lua_setfield(L, err, "reconcile");
        lua_pushnil(L);
        lua_pushvalue(L, err);
        return 2;
    }
    lua_newtable(L);
    free_ = lua_gettop(L);
    lua_newtable(L);
    taken = lua_gettop(L);
    all = (int)acq_rawlen(L, found);
    for (i = 1; i <= all; i++) {
        lua_rawgeti(L, found, i);
        if (claims && reconcile_claimed(L, claims, -1)) {
            lua_getfield(L, -1, "id");
            lua_rawseti(L, taken, ++ntaken);
            lua_pop(L, 1);
        } else {
            lua_rawseti(L, free_, ++n);
        }
    }
    if (ntaken > 0) {
        lua_pushvalue(L, taken);
        lua_setfield(L, err, "taken");
    }
    if (n == 1) {
        lua_createtable(L, 0, 2);
        lua_rawgeti(L, free_, 1);
        if (claims) reconcile_claim(L, claims, -1);
        lua_setfield(L, -2, "data");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "reconciled");
        return 1;
    } else if (n == 0) {
        lua_pushliteral(L, "not found");
        lua_setfield(L, err, "reconcile");
    } else {
        lua_pushliteral(L, "ambiguous");
        lua_setfield(L, err, "reconcile");
        lua_createtable(L, n, 0);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, free_, i);
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
    lua_settop(L, 4);
    if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
    return reconcile_settle(L, 1, 2, 3, lua_isnil(L, 4) ? 0 : 4);
}

/* acquire.claims() -> a new claims set, for acquire.settle */
int reconcile_l_claims(lua_State *L) {
    reconcile_push_claims(L);
    return 1;
}

/* acquire.claim(claims, res | case | id): this case is that request's */
int reconcile_l_claim(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    reconcile_claim(L, 1, 2);
    return 0;
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
    while (lua_rawgeti(L, -1, n + 1), !lua_isnil(L, -1)) {   /* ipairs' length: no border games */
        lua_pop(L, 1);
        n++;
    }
    lua_pop(L, 1);
    *more = n >= ACQ_LIST_LIMIT && (count < 0 || (double)(page + 1) * ACQ_LIST_LIMIT < count) &&
            page + 1 < ACQ_LIST_MAX_PAGES;
    return n;
}
