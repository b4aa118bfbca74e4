/*
 * journal.h: the file primitives of acquire.journal (lua/acquire/journal.lua),
 * what plain Lua cannot do: create exclusively, refuse a symbolic link, hold
 * a POSIX record lock for the whole run, append a record whole and
 * fdatasync'd or fail for good, read the file back.
 */
#ifndef ACQUIRE_JOURNAL_H
#define ACQUIRE_JOURNAL_H

#include "core.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define ACQ_MT_JOURNAL       "acquire.Journal"

/* acquire._journal_open(path) -> j, created | nil, msg, errno[, pid] */
int   journal_l_open(lua_State *L);
void  journal_open(lua_State *L);       /* the metatable; [-0,+0] */

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
