/*
 * journal.c: the journal's file, for lua/acquire/journal.lua.
 *
 *   acquire._journal_open(path) -> j, created | nil, msg, errno[, pid]
 *   j:append(s)      -> true | nil, msg, errno   whole and fdatasync'd, or failed for good
 *   j:read()         -> the whole file | nil, msg, errno
 *   j:truncate(len)  -> true | nil, msg, errno   (a torn tail; fdatasync'd)
 *   j:close()        idempotent; also __gc and __close
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

typedef struct acq_journal_t {
    int    fd;                   /* -1: closed */
    off_t  good;                 /* the length of what was written whole */
    int    failed;               /* errno of the append that failed; 0: none */
    int    undone;               /* that append's bytes were taken back */
    char  *path;
    char   id[64];               /* "dev:ino", in this state's table of open journals */
} acq_journal_t;

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

static void journal_release(lua_State *L, acq_journal_t *j) {
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

static int journal_l_append(lua_State *L) {
    acq_journal_t *j = check_open(L);
    size_t len, left;
    const char *p = luaL_checklstring(L, 2, &len);
    if (j->failed) return push_failed(L, j);
    for (left = len; left > 0;) {
        ssize_t n = write(j->fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {                             /* 0: no progress; say so as the disk would */
            j->failed = n == 0 ? ENOSPC : errno;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    if (!j->failed && fdatasync(j->fd) != 0) j->failed = errno;
    if (j->failed) {
        j->undone = ftruncate(j->fd, j->good) == 0 && fdatasync(j->fd) == 0;
        return push_failed(L, j);
    }
    j->good += (off_t)len;
    lua_pushboolean(L, 1);
    return 1;
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
    luaL_argcheck(L, len >= 0 && len <= (lua_Integer)j->good, 2, "outside the journal");
    if (ftruncate(j->fd, (off_t)len) != 0 || fdatasync(j->fd) != 0)
        return fail_errno(L, j->path, "cannot cut its torn end", errno);
    j->good = (off_t)len;
    lua_pushboolean(L, 1);
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
    { "read", journal_l_read },
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
    lua_createtable(L, 0, 4);
    acq_setfuncs(L, journal_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
