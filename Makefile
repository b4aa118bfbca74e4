# lua-acquire. `make demo` and `make test` do everything from a fresh
# Debian 12 machine: install what is missing, build, run.
LUA_VERSION  ?= 5.4
LUA          ?= lua$(LUA_VERSION)
LUA_INCDIR   ?= /usr/include/lua$(LUA_VERSION)
CURL_CFLAGS  ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS    ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
CC           ?= cc
CFLAGS       ?= -O2
WARN         := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes
# Never -llua: the interpreter that loads the module provides its symbols.
LIBFLAG      ?= -shared
PYTHON       ?= python3
BUSTED       ?= $(LUA) /usr/bin/busted
PREFIX       ?= /usr/local
INST_LIBDIR  ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
DESTDIR      ?=

SRC  := lua_acquire.c $(wildcard src/*.c)
HDR  := $(wildcard src/*.h)
MOD  := acquire.so

.PHONY: all deps build test demo install clean memcheck check-exports

all: build
build: $(MOD)

$(MOD): $(SRC) $(HDR)
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
	  -I$(LUA_INCDIR) $(CURL_CFLAGS) $(SRC) $(LIBFLAG) -o $@ $(CURL_LIBS)

# Installs the Debian packages the project needs, only those missing.
deps:
	@./scripts/deps.sh

check-exports: $(MOD)
	@syms=$$(nm -D --defined-only $(MOD) | awk '$$2 ~ /^[TDBR]$$/ {print $$3}'); \
	if [ "$$syms" != "luaopen_acquire" ]; then echo "unexpected exports: $$syms"; exit 1; fi; \
	if ldd $(MOD) | grep -q liblua; then echo "acquire.so links liblua"; exit 1; fi; \
	echo "exports: $$syms; no liblua: ok"

test: deps
	$(MAKE) build check-exports
	$(BUSTED) $(BUSTED_ARGS)

demo: deps
	$(MAKE) build
	PYTHON=$(PYTHON) LUA_CPATH='./?.so;;' spec/server/with-server $(LUA) examples/create_case.lua

# The spec suite under valgrind: no definite or indirect leak, no error.
memcheck: deps
	$(MAKE) build
	valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect \
	  $(BUSTED) $(BUSTED_ARGS) --exclude-tags=rock

# Further targets (quality checks, nginx, CLI...) each live in mk/<area>.mk.
-include $(wildcard mk/*.mk)

install: $(MOD)
	install -d $(DESTDIR)$(INST_LIBDIR) $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(MOD) $(DESTDIR)$(INST_LIBDIR)/$(MOD)
	install -m 0755 bin/acquire-case $(DESTDIR)$(PREFIX)/bin/acquire-case

clean:
	rm -f $(MOD) *.o
