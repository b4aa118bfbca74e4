# lua-acquire. `make demo` and `make test` do everything from a fresh
# Debian 12 machine: install what is missing, build, run.
#
# LUA picks the Lua: 5.1, 5.2, 5.3, 5.4 (default) or luajit (OpenResty's
# branch, Debian's luajit2). acquire.so is rebuilt when it changes.
LUA          ?= 5.4
ifeq ($(LUA),luajit)
LUA_BIN      ?= luajit
LUA_ABI      := 5.1
LUA_CFLAGS   ?= $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUA_PKGS     := luajit2 libluajit2-5.1-dev
else
LUA_BIN      ?= lua$(LUA)
LUA_ABI      := $(LUA)
LUA_INCDIR   ?= /usr/include/lua$(LUA)
LUA_CFLAGS   ?= -I$(LUA_INCDIR)
LUA_PKGS     := lua$(LUA) $(if $(filter 5.1,$(LUA)),liblua5.1-0-dev,liblua$(LUA)-dev)
endif
CURL_CFLAGS  ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS    ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
CC           ?= cc
CFLAGS       ?= -O2
WARN         := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes
# Never -llua: the interpreter that loads the module provides its symbols.
LIBFLAG      ?= -shared
# Debian's python3 by its path: a python3 found first on PATH may be a version
# manager's shim (pyenv's costs about 1 s of CPU per start; the specs start ~150 servers).
PYTHON       ?= $(or $(wildcard /usr/bin/python3),python3)
BUSTED       ?= $(LUA_BIN) /usr/bin/busted
# make install: where, and the interpreter the installed acquire-case runs on.
PREFIX       ?= /usr/local
INST_LIBDIR  ?= $(PREFIX)/lib/lua/$(LUA_ABI)
INST_LUADIR  ?= $(PREFIX)/share/lua/$(LUA_ABI)
INST_BINDIR  ?= $(PREFIX)/bin
LUA_INTERP   ?= $(or $(shell command -v $(LUA_BIN) 2>/dev/null),/usr/bin/$(LUA_BIN))
DESTDIR      ?=
ALL_LUAS     := 5.1 5.2 5.3 5.4 luajit

