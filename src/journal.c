/*
 * journal.c: the journal's file, for lua/acquire/journal.lua.
 *
 *   acquire._journal_open(path) -> j, created | nil, msg, errno[, pid]
 *   j:append(s [, sync]) -> true | nil, msg, errno   whole (and fdatasync'd unless sync is
 *                    false), or failed for good; the records put before it go first
 *   j:put(i, digest, contact, state [, a, b, c]) -> true | nil, msg, errno   a record,
 *                    formatted here and kept in memory until the next write or sync (or
 *                    64 KiB of them): "sent" has no more keys; "created" a = id,
 *                    b = case_status, c = reconciled; "failed"/"maybe_created" a = error
 *   j:write()        -> true | nil, msg, errno   the records put, in one write(2), unsynced
 *   j:sync()         -> true | nil, msg, errno   those, then fdatasync of all unsynced (and
 *                    of the background syncs asked for: their failure is its)
 *   j:sync_async()   -> ticket | nil, msg, errno   those written, and an fdatasync of all
 *                    written asked of the journal's thread (started on first use); the
 *                    calling thread goes on
 *   j:wait(ticket)   -> true | nil, msg, errno   once that fdatasync is done (at once if it
 *                    is); a failed one fails the journal for good
 *   j:synced()       -> the last ticket whose fdatasync has ended (never waits)
 *   j:digest(contactId, opts [, fold]) -> digest, contact   an item's: FNV-1a 64 of its
 *                    contact's digits, LF, and its body as acquire.build_request encodes it
 *                    (strict = false); raises on a bad item. fold: also into the input's
 *   j:input()        -> the input's digest: FNV-1a 64 of the folded digests, LF between
 *   j:read()         -> the whole file | nil, msg, errno
 *   j:scan()         -> header, keep, last | nil, msg, errno[, line]   one pass over the
 *                    file, in chunks: the header line's text, the bytes that are whole
 *                    records, the highest item recorded; builds the index below
 *   j:item(i)        -> state, digest | nil     the last record of item i (from scan)
 *   j:record(i)      -> that record's text, read from the file
 *   j:claimed()      -> { case ids of the "created" records }
 *   j:fnv(s [, prev]) -> 16 hex digits: FNV-1a 64 of s, going on from the digest prev
 *   j:flushes()      -> the fdatasyncs this handle made (its thread's too), the j:wait
 *                    calls that found theirs running, the seconds they waited
 *   j:truncate(len)  -> true | nil, msg, errno   (a torn tail; fdatasync'd)
 *   j:close()        idempotent; also __gc and __close (the records put are written and
 *                    fdatasync'd first, unless a write failed)
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
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include "journal.h"

typedef struct acq_journal_t {
    int    fd;                   /* -1: closed */
    off_t  good;                 /* the length of what was written whole */
    int    failed;               /* errno of the append that failed; 0: none */
    int    undone;               /* that append's bytes were taken back */
    char  *path;
    char   id[64];               /* "dev:ino", in this state's table of open journals */
    int    dirty;                /* appended since the last fdatasync */
    long   flushes;              /* fdatasyncs made */
    /* the index (scan): item i's last record, i = 1..last */
    unsigned char *state;        /* 0: none; else a STATES entry */
    uint64_t *digest;
    uint64_t *off;               /* where its record starts */
    size_t   cap, last;
    int64_t *ids;                /* the ids of "created" records */
    size_t   nids, capids;
    acq_buf_t pend;              /* records put, not written yet (j:put) */
    acq_buf_t scratch;           /* an item's body (j:digest) */
    uint64_t input;              /* the input's digest so far (j:digest's fold) */
    long     ninput;             /* digests folded into it */
    /* the syncer: a thread that fdatasyncs what was written when asked
       (j:sync_async); req, done, serr, bflushes and quit under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int      inited, started, quit;
    long     req, done;          /* generations of fdatasync asked for, done */
    int      serr;               /* errno of a background fdatasync that failed */
    long     bflushes;           /* fdatasyncs the thread made */
    long     waits;              /* j:wait calls that found their fdatasync running */
    double   waited;             /* seconds they waited */
} acq_journal_t;

static const char *const STATES[] = { NULL, "sent", "created", "failed", "maybe_created" };
#define NSTATES 5

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

#define FNV_BASIS 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t fnv(uint64_t h, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    for (; p < e; p++) h = (h ^ *p) * FNV_PRIME;
    return h;
}

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

