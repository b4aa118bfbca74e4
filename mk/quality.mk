# Memory and code safety: make sanitize, make fuzz, make lint.
#
#   make sanitize                 the module built with ASan + UBSan (gcc) into
#                                 .tmp/asan/acquire.so, the spec suite run with it
#   make fuzz [FUZZ_SECONDS=60]   seven libFuzzer harnesses (clang), FUZZ_SECONDS each
#   make lint                     cppcheck and clang-tidy over the C sources, luacheck,
#                                 check-layers and check-sizes
#
# All three are for Lua 5.4, whatever LUA says.

QUALITY_SRC     := $(SRC)
QUALITY_HDR     := $(HDR)
QUALITY_LUA_INC := -I/usr/include/lua5.4

.PHONY: sanitize fuzz lint

# ---- make sanitize ------------------------------------------------------
# gcc's -fsanitize=undefined leaves float-cast-overflow out (clang's has it):
# named here, since the module turns Lua numbers into C integers.
QUALITY_SAN_CC    ?= gcc
QUALITY_ASAN_DIR  := .tmp/asan
QUALITY_ASAN_SO   := $(QUALITY_ASAN_DIR)/acquire.so
QUALITY_SAN_FLAGS := -O1 -g -fno-omit-frame-pointer \
	-fsanitize=address,undefined,float-cast-overflow \
	-fno-sanitize-recover=undefined,float-cast-overflow

$(QUALITY_ASAN_SO): $(QUALITY_SRC) $(QUALITY_HDR) mk/quality.mk
	@mkdir -p $(QUALITY_ASAN_DIR)
	$(call compile_module,$(QUALITY_SAN_CC),$(QUALITY_SAN_FLAGS),$(QUALITY_LUA_INC))

# ./acquire.so is built too: some specs run child interpreters that load it
# by path. scripts/sanitize.sh says how the run is set up (leak detection,
# which specs, the check that the sanitized build is the one loaded).
sanitize: deps
	@$(MAKE) --no-print-directory build LUA=5.4
	@$(MAKE) --no-print-directory $(QUALITY_ASAN_SO)
	CHAOS_CALLS=$(MEMCHECK_CHAOS_CALLS) CHAOS_SLACK=10 SAN_CC=$(QUALITY_SAN_CC) ./scripts/sanitize.sh $(QUALITY_ASAN_SO) $(BUSTED_ARGS)

# ---- make fuzz ------------------------------------------------------------
# Each fuzz/fuzz_<name>.c says what it drives and checks. Each is built with
# the module's sources compiled in and Lua 5.4 linked (only these test
# programs link liblua, never acquire.so), then run FUZZ_SECONDS on its
# corpus, fuzz/corpus-<name>/ (ignored by git, kept between runs, re-seeded
# from fuzz/seeds/<name>/ each run). Any finding fails the target; the input
# that caused it is in .tmp/fuzz/ (crash-*, leak-*, timeout-*, oom-*), and
#   .tmp/fuzz/fuzz_response .tmp/fuzz/crash-...
# replays it. make fuzz FUZZ_NAMES=fuzz_dates runs one.
# Leaks: -detect_leaks=0 turns off libFuzzer's check after each input (the
# Lua state keeps garbage between inputs: it ran on nearly every input, at
# a tenth of the speed); LeakSanitizer still checks at exit, once the
# harness has closed the state (fuzz/harness.h).
# FUZZ_STRICT=1 turns on the checks of known findings not fixed yet (each
# harness's comment says which).
FUZZ_SECONDS ?= 60
FUZZ_STRICT  ?= 1
FUZZ_CC      ?= clang
FUZZ_DIR     := .tmp/fuzz
FUZZ_NAMES   := fuzz_response fuzz_request fuzz_dates fuzz_client fuzz_config fuzz_reconcile fuzz_redact
# the module's sources are compiled once (fuzzer-no-link: instrumented for
# coverage, no main), each harness against them
FUZZ_SAN     := -g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := $(FUZZ_SAN) -fsanitize=fuzzer,address,undefined \
	$(WARN) -std=gnu99 $(QUALITY_LUA_INC) $(CURL_CFLAGS) -Ifuzz -Isrc
FUZZ_OBJS    := $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(QUALITY_SRC))
FUZZ_FLAGS   := -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=30 -detect_leaks=0 \
	-print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/
FUZZ_ENV     := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	FUZZ_STRICT=$(FUZZ_STRICT)
# each target's own flags
FUZZ_ARGS_fuzz_response := -dict=$(FUZZ_DIR)/response.dict
FUZZ_ARGS_fuzz_dates    := -dict=fuzz/dates.dict -max_len=256
FUZZ_ARGS_fuzz_config   := -dict=fuzz/config.dict -max_len=2048
FUZZ_ARGS_fuzz_reconcile := -max_len=1024
FUZZ_ARGS_fuzz_redact   := -max_len=1024
FUZZ_ARGS_fuzz_client   := -dict=fuzz/client.dict -max_len=4096 -timeout=20

