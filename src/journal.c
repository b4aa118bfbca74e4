/*
 * journal.c: the journal's file, for lua/acquire/journal.lua; the handle's
 * records are in jrecord.c, its syncs in jsync.c (src/journal.h).
 *
 *   acquire._journal_open(path) -> j, created | nil, msg, errno[, pid]
 *   j:append(s [, sync]) -> true | nil, msg, errno   whole (and fdatasync'd unless sync is
 *                    false), or failed for good; the records put before it go first
 *   j:write()        -> true | nil, msg, errno   the records put (j:put), in one write(2), unsynced
 *   j:read()         -> the whole file | nil, msg, errno
 *   j:scan()         -> header, keep, last | nil, msg, errno[, line]   one pass over the
 *                    file, in chunks: the header line's text, the bytes that are whole
 *                    records, the highest item recorded; builds the index below
 *   j:item(i)        -> state, digest | nil     the last record of item i (from scan)
 *   j:record(i)      -> that record's text, read from the file
 *   j:claimed()      -> { case ids of the "created" records }
 *   j:truncate(len)  -> true | nil, msg, errno   (a torn tail; fdatasync'd)
 *   j:close()        idempotent; also __gc and __close (the records put are written and
 *                    fdatasync'd first, unless a write failed)
 *   and, from jrecord.c, j:put, j:digest, j:input, j:fnv; from jsync.c, j:sync,
 *   j:sync_async, j:wait, j:synced, j:flushes (the table of methods is here)
 *
 * The index holds 17 bytes an item (a state, a digest, the record's offset)
 * and 8 a created case: a 10^6-item journal is found out in one read of it
 * with about 25 MB, and a record is read again only when asked for.
 *
 * A journal is opened once per process: POSIX record locks belong to the
 * process and drop when ANY of its descriptors of the file closes, so a
 * second handle on the same file (found by device and inode before it is
 * opened) is refused instead of opened and closed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include "journal.h"

/* The registry key of the table of open journals: id -> true. */
static const char open_key = 0;

static void push_open_table(lua_State *L) {
    acq_rawgetp(L, LUA_REGISTRYINDEX, &open_key);
    if (lua_istable(L, -1)) return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    acq_rawsetp(L, LUA_REGISTRYINDEX, &open_key);
}

static void file_id(const struct stat *st, char out[64]) {
    snprintf(out, 64, "%llu:%llu", (unsigned long long)st->st_dev, (unsigned long long)st->st_ino);
}