static acq_journal_t *check_journal(lua_State *L) {
    return (acq_journal_t *)luaL_checkudata(L, 1, ACQ_MT_JOURNAL);
}

static acq_journal_t *check_open(lua_State *L) {
    acq_journal_t *j = check_journal(L);
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

static int write_pending(acq_journal_t *j);
static int datasync(acq_journal_t *j);

/* ---- the syncer thread ------------------------------------------------ */

static void *syncer(void *arg) {
    acq_journal_t *j = (acq_journal_t *)arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        long target;
        int rc, e;
        while (!j->quit && j->done >= j->req) pthread_cond_wait(&j->cv, &j->mu);
        if (j->done >= j->req) break;             /* asked to quit, nothing left to do */
        target = j->req;
        pthread_mutex_unlock(&j->mu);
        rc = fdatasync(j->fd);
        e = errno;
        pthread_mutex_lock(&j->mu);
        j->bflushes++;
        if (rc != 0 && j->serr == 0) j->serr = e;
        j->done = target;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* The thread, with every signal blocked in it (a Ctrl-C is the main
   thread's). 0, or an errno. */
static int syncer_start(acq_journal_t *j) {
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&j->thread, NULL, syncer, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) j->started = 1;
    return rc;
}

/* Waits until generation t is done: 0, or the errno of a background
   fdatasync that failed (the journal then takes no more). */
static int syncer_wait(acq_journal_t *j, long t) {
    int e;
    if (!j->started) return 0;
    pthread_mutex_lock(&j->mu);
    if (j->done < t) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        while (j->done < t) pthread_cond_wait(&j->cv, &j->mu);
        clock_gettime(CLOCK_MONOTONIC, &b);
        j->waits++;
        j->waited += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    }
    e = j->serr;
    pthread_mutex_unlock(&j->mu);
    if (e && !j->failed) j->failed = e, j->undone = 0;
    return e;
}

static void syncer_stop(acq_journal_t *j) {
    if (j->started) {
        pthread_mutex_lock(&j->mu);
        j->quit = 1;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->thread, NULL);
        j->started = 0;
    }
    if (j->inited) {
        pthread_cond_destroy(&j->cv);
        pthread_mutex_destroy(&j->mu);
        j->inited = 0;
    }
}

static void journal_release(lua_State *L, acq_journal_t *j) {
    index_free(j);
    /* the records put and not written: written and flushed, as a sync would */
    if (j->fd >= 0 && !j->failed && write_pending(j) == 0 && j->dirty) (void)datasync(j);
    syncer_stop(j);
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

int journal_l_open(lua_State *L) {
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    acq_journal_t *j;
    struct stat st;
    struct flock lk;
    char id[64];
    int fd = -1, created = 0, attempt, e;

    if (strlen(path) != plen) return luaL_argerror(L, 1, "a path without NUL expected");
    /* a journal this process already holds: refused before a second descriptor exists */
    if (lstat(path, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            lua_pushnil(L);
            lua_pushfstring(L, "journal %s: is a symbolic link: refused (a journal is never opened "
                               "through one)", path);
            lua_pushinteger(L, ELOOP);
            return 3;
        }
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
    }
    for (attempt = 0; attempt < 2 && fd < 0; attempt++) {
        fd = open(path, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) break;
        if (errno != ENOENT) break;
        fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) created = 1;
        else if (errno != EEXIST) break;          /* EEXIST: made meanwhile; open it */
    }
    if (fd < 0) {
        e = errno;
        if (e == ELOOP) {
            lua_pushnil(L);
            lua_pushfstring(L, "journal %s: is a symbolic link: refused (a journal is never opened "
                               "through one)", path);
            lua_pushinteger(L, e);
            return 3;
        }
        return fail_errno(L, path, "cannot open", e);
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int regular = 0;
        e = errno;
        if (fstat(fd, &st) == 0) regular = S_ISREG(st.st_mode), e = 0;
        close(fd);
        if (!regular && e == 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "journal %s: not a regular file: refused", path);
            lua_pushinteger(L, EINVAL);
            return 3;
        }
        return fail_errno(L, path, "cannot open", e);
    }
    memset(&lk, 0, sizeof lk);
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;                       /* l_start 0, l_len 0: the whole file, grown or not */
    if (fcntl(fd, F_SETLK, &lk) != 0) {
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
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->inited = 1;
    push_open_table(L);
    lua_pushstring(L, j->id);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_pushboolean(L, created);
    return 2;
}

