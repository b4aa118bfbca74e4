# Memory and code safety: make sanitize, make fuzz, make lint.
#
#   make sanitize                 the module built with ASan + UBSan (gcc) into
#                                 .tmp/asan/acquire.so, the spec suite run with it
#   make fuzz [FUZZ_SECONDS=60]   two libFuzzer harnesses (clang), FUZZ_SECONDS each
#   make lint                     cppcheck and clang-tidy over the C sources, and luacheck
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
	CHAOS_CALLS=$(MEMCHECK_CHAOS_CALLS) SAN_CC=$(QUALITY_SAN_CC) ./scripts/sanitize.sh $(QUALITY_ASAN_SO) $(BUSTED_ARGS)

# ---- make fuzz ------------------------------------------------------------
# fuzz/fuzz_response.c and fuzz/fuzz_request.c say what each checks. Each is
# built with the module's sources compiled in and Lua 5.4 linked (only these
# test programs link liblua, never acquire.so), then run FUZZ_SECONDS on its
# corpus, fuzz/corpus-<name>/ (ignored by git, kept between runs, re-seeded
# each run). Any finding fails the target; the input that caused it is in
# .tmp/fuzz/ (crash-*, leak-*, timeout-*, oom-*), and
#   .tmp/fuzz/fuzz_response .tmp/fuzz/crash-...
# replays it.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_DIR     := .tmp/fuzz
FUZZ_NAMES   := fuzz_response fuzz_request
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined $(WARN) -std=gnu99 $(QUALITY_LUA_INC) $(CURL_CFLAGS) -Ifuzz
FUZZ_FLAGS   := -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=30 \
	-print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/
FUZZ_ENV     := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c fuzz/harness.h $(QUALITY_SRC) $(QUALITY_HDR) mk/quality.mk
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $< $(QUALITY_SRC) -o $@ -llua5.4 $(CURL_LIBS)

# JSON's tokens and the names the decoder looks up, for fuzz_response.
$(FUZZ_DIR)/response.dict: mk/quality.mk
	@mkdir -p $(FUZZ_DIR)
	@printf '%s\n' '"{"' '"}"' '"["' '"]"' '":"' '","' '"\""' '"null"' '"true"' '"false"' \
	  '"-0"' '"1.0"' '"-1.5e3"' '"1e400"' '"-1e400"' '"1E+2"' '"0.1"' '"9007199254740993"' \
	  '"9223372036854775808"' '"\"data\""' '"\"contact\""' '"\"fields\""' '"\"field\""' \
	  '"\"key\""' '"\"value\""' '"\"message\""' '"\"error\""' '"\"type\""' '"\"code\""' \
	  '"\\n"' '"\\r"' '"\\t"' '"\\u0000"' '"\\u001f"' '"\\u007f"' '"\\ud800"' '"\\\""' '"\\\\"' \
	  '"Sun, 06 Nov 1994 08:49:37 GMT"' '"GMT"' '" Nov "' '"\xff"' '"\xc3\xa9"' > $@

# Seeds, in fuzz/seeds/<harness>/ (copied into the corpus each run).
# fuzz_response: byte 1 picks the status (0: 200, 4: 400, 5: 401, 7: 404,
# 8: 429, 9: 500, 10: 502, 11: 503, 24: 2^31; + 0x80: with an API key to
# redact), byte 2 the headers (0: none, 0x40 + n: Retry-After from the next
# n bytes, 0x60: among other headers, 0xc0: an HTTP date made of the next 6
# bytes), then the body: the API's documented JSON, error bodies, shapes.
# fuzz_request: byte strings that the harness's generator reads as an empty
# opts, a message table, fields, nested pass-through values (strict =
# false), most known fields at once; and the documented JSON's bytes.
fuzz:
	@./scripts/deps.sh -t fuzz $(DEPS_DEMO) liblua5.4-dev clang libclang-rt-14-dev
	@$(MAKE) --no-print-directory $(addprefix $(FUZZ_DIR)/,$(FUZZ_NAMES)) $(FUZZ_DIR)/response.dict
	@for t in response request; do mkdir -p fuzz/corpus-$$t && cp fuzz/seeds/$$t/* fuzz/corpus-$$t/; done
	@rc=0; for t in $(FUZZ_NAMES); do \
	  echo "== $$t, $(FUZZ_SECONDS) s"; \
	  dict=; [ $$t = fuzz_response ] && dict=-dict=$(FUZZ_DIR)/response.dict; \
	  $(FUZZ_ENV) $(FUZZ_DIR)/$$t $(FUZZ_FLAGS) $$dict fuzz/corpus-$${t#fuzz_} || rc=1; \
	done; \
	if [ $$rc -ne 0 ]; then \
	  echo "fuzz: FINDING: see above; the input is in $(FUZZ_DIR)/ (replay: $(FUZZ_DIR)/<harness> <file>)"; \
	  exit 1; \
	fi; \
	echo "fuzz: no finding in $(FUZZ_SECONDS) s each"

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

lint: luacheck check-layers
	@./scripts/deps.sh -t lint $(DEPS_DEMO) liblua5.4-dev cppcheck clang-tidy
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