static int fail_errno(lua_State *L, const char *path, const char *what, int e) {
    lua_pushnil(L);
    lua_pushfstring(L, "journal %s: %s: %s", path, what, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

/* fsync of the directory that holds path, so that a new file's entry is on
   disk before a record in it is relied on. */
static int sync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    int fd, rc, e;
    if (slash == NULL) dir = strdup(".");
    else if (slash == path) dir = strdup("/");
    else dir = strndup(path, (size_t)(slash - path));
    if (dir == NULL) return ENOMEM;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    e = errno;
    free(dir);
    if (fd < 0) return e;
    rc = fsync(fd);
    e = errno;
    close(fd);
    /* some filesystems cannot sync a directory (EINVAL): nothing more to do there */
    return rc == 0 || e == EINVAL ? 0 : e;
}

acq_journal_t *journal_check(lua_State *L) {
    return (acq_journal_t *)luaL_checkudata(L, 1, ACQ_MT_JOURNAL);
}

acq_journal_t *journal_check_open(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    if (j->fd < 0) luaL_error(L, "acquire: the journal is closed");
    return j;
}

static void index_free(acq_journal_t *j) {
    free(j->state);
    free(j->digest);
    free(j->off);
    free(j->ids);
    j->state = NULL, j->digest = NULL, j->off = NULL, j->ids = NULL;
    j->cap = j->last = j->nids = j->capids = 0;
}

static void journal_release(lua_State *L, acq_journal_t *j) {
    index_free(j);
    /* the records put and not written: written and flushed, as a sync would */
    if (j->fd >= 0 && !j->failed && journal_write_pending(j) == 0 && j->dirty) (void)journal_datasync(j);
    jsync_stop(j);
    buf_free(&j->pend);
    buf_free(&j->scratch);
    if (j->fd >= 0) {
        push_open_table(L);
        lua_pushstring(L, j->id);
        lua_pushnil(L);
        lua_rawset(L, -3);
        lua_pop(L, 1);
        close(j->fd);            /* drops the lock */
        j->fd = -1;
    }
    free(j->path);
    j->path = NULL;
}

/* ---- opening: refused, created, locked ------------------------------- */

static int push_symlink(lua_State *L, const char *path, int e) {
    lua_pushnil(L);
    lua_pushfstring(L, "journal %s: is a symbolic link: refused (a journal is never opened "
                       "through one)", path);
    lua_pushinteger(L, e);
    return 3;
}

/* Before a descriptor exists: a symbolic link, or a journal this process
   already holds, refused. -> 0 to go on, or the count of results pushed */
static int open_refused(lua_State *L, const char *path) {
    struct stat st;
    char id[64];
    if (lstat(path, &st) != 0) return 0;
    if (S_ISLNK(st.st_mode)) return push_symlink(L, path, ELOOP);
    file_id(&st, id);
    push_open_table(L);
    lua_getfield(L, -1, id);
    if (lua_toboolean(L, -1)) {
        lua_pushnil(L);
        lua_pushfstring(L, "journal %s is in use by this process", path);
        lua_pushinteger(L, EBUSY);
        return 3;
    }
    lua_pop(L, 2);
    return 0;
}

/* path opened, or created exclusively (0600) if absent: fd, or -1 with *e
   the errno (never through a symbolic link: ELOOP) */
static int open_file(const char *path, int *created, int *e) {
    int fd = -1, attempt;
    for (attempt = 0; attempt < 2 && fd < 0; attempt++) {
        fd = open(path, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) break;
        if (errno != ENOENT) break;
        fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) *created = 1;
        else if (errno != EEXIST) break;          /* EEXIST: made meanwhile; open it */
    }
    *e = errno;
    return fd;
}

/* fd a regular file, its stat in *st: 0, or (fd closed) the count of results pushed */
static int check_regular(lua_State *L, int fd, const char *path, struct stat *st) {
    int regular = 0, e;
    if (fstat(fd, st) == 0 && S_ISREG(st->st_mode)) return 0;
    e = errno;
    if (fstat(fd, st) == 0) regular = S_ISREG(st->st_mode), e = 0;
    close(fd);
    if (!regular && e == 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "journal %s: not a regular file: refused", path);
        lua_pushinteger(L, EINVAL);
        return 3;
    }
    return fail_errno(L, path, "cannot open", e);
}

/* The write lock on the whole file, held for the run: 0, or (fd closed)
   the count of results pushed (held by another process: its pid too) */
static int lock_file(lua_State *L, int fd, const char *path) {
    struct flock lk;
    int e;
    memset(&lk, 0, sizeof lk);
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;                       /* l_start 0, l_len 0: the whole file, grown or not */
    if (fcntl(fd, F_SETLK, &lk) == 0) return 0;
    e = errno;
    if (e == EACCES || e == EAGAIN) {
        memset(&lk, 0, sizeof lk);
        lk.l_type = F_WRLCK;
        lk.l_whence = SEEK_SET;
        if (fcntl(fd, F_GETLK, &lk) != 0 || lk.l_type == F_UNLCK) lk.l_pid = 0;
        close(fd);
        lua_pushnil(L);
        if (lk.l_pid > 0)
            lua_pushfstring(L, "journal %s is in use by process %d", path, (int)lk.l_pid);
        else
            lua_pushfstring(L, "journal %s is in use by another process", path);
        lua_pushinteger(L, e);
        lua_pushinteger(L, (lua_Integer)lk.l_pid);
        return 4;
    }
    close(fd);
    return fail_errno(L, path, "cannot lock", e);
}