/* The message of the append that failed, for it and every later one. */
static int push_failed(lua_State *L, acq_journal_t *j) {
    lua_pushnil(L);
    lua_pushfstring(L, "journal %s: cannot write a record: %s (errno %d); %s", j->path,
                    strerror(j->failed), j->failed,
                    j->undone ? "the journal is whole up to the record before, and takes no more"
                              : "its torn end could not be taken back (it is dropped when the "
                                "journal is read again); the journal takes no more");
    lua_pushinteger(L, j->failed);
    return 3;
}

static int datasync(acq_journal_t *j) {
    j->flushes++;
    if (fdatasync(j->fd) != 0) return -1;
    j->dirty = 0;
    return 0;
}

/* The records put (j:put, j:append), in one write(2) continued while it
   makes progress: 0, or -1 with j->failed set and the write taken back to
   the last whole record (unsynced ones before it stay: they were written
   whole, and the next sync covers them). */
static int write_pending(acq_journal_t *j) {
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
        j->undone = ftruncate(j->fd, j->good) == 0 && datasync(j) == 0;
        return -1;
    }
    j->good += (off_t)j->pend.len;
    j->pend.len = 0;
    j->dirty = 1;
    return 0;
}

static int journal_l_append(lua_State *L) {
    acq_journal_t *j = check_open(L);
    size_t len;
    const char *p = luaL_checklstring(L, 2, &len);
    int sync = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
    off_t before;
    if (j->failed) return push_failed(L, j);
    if (!buf_reserve(&j->pend, len)) return luaL_error(L, "not enough memory");
    memcpy(j->pend.p + j->pend.len, p, len);
    j->pend.len += len;
    before = j->good;
    if (write_pending(j) != 0) return push_failed(L, j);
    if (sync && datasync(j) != 0) {
        j->failed = errno;
        j->undone = ftruncate(j->fd, before) == 0 && datasync(j) == 0;
        if (j->undone) j->good = before;
        return push_failed(L, j);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The records put, written; then fdatasync of all written unsynced. A failed
   fdatasync is for good: the kernel may have dropped those pages, so nothing
   after them is trusted. */
static int journal_l_sync(lua_State *L) {
    acq_journal_t *j = check_open(L);
    if (j->failed) return push_failed(L, j);
    if (write_pending(j) != 0) return push_failed(L, j);
    if (j->dirty && datasync(j) != 0) {
        j->failed = errno;
        j->undone = 0;
        return push_failed(L, j);
    }
    if (syncer_wait(j, j->req) != 0) return push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

/* The records put, written; an fdatasync of everything written asked of
   the thread. -> its ticket (for j:wait). Without a thread (it could not
   start), the fdatasync is made here. */
static int journal_l_sync_async(lua_State *L) {
    acq_journal_t *j = check_open(L);
    long t;
    if (j->failed || write_pending(j) != 0) return push_failed(L, j);
    if (j->dirty && !j->started && syncer_start(j) != 0) {
        if (datasync(j) != 0) {
            j->failed = errno;
            j->undone = 0;
            return push_failed(L, j);
        }
    }
    if (j->dirty) {
        pthread_mutex_lock(&j->mu);
        t = ++j->req;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&j->mu);
        j->dirty = 0;
    } else {
        t = j->req;                               /* asked for already, or done here */
    }
    lua_pushinteger(L, (lua_Integer)t);
    return 1;
}

/* j:synced() -> the last ticket whose fdatasync has ended (never waits) */
static int journal_l_synced(lua_State *L) {
    acq_journal_t *j = check_journal(L);
    long d = j->req;
    if (j->started) {
        pthread_mutex_lock(&j->mu);
        d = j->done;
        pthread_mutex_unlock(&j->mu);
    }
    lua_pushinteger(L, (lua_Integer)d);
    return 1;
}

static int journal_l_wait(lua_State *L) {
    acq_journal_t *j = check_open(L);
    lua_Integer t = luaL_checkinteger(L, 2);
    if (j->failed) return push_failed(L, j);
    if (t > 0 && syncer_wait(j, (long)t) != 0) return push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

static int journal_l_write(lua_State *L) {
    acq_journal_t *j = check_open(L);
    if (j->failed || write_pending(j) != 0) return push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- records: formatted here, written a wave at a time ---------------- */

#define PEND_MAX ((size_t)64 << 10)               /* written when the records put reach it */

/* n bytes of s at o (no terminator: a record is bytes) -> past them */
static char *put_bytes(char *o, const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) o[i] = s[i];
    return o + n;
}

/* s as the inside of a JSON string (escaped as lua-cjson does); at most 6n bytes */
static char *put_escaped(char *o, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':  *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '/':  *o++ = '\\'; *o++ = '/'; break;
        case '\b': *o++ = '\\'; *o++ = 'b'; break;
        case '\f': *o++ = '\\'; *o++ = 'f'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                o = put_bytes(o, "\\u00", 4);
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            } else {
                *o++ = (char)c;
            }
        }
    }
    return o;
}