SRC  := lua_acquire.c $(wildcard src/*.c)
HDR  := $(wildcard src/*.h)
MOD  := acquire.so

.PHONY: all deps build test check test-all demo install clean memcheck check-exports check-layers check-sizes

all: build
build: $(MOD)

# The module's one compile command, for every build of it (this one, the
# LuaJIT one for nginx in mk/ngx.mk, the sanitized one in mk/quality.mk):
# $(call compile_module,CC,FLAGS,LUA_CFLAGS) writes $@.
compile_module = $(1) $(2) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
	$(3) $(CURL_CFLAGS) $(SRC) $(LIBFLAG) -o $@ $(CURL_LIBS)

$(MOD): $(SRC) $(HDR) .tmp/built-for-$(LUA)
	$(call compile_module,$(CC),$(CFLAGS),$(LUA_CFLAGS))

# Which Lua acquire.so was built for: switching LUA forces a rebuild.
.tmp/built-for-$(LUA):
	@mkdir -p .tmp && rm -f .tmp/built-for-* && touch $@

# The Debian packages each target needs (scripts/deps.sh installs those
# missing, saying what it installs and what, if anything, that removes):
#   make deps    what make test needs for LUA (for 5.4: with nginx's, luajit2 among them, and
#                neovim: spec/34's #nvim specs load the LuaJIT build in nvim, on 5.4 alone)
#   make demo    DEPS_DEMO: the build, LUA's interpreter and headers, lua-cjson, python3
# luajit2 (which replaces Debian's libluajit-5.1-2) only for LUA=luajit and the
# nginx specs (make test on 5.4, make check, make test-ngx, make demo-nginx).
DEPS_CC     = make gcc libc6-dev pkg-config libcurl4-openssl-dev
DEPS_BUILD  = $(DEPS_CC) $(LUA_PKGS)
DEPS_DEMO   = $(DEPS_BUILD) lua-cjson python3
DEPS_TEST   = $(DEPS_DEMO) ca-certificates openssl git curl lua-busted lua-argparse \
	lua-luv lua-cqueues lua-socket tinyproxy $(if $(filter 5.4,$(LUA)),$(NGX_PKGS) $(HAPROXY_PKGS) neovim)
deps:
	@./scripts/deps.sh -t test $(DEPS_TEST)

# The core (config, proxy, url, request, json, response, policy, error,
# redact, buffer) never sees libcurl: each core file is compiled against a
# <curl/curl.h> that is an #error, so including it, directly or through a
# header, fails. And no file calls one above it: url.c neither config.c nor
# proxy.c, proxy.c not config.c (LAYER_BELOW: file, then the prefixes it
# must not call).
CORE_SRC := $(filter-out src/transport.c src/client.c src/batch.c src/pending.c src/group.c,$(wildcard src/*.c))
LAYER_BELOW := src/url.c:config_,proxy_ src/proxy.c:config_ \
	src/call.c:client_,batch_,transport_,engine_l_ src/client.c:batch_
check-layers:
	@mkdir -p .tmp/poison/curl
	@echo '#error "a core file includes <curl/curl.h> (core files include core.h; see src/transport.h)"' \
	  > .tmp/poison/curl/curl.h
	@for f in $(CORE_SRC); do \
	  $(CC) -fsyntax-only $(WARN) -std=gnu99 -I.tmp/poison $(LUA_CFLAGS) $$f || exit 1; done
	@for r in $(LAYER_BELOW); do f=$${r%%:*}; for p in $$(echo $${r#*:} | tr , ' '); do \
	  if grep -nE "\b$${p}[a-z_0-9]+\(" $$f; then echo "check-layers: $$f calls $${p}* (a file above it)"; exit 1; fi; \
	  done; done
	@echo "check-layers: $(notdir $(CORE_SRC)) compile without libcurl; url.c, proxy.c call no file above: ok"

# The sizes a reader can hold: C functions <= 100 lines, files <= 600 (scripts/sizes.sh).
check-sizes:
	@./scripts/sizes.sh

check-exports: $(MOD)
	@syms=$$(nm -D --defined-only $(MOD) | awk '$$2 ~ /^[TDBR]$$/ {print $$3}'); \
	if [ "$$syms" != "luaopen_acquire" ]; then echo "unexpected exports: $$syms"; exit 1; fi; \
	if ldd $(MOD) | grep -q liblua; then echo "acquire.so links liblua"; exit 1; fi; \
	echo "exports: $$syms; no liblua: ok"

# fork() and friends for the specs (spec/support/testposix.c), per Lua.
TESTPOSIX := .tmp/spec-$(LUA)/testposix.so
$(TESTPOSIX): spec/support/testposix.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -fPIC $(LUA_CFLAGS) $< $(LIBFLAG) -o $@

# getaddrinfo() for the specs, preloaded into a child (spec/support/testresolver.c).
TESTRESOLVER := .tmp/spec/testresolver.so
$(TESTRESOLVER): spec/support/testresolver.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -fPIC $< -shared -o $@ -ldl

# The spec runner: each spec file its own busted, TEST_JOBS at a time, the
# longest first; prints each file's summary line and a total (scripts/test.sh).
TEST_JOBS    ?= 6
RUN_SPECS     = BUSTED='$(BUSTED)' LUA_BIN=$(LUA_BIN) TEST_JOBS=$(TEST_JOBS) PYTHON='$(PYTHON)' ./scripts/test.sh
# The builds before a run go BUILD_JOBS at a time (each build of the module is
# one compiler run writing its own file).
BUILD_JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
# What the specs use, built before they run in parallel (the nginx specs'
# LuaJIT build with the 5.4 suite, which runs them).
SPEC_HELPERS  = check-exports check-layers $(TESTPOSIX) $(TESTRESOLVER) \
	$(if $(filter 5.4,$(LUA)),.tmp/luajit/acquire.so .tmp/lua5.3/acquire.so)

# make test: the whole suite for LUA, but the long proofs, which make check
# runs: the tags in CHECK_TAGS (#rock: the rock and make install specs;
# #once: the journal's kill-and-rerun, 3 seeds of 500 items through the CLI),
# and the chaos spec's 1,000 calls (make test runs TEST_CHAOS_CALLS of them).
CHECK_TAGS               := rock,once
TEST_CHAOS_CALLS         ?= 200
TEST_CHAOS_NGX_CALLS     ?= 100
TEST_CHAOS_HAPROXY_CALLS ?= 100
test: deps
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) build $(SPEC_HELPERS)
	CHAOS_CALLS=$${CHAOS_CALLS:-$(TEST_CHAOS_CALLS)} CHAOS_NGX_CALLS=$${CHAOS_NGX_CALLS:-$(TEST_CHAOS_NGX_CALLS)} \
	  CHAOS_HAPROXY_CALLS=$${CHAOS_HAPROXY_CALLS:-$(TEST_CHAOS_HAPROXY_CALLS)} \
	  TEST_NAME="test (Lua $(LUA))" $(RUN_SPECS) \
	  --exclude-tags=$(CHECK_TAGS)$(if $(filter 5.4,$(LUA)),,$(comma)ngx$(comma)haproxy$(comma)nvim) $(BUSTED_ARGS)

# make check: the long proofs, on Lua 5.4: the #rock and #once specs, and the
# chaos specs (#chaos) at full length: CHAOS_CALLS 1,000 (spec/11), 300
# through nginx (spec/14; make test: 100), 300 through haproxy (spec/35; make
# test: 100). make test and make check together
# run every spec. Only the files with such a tag are run (a describe's setup
# runs even when its specs are filtered out).
CHECK_FILES = $(shell grep -l -E '\#($(subst $(comma),|,$(CHECK_TAGS))|chaos)\b' spec/*_spec.lua)
check:
ifneq ($(LUA),5.4)
	@$(MAKE) --no-print-directory check LUA=5.4
else
	@./scripts/deps.sh -t check $(DEPS_TEST) luarocks \
	  $(foreach v,5.1 5.2 5.3,lua$(v) $(if $(filter 5.1,$(v)),liblua5.1-0-dev,liblua$(v)-dev))
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) build $(SPEC_HELPERS)
	CHAOS_CALLS=$${CHAOS_CALLS:-1000} TEST_NAME=check $(RUN_SPECS) --tags=$(CHECK_TAGS),chaos \
	  $(or $(filter %_spec.lua,$(BUSTED_ARGS)),$(CHECK_FILES)) $(filter-out %_spec.lua,$(BUSTED_ARGS))
endif

# make test on every Lua, TEST_ALL_JOBS (2) passes at a time, each pass file
# by file, TEST_ALL_FILE_JOBS (4) at a time (make test alone: TEST_JOBS, 6); 5.4 here and first (the longest: it alone runs the
# nginx specs, which load the LuaJIT build in nginx, whatever Lua runs busted),
# every other Lua in its own copy of the tree, .tmp/test-all/LUA/ (acquire.so
# is per Lua). scripts/test-all.sh says more.
TEST_ALL_JOBS ?= 2
TEST_ALL_FILE_JOBS ?= 4
test-all:
	@MAKE='$(MAKE)' TEST_ALL_JOBS=$(TEST_ALL_JOBS) TEST_JOBS=$(TEST_ALL_FILE_JOBS) \
	  ./scripts/test-all.sh 5.4 $(filter-out 5.4,$(ALL_LUAS))

demo:
	@./scripts/deps.sh -t demo $(DEPS_DEMO)
	@$(MAKE) --no-print-directory build
	PYTHON=$(PYTHON) LUA_CPATH='./?.so;;' spec/server/with-server $(LUA_BIN) examples/create_case.lua

# The spec suite under valgrind, file by file, 2 at a time (valgrind is
# CPU-bound): no definite or indirect leak, no error. The chaos spec runs
# MEMCHECK_CHAOS_CALLS calls here and under make sanitize.
MEMCHECK_CHAOS_CALLS ?= 400
MEMCHECK_JOBS        ?= 2
memcheck: deps
	@./scripts/deps.sh -t memcheck valgrind
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) build $(SPEC_HELPERS)
	CHAOS_CALLS=$(MEMCHECK_CHAOS_CALLS) CHAOS_SLACK=15 TEST_NAME=memcheck TEST_JOBS=$(MEMCHECK_JOBS) \
	  BUSTED='valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect $(BUSTED)' \
	  LUA_BIN=$(LUA_BIN) ./scripts/test.sh $(BUSTED_ARGS) --exclude-tags=rock,ngx,haproxy,nvim,once

comma := ,
# Further targets (quality checks, nginx, CLI...) each live in mk/<area>.mk.
-include $(wildcard mk/*.mk)

# make install [LUA=5.4] [PREFIX=/usr/local] [DESTDIR=]: acquire.so built for LUA into
# INST_LIBDIR, acquire.ngx, acquire.haproxy, acquire.journal, acquire.cqueues, acquire.luv and
# acquire-case's parts (acquire/cli/*.lua) into INST_LUADIR,
# and acquire-case into INST_BINDIR with its
# first line rewritten: a shebang for LUA's interpreter (LUA_INTERP, an absolute path), then
# one line that puts INST_LUADIR and INST_LIBDIR first on package.path and package.cpath, so
# the installed script finds the installed module under any PREFIX, without LUA_PATH or
# LUA_CPATH (its lines are numbered one further than bin/acquire-case's). DESTDIR only
# stages: the paths written into the script are PREFIX's.
install: $(MOD)
	install -d $(DESTDIR)$(INST_LIBDIR) $(DESTDIR)$(INST_LUADIR)/acquire/cli $(DESTDIR)$(INST_BINDIR)
	install -m 0755 $(MOD) $(DESTDIR)$(INST_LIBDIR)/$(MOD)
	install -m 0644 lua/acquire/ngx.lua $(DESTDIR)$(INST_LUADIR)/acquire/ngx.lua
	install -m 0644 lua/acquire/http1.lua $(DESTDIR)$(INST_LUADIR)/acquire/http1.lua
	install -m 0644 lua/acquire/driver.lua $(DESTDIR)$(INST_LUADIR)/acquire/driver.lua
	install -m 0644 lua/acquire/haproxy.lua $(DESTDIR)$(INST_LUADIR)/acquire/haproxy.lua
	install -m 0644 lua/acquire/journal.lua $(DESTDIR)$(INST_LUADIR)/acquire/journal.lua
	install -m 0644 lua/acquire/cqueues.lua $(DESTDIR)$(INST_LUADIR)/acquire/cqueues.lua
	install -m 0644 lua/acquire/luv.lua $(DESTDIR)$(INST_LUADIR)/acquire/luv.lua
	install -m 0644 lua/acquire/loop.lua $(DESTDIR)$(INST_LUADIR)/acquire/loop.lua
	install -m 0644 $(wildcard lua/acquire/cli/*.lua) $(DESTDIR)$(INST_LUADIR)/acquire/cli/
	{ printf '#!%s\n' '$(LUA_INTERP)'; \
	  printf 'package.path = [==[%s/?.lua;%s/?/init.lua;]==] .. package.path; package.cpath = [==[%s/?.so;]==] .. package.cpath\n' \
	    '$(INST_LUADIR)' '$(INST_LUADIR)' '$(INST_LIBDIR)'; \
	  sed '1{/^#!/d}' bin/acquire-case; } > $(DESTDIR)$(INST_BINDIR)/acquire-case
	chmod 0755 $(DESTDIR)$(INST_BINDIR)/acquire-case

# Everything the build makes: the module, .tmp/ (other builds, the specs'
# helpers, fuzzers), objects LuaRocks leaves, fuzz corpora.
clean:
	rm -rf $(MOD) *.o src/*.o .tmp fuzz/corpus-response fuzz/corpus-request