int journal_l_open(lua_State *L) {
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    acq_journal_t *j;
    struct stat st;
    int fd, created = 0, e, n;

    if (strlen(path) != plen) return luaL_argerror(L, 1, "a path without NUL expected");
    if ((n = open_refused(L, path)) != 0) return n;
    fd = open_file(path, &created, &e);
    if (fd < 0) return e == ELOOP ? push_symlink(L, path, e) : fail_errno(L, path, "cannot open", e);
    if ((n = check_regular(L, fd, path, &st)) != 0) return n;
    if ((n = lock_file(L, fd, path)) != 0) return n;
    if (created && (e = sync_dir(path)) != 0) {
        unlink(path);                             /* empty, and ours */
        close(fd);
        return fail_errno(L, path, "cannot sync its directory", e);
    }
    j = (acq_journal_t *)acq_newuserdata(L, sizeof *j);
    memset(j, 0, sizeof *j);
    j->fd = -1;
    acq_setmetatable(L, ACQ_MT_JOURNAL);
    j->path = strdup(path);
    if (j->path == NULL) {
        close(fd);
        return luaL_error(L, "not enough memory");
    }
    file_id(&st, j->id);
    j->good = st.st_size;
    j->fd = fd;
    jsync_init(j);
    push_open_table(L);
    lua_pushstring(L, j->id);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_pushboolean(L, created);
    return 2;
}

/* ---- appends: whole, or failed for good ------------------------------ */

/* The message of the append that failed, for it and every later one. */
int journal_push_failed(lua_State *L, acq_journal_t *j) {
    lua_pushnil(L);
    lua_pushfstring(L, "journal %s: cannot write a record: %s (errno %d); %s", j->path,
                    strerror(j->failed), j->failed,
                    j->undone ? "the journal is whole up to the record before, and takes no more"
                              : "its torn end could not be taken back (it is dropped when the "
                                "journal is read again); the journal takes no more");
    lua_pushinteger(L, j->failed);
    return 3;
}

int journal_datasync(acq_journal_t *j) {
    j->flushes++;
    if (fdatasync(j->fd) != 0) return -1;
    j->dirty = 0;
    return 0;
}

/* The records put (j:put, j:append), in one write(2) continued while it
   makes progress: 0, or -1 with j->failed set and the write taken back to
   the last whole record (unsynced ones before it stay: they were written
   whole, and the next sync covers them). */