/* A number in all its digits (lua-cjson would round past 14): an integer as
   one, a whole float as %.0f, another as %.17g, NaN and infinities null. */
static size_t number_text(lua_State *L, int idx, char out[40]) {
    lua_Number v;
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) return (size_t)snprintf(out, 40, "%lld", (long long)lua_tointeger(L, idx));
#endif
    v = lua_tonumber(L, idx);
    if (v != v || v - v != 0) { put_bytes(out, "null", 4); return 4; }
    if (v > -9223372036854775808.0 && v < 9223372036854775808.0 && (lua_Number)(long long)v == v)
        return (size_t)snprintf(out, 40, "%.0f", (double)v);
    return (size_t)snprintf(out, 40, "%.17g", (double)v);
}

/* The most bytes ,"key":value takes for the value at idx (0: left out, as
   the value is nil or of no JSON type) */
static size_t value_room(lua_State *L, int idx) {
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: return 40;
    case LUA_TBOOLEAN: return 5;
    case LUA_TSTRING: { size_t n; lua_tolstring(L, idx, &n); return 2 + 6 * n; }
    default: return 0;
    }
}

static char *put_value(lua_State *L, char *o, const char *key, int idx) {
    size_t kn = strlen(key);
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: case LUA_TBOOLEAN: case LUA_TSTRING: break;
    default: return o;
    }
    *o++ = ',', *o++ = '"';
    o = put_bytes(o, key, kn);
    *o++ = '"', *o++ = ':';
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: o += number_text(L, idx, o); break;
    case LUA_TBOOLEAN:
        o = lua_toboolean(L, idx) ? put_bytes(o, "true", 4) : put_bytes(o, "false", 5);
        break;
    default: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        *o++ = '"';
        o = put_escaped(o, s, n);
        *o++ = '"';
    }
    }
    return o;
}

/* j:put(i, digest, contact, state [, a, b, c]): the record as parse_record
   reads it (item, digest, state first; then contactId and the state's keys) */