$(FUZZ_DIR)/obj/%.o: %.c $(QUALITY_HDR) mk/quality.mk
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer-no-link,address,undefined $(WARN) -std=gnu99 \
	  $(QUALITY_LUA_INC) $(CURL_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c fuzz/harness.h $(FUZZ_OBJS) $(QUALITY_HDR) mk/quality.mk
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $< $(FUZZ_OBJS) -o $@ -llua5.4 $(CURL_LIBS) -lpthread

# JSON's tokens and the names the decoder looks up, for fuzz_response.
$(FUZZ_DIR)/response.dict: mk/quality.mk
	@mkdir -p $(FUZZ_DIR)
	@printf '%s\n' '"{"' '"}"' '"["' '"]"' '":"' '","' '"\""' '"null"' '"true"' '"false"' \
	  '"-0"' '"1.0"' '"-1.5e3"' '"1e400"' '"-1e400"' '"1E+2"' '"0.1"' '"9007199254740993"' \
	  '"9223372036854775808"' '"\"data\""' '"\"contact\""' '"\"fields\""' '"\"field\""' \
	  '"\"key\""' '"\"value\""' '"\"message\""' '"\"error\""' '"\"type\""' '"\"code\""' \
	  '"\\n"' '"\\r"' '"\\t"' '"\\u0000"' '"\\u001f"' '"\\u007f"' '"\\ud800"' '"\\\""' '"\\\\"' \
	  '"Sun, 06 Nov 1994 08:49:37 GMT"' '"GMT"' '" Nov "' '"\xff"' '"\xc3\xa9"' > $@

# Seeds, in fuzz/seeds/<name>/ (copied into the corpus each run); each
# harness's comment says how it reads its bytes. Those named after a
# finding of issue 22 (seed-finding<N>-...) are its reproducers; those of a
# check that FUZZ_STRICT=1 turns on fail today.
# the packages of make fuzz and make lint; make quality-deps installs both
# (.ci/run, before it runs the two side by side: apt-get cannot run twice at once)
FUZZ_DEPS = $(DEPS_DEMO) liblua5.4-dev clang libclang-rt-14-dev
LINT_DEPS = $(DEPS_DEMO) liblua5.4-dev cppcheck clang-tidy
.PHONY: quality-deps
quality-deps:
	@./scripts/deps.sh -t fuzz,lint $(FUZZ_DEPS) $(LINT_DEPS) lua-check

fuzz:
	@./scripts/deps.sh -t fuzz $(FUZZ_DEPS)
	@$(MAKE) --no-print-directory $(addprefix $(FUZZ_DIR)/,$(FUZZ_NAMES)) $(FUZZ_DIR)/response.dict
	@for t in $(FUZZ_NAMES:fuzz_%=%); do mkdir -p fuzz/corpus-$$t && cp fuzz/seeds/$$t/* fuzz/corpus-$$t/; done
	@rc=0; $(foreach t,$(FUZZ_NAMES),echo "== $(t), $(FUZZ_SECONDS) s"; \
	  $(FUZZ_ENV) $(FUZZ_DIR)/$(t) $(FUZZ_FLAGS) $(FUZZ_ARGS_$(t)) fuzz/corpus-$(t:fuzz_%=%) || rc=1;) \
	if [ $$rc -ne 0 ]; then \
	  echo "fuzz: FINDING: see above; the input is in $(FUZZ_DIR)/ (replay: $(FUZZ_DIR)/<harness> <file>)"; \
	  exit 1; \
	fi; \
	echo "fuzz: no finding in $(FUZZ_SECONDS) s each ($(words $(FUZZ_NAMES)) targets)"

# ---- make lint --------------------------------------------------------------
# cppcheck once per Lua version the sources support (compat.h's branches) with
# the installed libcurl's version, and once with a libcurl older than 7.80
# (transport.c's other branch); its lua, libcurl, posix and gnu libraries
# tell it which calls never return, allocate or free. Nothing is suppressed
# but missingIncludeSystem (the system headers are not given to it).
# clang-tidy: .clang-tidy says what is on and what is off, and why.
QUALITY_CURL_NUM := 0x$(shell curl-config --vernum 2>/dev/null || echo 075800)
QUALITY_CPPCHECK := cppcheck --enable=warning,performance,portability --error-exitcode=1 \
	--inline-suppr --quiet --std=c99 --library=posix,gnu,lua,libcurl \
	--suppress=missingIncludeSystem -Isrc -D__GNUC__
QUALITY_CPPCHECK_CONFIGS := 501:$(QUALITY_CURL_NUM) 502:$(QUALITY_CURL_NUM) \
	503:$(QUALITY_CURL_NUM) 504:$(QUALITY_CURL_NUM) 504:0x074a00

lint: luacheck check-layers check-sizes
	@./scripts/deps.sh -t lint $(LINT_DEPS)
	@for c in $(QUALITY_CPPCHECK_CONFIGS); do \
	  echo "cppcheck: LUA_VERSION_NUM=$${c%%:*} LIBCURL_VERSION_NUM=$${c#*:}"; \
	  $(QUALITY_CPPCHECK) -DLUA_VERSION_NUM=$${c%%:*} -DLIBCURL_VERSION_NUM=$${c#*:} \
	    $(QUALITY_SRC) || exit 1; \
	done
	@echo "clang-tidy: $(QUALITY_SRC)"
	@out=$$(clang-tidy --quiet --warnings-as-errors='*' $(QUALITY_SRC) -- \
	  -std=gnu99 $(QUALITY_LUA_INC) $(CURL_CFLAGS) 2>&1); rc=$$?; \
	  printf '%s\n' "$$out" | grep -v '^[0-9]* warnings generated\.$$' || true; exit $$rc
	@echo "lint: cppcheck and clang-tidy clean"