int journal_write_pending(acq_journal_t *j) {
    const char *p = j->pend.p;
    size_t left = j->pend.len;
    if (left == 0) return 0;
    while (left > 0) {
        ssize_t n = write(j->fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {                             /* 0: no progress; say so as the disk would */
            j->failed = n == 0 ? ENOSPC : errno;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    if (j->failed) {
        j->pend.len = 0;
        j->undone = ftruncate(j->fd, j->good) == 0 && journal_datasync(j) == 0;
        return -1;
    }
    j->good += (off_t)j->pend.len;
    j->pend.len = 0;
    j->dirty = 1;
    return 0;
}

static int journal_l_append(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    size_t len;
    const char *p = luaL_checklstring(L, 2, &len);
    int sync = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
    off_t before;
    if (j->failed) return journal_push_failed(L, j);
    if (!buf_reserve(&j->pend, len)) return luaL_error(L, "not enough memory");
    memcpy(j->pend.p + j->pend.len, p, len);
    j->pend.len += len;
    before = j->good;
    if (journal_write_pending(j) != 0) return journal_push_failed(L, j);
    if (sync && journal_datasync(j) != 0) {
        j->failed = errno;
        j->undone = ftruncate(j->fd, before) == 0 && journal_datasync(j) == 0;
        if (j->undone) j->good = before;
        return journal_push_failed(L, j);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int journal_l_write(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    if (j->failed || journal_write_pending(j) != 0) return journal_push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

static int journal_l_read(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    struct stat st;
    acq_buf_t *b;
    size_t got = 0, size;
    if (fstat(j->fd, &st) != 0) return fail_errno(L, j->path, "cannot read", errno);
    size = (size_t)st.st_size;
    b = buf_push(L);
    buf_lreserve(L, b, size + 1);
    while (got < size) {
        ssize_t n = pread(j->fd, b->p + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno(L, j->path, "cannot read", errno);
        if (n == 0) break;                        /* shorter than fstat said */
        got += (size_t)n;
    }
    lua_pushlstring(L, b->p, got);
    buf_free(b);
    return 1;
}

static int journal_l_truncate(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    lua_Integer len = luaL_checkinteger(L, 2);
    if (j->failed || journal_write_pending(j) != 0) return journal_push_failed(L, j);
    luaL_argcheck(L, len >= 0 && len <= (lua_Integer)j->good, 2, "outside the journal");
    if (ftruncate(j->fd, (off_t)len) != 0 || journal_datasync(j) != 0)
        return fail_errno(L, j->path, "cannot cut its torn end", errno);
    j->good = (off_t)len;
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- the index: one pass over the file, a few bytes an item ---------- */

#define SCAN_CHUNK ((size_t)1 << 20)

static int index_grow(acq_journal_t *j, size_t item) {
    size_t cap = j->cap ? j->cap : 1024, old = j->cap;
    unsigned char *st;
    uint64_t *dg, *of;
    while (cap <= item) {
        if (cap > ((size_t)1 << 40)) return 0;
        cap *= 2;
    }
    if (cap == old) return 1;
    if ((st = (unsigned char *)realloc(j->state, cap)) == NULL) return 0;
    j->state = st;
    if ((dg = (uint64_t *)realloc(j->digest, cap * sizeof *dg)) == NULL) return 0;
    j->digest = dg;
    if ((of = (uint64_t *)realloc(j->off, cap * sizeof *of)) == NULL) return 0;
    j->off = of;
    memset(j->state + old, 0, cap - old);
    j->cap = cap;
    return 1;
}

static int add_id(acq_journal_t *j, int64_t id) {
    if (j->nids == j->capids) {
        size_t cap = j->capids ? j->capids * 2 : 1024;
        int64_t *p = (int64_t *)realloc(j->ids, cap * sizeof *p);
        if (p == NULL) return 0;
        j->ids = p, j->capids = cap;
    }
    j->ids[j->nids++] = id;
    return 1;
}

static int journal_l_scan(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    acq_buf_t *b;
    off_t base = 0, keep = 0, size;
    size_t have = 0, pos, lineno = 0;
    struct stat st;
    int eof = 0, header = 0;
    if (fstat(j->fd, &st) != 0) return fail_errno(L, j->path, "cannot read", errno);
    size = st.st_size;
    index_free(j);
    b = buf_push(L);                                  /* 2 */
    buf_lreserve(L, b, SCAN_CHUNK);
    lua_pushboolean(L, 0);                            /* 3: the header's text */
    while (!eof || have > 0) {
        char *nl;
        if (!eof) {
            ssize_t got;
            if (b->cap - have < SCAN_CHUNK / 2) {     /* a line longer than what is read */
                b->len = have;
                buf_lreserve(L, b, SCAN_CHUNK);
            }
            got = pread(j->fd, b->p + have, b->cap - have, base + (off_t)have);
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) return fail_errno(L, j->path, "cannot read", errno);
            if (got == 0 || base + (off_t)have + got >= size) eof = 1;
            have += (size_t)got;
        }
        pos = 0;
        while (pos < have && (nl = (char *)memchr(b->p + pos, '\n', have - pos)) != NULL) {
            size_t len = (size_t)(nl - (b->p + pos));
            off_t at = base + (off_t)pos;
            lineno++;
            if (!header) {
                lua_pushlstring(L, b->p + pos, len);
                lua_replace(L, 3);
                header = 1;
            } else {
                uint64_t item, dg;
                int state;
                int64_t id;
                if (!jrecord_parse(b->p + pos, len, &item, &dg, &state, &id)) {
                    if (at + (off_t)len + 1 >= size) { eof = 1, have = 0; break; }   /* the last line: cut short */
                    lua_pushnil(L);
                    lua_pushfstring(L, "journal %s: line %d is not a journal record: refused, the file is "
                                       "left as it is", j->path, (int)lineno);
                    lua_pushinteger(L, EINVAL);
                    lua_pushinteger(L, (lua_Integer)lineno);
                    return 4;
                }
                if (!index_grow(j, (size_t)item)) {
                    index_free(j);
                    return fail_errno(L, j->path, "cannot index", ENOMEM);
                }
                j->state[item] = (unsigned char)state;
                j->digest[item] = dg;
                j->off[item] = (uint64_t)at;
                if ((size_t)item > j->last) j->last = (size_t)item;
                if (id > 0 && !add_id(j, id)) {
                    index_free(j);
                    return fail_errno(L, j->path, "cannot index", ENOMEM);
                }
            }
            pos += len + 1;
            keep = base + (off_t)pos;
        }
        if (have == 0) break;
        if (eof) break;                               /* what is left has no LF: cut short */
        memmove(b->p, b->p + pos, have - pos);
        base += (off_t)pos;
        have -= pos;
    }
    buf_free(b);
    acq_pushint64(L, (long long)keep);
    acq_pushint64(L, (long long)j->last);
    acq_pushint64(L, (long long)size);
    return 4;
}

static int journal_l_item(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > j->last || j->state[i] == 0) return 0;
    lua_pushstring(L, jrecord_states[j->state[i]]);
    jrecord_push_digest(L, j->digest[i]);
    return 2;
}

static int journal_l_record(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    char chunk[512];
    luaL_Buffer lb;
    off_t at;
    luaL_argcheck(L, i >= 1 && (size_t)i <= j->last && j->state[i] != 0, 2, "no record of that item");
    at = (off_t)j->off[i];
    luaL_buffinit(L, &lb);
    for (;;) {
        ssize_t n = pread(j->fd, chunk, sizeof chunk, at);
        char *nl;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno(L, j->path, "cannot read", errno);
        if (n == 0) break;
        nl = (char *)memchr(chunk, '\n', (size_t)n);
        luaL_addlstring(&lb, chunk, nl ? (size_t)(nl - chunk) : (size_t)n);
        if (nl) break;
        at += n;
    }
    luaL_pushresult(&lb);
    return 1;
}

static int journal_l_claimed(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    size_t i;
    lua_createtable(L, j->nids > INT32_MAX ? INT32_MAX : (int)j->nids, 0);
    for (i = 0; i < j->nids; i++) {
        acq_pushint64(L, (long long)j->ids[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

static int journal_l_close(lua_State *L) {
    journal_release(L, journal_check(L));
    return 0;
}

static int journal_l_tostring(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    if (j->fd < 0) lua_pushliteral(L, "acquire.Journal (closed)");
    else lua_pushfstring(L, "acquire.Journal (%s)", j->path);
    return 1;
}

static const luaL_Reg journal_methods[] = {
    { "append", journal_l_append },
    { "put", jrecord_l_put },
    { "write", journal_l_write },
    { "sync", jsync_l_sync },
    { "sync_async", jsync_l_sync_async },
    { "wait", jsync_l_wait },
    { "synced", jsync_l_synced },
    { "digest", jrecord_l_digest },
    { "input", jrecord_l_input },
    { "read", journal_l_read },
    { "scan", journal_l_scan },
    { "item", journal_l_item },
    { "record", journal_l_record },
    { "claimed", journal_l_claimed },
    { "fnv", jrecord_l_fnv },
    { "flushes", jsync_l_flushes },
    { "truncate", journal_l_truncate },
    { "close", journal_l_close },
    { NULL, NULL }
};

static const luaL_Reg journal_metamethods[] = {
    { "__gc", journal_l_close },
#if LUA_VERSION_NUM >= 504
    { "__close", journal_l_close },
#endif
    { "__tostring", journal_l_tostring },
    { NULL, NULL }
};

void journal_open(lua_State *L) {
    luaL_newmetatable(L, ACQ_MT_JOURNAL);
    acq_setfuncs(L, journal_metamethods, 0);
    lua_createtable(L, 0, 20);
    acq_setfuncs(L, journal_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