static int journal_l_put(lua_State *L) {
    static const char *const KEYS[NSTATES][3] = {
        { NULL, NULL, NULL }, { NULL, NULL, NULL }, { "id", "case_status", "reconciled" },
        { "error", NULL, NULL }, { "error", NULL, NULL } };
    acq_journal_t *j = check_open(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    size_t dn, cn, room, k;
    const char *d = luaL_checklstring(L, 3, &dn);
    const char *c = luaL_checklstring(L, 4, &cn);
    const char *st = luaL_checkstring(L, 5);
    char *o;
    int s;
    for (s = 1; s < NSTATES; s++) if (strcmp(st, STATES[s]) == 0) break;
    if (s >= NSTATES) return luaL_argerror(L, 5, "a record's state expected");
    luaL_argcheck(L, i >= 1, 2, "an item number expected");
    for (k = 0; k < dn && hexval((unsigned char)d[k]) >= 0; k++) {}
    luaL_argcheck(L, dn == 16 && k == 16, 3, "a digest of 16 hex digits expected");
    if (j->failed) return push_failed(L, j);
    room = 96 + dn + 6 * cn;
    for (k = 0; k < 3; k++) if (KEYS[s][k]) room += 16 + value_room(L, 6 + (int)k);
    if (!buf_reserve(&j->pend, room)) return luaL_error(L, "not enough memory");
    o = j->pend.p + j->pend.len;
    o += snprintf(o, 40, "{\"item\":%lld,\"digest\":\"", (long long)i);
    memcpy(o, d, 16), o += 16;
    o += snprintf(o, 40, "\",\"state\":\"%s\",\"contactId\":\"", STATES[s]);
    o = put_escaped(o, c, cn);
    *o++ = '"';
    for (k = 0; k < 3; k++) if (KEYS[s][k]) o = put_value(L, o, KEYS[s][k], 6 + (int)k);
    *o++ = '}', *o++ = '\n';
    j->pend.len = (size_t)(o - j->pend.p);
    if (j->pend.len >= PEND_MAX && write_pending(j) != 0) return push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

static int journal_l_flushes(lua_State *L) {
    acq_journal_t *j = check_journal(L);
    long b = 0;
    if (j->inited) {
        pthread_mutex_lock(&j->mu);
        b = j->bflushes;
        pthread_mutex_unlock(&j->mu);
    }
    lua_pushinteger(L, (lua_Integer)j->flushes + (lua_Integer)b);
    lua_pushinteger(L, (lua_Integer)j->waits);
    lua_pushnumber(L, (lua_Number)j->waited);
    return 3;
}

static int journal_l_read(lua_State *L) {
    acq_journal_t *j = check_open(L);
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
    acq_journal_t *j = check_open(L);
    lua_Integer len = luaL_checkinteger(L, 2);
    if (j->failed || write_pending(j) != 0) return push_failed(L, j);
    luaL_argcheck(L, len >= 0 && len <= (lua_Integer)j->good, 2, "outside the journal");
    if (ftruncate(j->fd, (off_t)len) != 0 || datasync(j) != 0)
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

/* A record line (without its LF) as journal.lua writes one: the keys item,
   digest and state first, in that order, then others, and a closing brace.
   -> 1 with item, digest, state (and a created one's id, or 0) */
static int parse_record(const char *p, size_t n, uint64_t *item, uint64_t *dg, int *state, int64_t *id) {
    static const char K_ITEM[] = "{\"item\":", K_DIGEST[] = ",\"digest\":\"", K_STATE[] = "\",\"state\":\"";
    size_t i = 0, k;
    uint64_t v = 0;
    int s;
    if (n < 2 || p[n - 1] != '}') return 0;
    if (n < sizeof K_ITEM - 1 || memcmp(p, K_ITEM, sizeof K_ITEM - 1) != 0) return 0;
    i = sizeof K_ITEM - 1;
    for (k = 0; i < n && p[i] >= '0' && p[i] <= '9' && k < 12; i++, k++) v = v * 10 + (uint64_t)(p[i] - '0');
    if (k == 0 || k >= 12 || v == 0 || p[sizeof K_ITEM - 1] == '0') return 0;
    *item = v;
    if (n - i < sizeof K_DIGEST - 1 + 16 || memcmp(p + i, K_DIGEST, sizeof K_DIGEST - 1) != 0) return 0;
    i += sizeof K_DIGEST - 1;
    for (v = 0, k = 0; k < 16; k++, i++) {
        int h = hexval((unsigned char)p[i]);
        if (h < 0) return 0;
        v = v << 4 | (uint64_t)h;
    }
    *dg = v;
    if (n - i < sizeof K_STATE - 1 || memcmp(p + i, K_STATE, sizeof K_STATE - 1) != 0) return 0;
    i += sizeof K_STATE - 1;
    for (s = 1; s < NSTATES; s++) {
        size_t len = strlen(STATES[s]);
        if (n - i > len && memcmp(p + i, STATES[s], len) == 0 && p[i + len] == '"') break;
    }
    if (s == NSTATES) return 0;
    *state = s;
    i += strlen(STATES[s]) + 1;
    if (p[i] != '}' && p[i] != ',') return 0;
    *id = 0;
    if (s == 2) {                     /* "created": its "id", the first after the state */
        static const char K_ID[] = ",\"id\":";
        for (; i + sizeof K_ID - 1 < n; i++) {
            if (p[i] == '"' && i > 0 && p[i - 1] == ',' && memcmp(p + i - 1, K_ID, sizeof K_ID - 1) == 0) {
                int64_t x = 0;
                size_t d = i - 1 + sizeof K_ID - 1;
                for (k = 0; d < n && p[d] >= '0' && p[d] <= '9' && k < 19; d++, k++) x = x * 10 + (p[d] - '0');
                if (k > 0 && k < 19) *id = x;
                break;
            }
        }
    }
    return 1;
}

static int journal_l_scan(lua_State *L) {
    acq_journal_t *j = check_open(L);
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
                if (!parse_record(b->p + pos, len, &item, &dg, &state, &id)) {
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

static void push_digest(lua_State *L, uint64_t v) {
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)v);
    lua_pushlstring(L, hex, 16);
}

static int journal_l_item(lua_State *L) {
    acq_journal_t *j = check_journal(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > j->last || j->state[i] == 0) return 0;
    lua_pushstring(L, STATES[j->state[i]]);
    push_digest(L, j->digest[i]);
    return 2;
}

static int journal_l_record(lua_State *L) {
    acq_journal_t *j = check_open(L);
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
    acq_journal_t *j = check_journal(L);
    size_t i;
    lua_createtable(L, j->nids > INT32_MAX ? INT32_MAX : (int)j->nids, 0);
    for (i = 0; i < j->nids; i++) {
        acq_pushint64(L, (long long)j->ids[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/* FNV-1a 64: an item's digest and the input's (going on from prev, so the
   input's is computed as the items are drawn: the same digits as over their
   concatenation). */
static int journal_l_fnv(lua_State *L) {
    size_t n, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 2, &n);
    uint64_t h = FNV_BASIS;
    if (!lua_isnoneornil(L, 3)) {
        size_t pn;
        const char *p = luaL_checklstring(L, 3, &pn);
        luaL_argcheck(L, pn == 16, 3, "a digest of 16 hex digits expected");
        for (h = 0, i = 0; i < 16; i++) {
            int v = hexval((unsigned char)p[i]);
            luaL_argcheck(L, v >= 0, 3, "a digest of 16 hex digits expected");
            h = h << 4 | (uint64_t)v;
        }
    }
    push_digest(L, fnv(h, (const char *)s, n));
    return 1;
}

/* j:digest(contactId, opts [, fold]) -> digest, contact: the item's request
   (its contact's digits, LF, the body acquire.build_request encodes with
   strict = false), without building the rest of it; fold: the digest also
   goes into the input's (j:input) */
static int journal_l_digest(lua_State *L) {
    acq_journal_t *j = check_journal(L);
    long long id;
    char num[24];
    size_t nn;
    uint64_t h;
    int fold = lua_toboolean(L, 4);
    if (!request_parse_contact_id(L, 2, &id)) {
        const char *got = lua_type(L, 2) == LUA_TSTRING ? lua_pushfstring(L, "'%s'", lua_tostring(L, 2))
            : lua_type(L, 2) == LUA_TNUMBER ? error_pushnumber(L, 2)
            : acq_typename(L, 2);
        return luaL_error(L, "contactId must be a positive integer, got %s", got);
    }
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
        return luaL_error(L, "opts must be a table, got %s", acq_typename(L, 3));
    request_encode_body(L, 3, 0, &j->scratch);
    nn = (size_t)snprintf(num, sizeof num, "%lld", id);
    num[nn] = '\n';
    h = fnv(fnv(FNV_BASIS, num, nn + 1), j->scratch.p, j->scratch.len);
    if (fold) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
        j->input = j->ninput++ == 0 ? fnv(FNV_BASIS, hex, 16) : fnv(fnv(j->input, "\n", 1), hex, 16);
    }
    push_digest(L, h);
    lua_pushlstring(L, num, nn);
    return 2;
}

/* j:input() -> the input's digest: FNV-1a 64 over the folded digests, LF
   between them (of nothing: of the empty string) */
static int journal_l_input(lua_State *L) {
    acq_journal_t *j = check_journal(L);
    push_digest(L, j->ninput ? j->input : FNV_BASIS);
    return 1;
}

static int journal_l_close(lua_State *L) {
    journal_release(L, check_journal(L));
    return 0;
}

static int journal_l_tostring(lua_State *L) {
    acq_journal_t *j = check_journal(L);
    if (j->fd < 0) lua_pushliteral(L, "acquire.Journal (closed)");
    else lua_pushfstring(L, "acquire.Journal (%s)", j->path);
    return 1;
}

static const luaL_Reg journal_methods[] = {
    { "append", journal_l_append },
    { "put", journal_l_put },
    { "write", journal_l_write },
    { "sync", journal_l_sync },
    { "sync_async", journal_l_sync_async },
    { "wait", journal_l_wait },
    { "synced", journal_l_synced },
    { "digest", journal_l_digest },
    { "input", journal_l_input },
    { "read", journal_l_read },
    { "scan", journal_l_scan },
    { "item", journal_l_item },
    { "record", journal_l_record },
    { "claimed", journal_l_claimed },
    { "fnv", journal_l_fnv },
    { "flushes", journal_l_flushes },
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
