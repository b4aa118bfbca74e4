# Memory and code safety: make sanitize, make fuzz, make lint.
#
#   make sanitize                 the module built with ASan + UBSan (gcc) into
#                                 .tmp/asan/acquire.so, the spec suite run with it
#   make fuzz [FUZZ_SECONDS=60]   two libFuzzer harnesses (clang), FUZZ_SECONDS each
#   make lint                     cppcheck and clang-tidy over the C sources, and luacheck
#
# All three are for Lua 5.4, whatever LUA says.

QUALITY_SRC     := lua_acquire.c $(wildcard src/*.c)
QUALITY_HDR     := $(wildcard src/*.h)
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
	$(QUALITY_SAN_CC) $(QUALITY_SAN_FLAGS) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
	  $(QUALITY_LUA_INC) $(CURL_CFLAGS) $(QUALITY_SRC) -shared -o $@ $(CURL_LIBS)

# ./acquire.so is built too: some specs run child interpreters that load it
# by path. scripts/sanitize.sh says how the run is set up (leak detection,
# which specs, the check that the sanitized build is the one loaded).
sanitize: deps
	@$(MAKE) --no-print-directory build LUA=5.4
	@$(MAKE) --no-print-directory $(QUALITY_ASAN_SO)
	SAN_CC=$(QUALITY_SAN_CC) ./scripts/sanitize.sh $(QUALITY_ASAN_SO) $(BUSTED_ARGS)

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

# Seeds. fuzz_response: byte 1 picks the status (0: 200, 4: 400, 5: 401,
# 7: 404, 8: 429, 9: 500, 10: 502, 11: 503, 24: 2^31; + 0x80: with an API
# key to redact), byte 2 the headers (0: none, 0x40 + n: Retry-After from the
# next n bytes, 0x60: among other headers, 0xc0: an HTTP date made of the
# next 6 bytes), then the body: the API's documented JSON, error bodies,
# shapes. fuzz_request: byte strings that the harness's generator reads as
# an empty opts, a message table, fields, nested pass-through values
# (strict = false), most known fields at once; and the documented JSON's bytes.
FUZZ_SEED_RESPONSE := fuzz/corpus-response
FUZZ_SEED_REQUEST  := fuzz/corpus-request

fuzz:
	@./scripts/deps.sh clang libclang-rt-14-dev liblua5.4-dev lua-cjson
	@$(MAKE) --no-print-directory $(addprefix $(FUZZ_DIR)/,$(FUZZ_NAMES)) $(FUZZ_DIR)/response.dict
	@mkdir -p $(FUZZ_SEED_RESPONSE) $(FUZZ_SEED_REQUEST)
	@set -e; d=$(FUZZ_SEED_RESPONSE); \
	for f in spec/fixtures/api/*.json; do n=$$(basename $$f .json); \
	  { printf '\000\000'; cat $$f; } > $$d/seed-200-$$n; \
	  { printf '\005\000'; cat $$f; } > $$d/seed-401-$$n; \
	  { printf '\211\000'; cat $$f; } > $$d/seed-500-key-$$n; \
	  head -c 256 $$f > $(FUZZ_SEED_REQUEST)/seed-$$n; \
	done; \
	printf '\005\000{"type":"ERROR_UNAUTHORIZED","message":"Invalid API key"}' > $$d/seed-401; \
	printf '\205\000{"type":"ERROR_UNAUTHORIZED","message":"Invalid API key sk2ZQ7bW1xY9"}' > $$d/seed-401-key; \
	printf '\004\000{"error":{"code":"ERROR_INVALID_INPUT","message":"bad input"}}' > $$d/seed-400; \
	printf '\007\000{"error":"Contact not found"}' > $$d/seed-404; \
	printf '\013\1023 {"message":"down for maintenance"}' > $$d/seed-503; \
	printf '\010\135Sun, 06 Nov 2094 08:49:37 GMT{"code":429}' > $$d/seed-429; \
	printf '\013\300\001\006\012\100\001\010' > $$d/seed-503-date; \
	printf '\012\140<html><body>502 Bad Gateway</body></html>' > $$d/seed-502; \
	printf '\000\000[1.0,2.5,{"a":3.0,"b":[1e2,-0.0,null,true]}]' > $$d/seed-200-numbers; \
	printf '\000\000{"data":{"contact":{"fields":[{"value":"1.2.3.4","field":{"key":"ip"}},{"value":null,"field":{"key":"city"}},{"value":5,"field":{"key":5}}]}}}' > $$d/seed-200-fields; \
	printf '\000\000"text"' > $$d/seed-200-string; \
	{ printf '\000\000'; printf '%1001s' '' | tr ' ' '['; } > $$d/seed-200-deep; \
	printf '\030\000{"message":"status 2^31"}' > $$d/seed-2p31; \
	r=$(FUZZ_SEED_REQUEST); \
	printf '\000\003\000\000' > $$r/seed-empty; \
	printf '\175\254\075\222' > $$r/seed-message; \
	printf '\045\326\375\201\116' > $$r/seed-fields; \
	printf '\154\210\032\045\172\204\052\143\272\072\146\002\323\014\264\172\104\015\223\144\142\261\237\167' > $$r/seed-nested; \
	printf '\323\003\013\213\203\001\220\001\222\200\366\214\003\156\001\206\321\001\221\115\001\261\204\224\011\040\226\042\231\001\001\214\063\003\032\164\001\250\174\315\222\213\210\176\221\003\001\227\031\204\001\230\001\202\235\001\204\003\215\321' > $$r/seed-loose; \
	printf '\001\003\006\035\363\321\200\213\001\210\231\001\001\215\303\034\224\167\144\214\373\005\216\233\001\213\317\001\001\167\073\001\321\235\217\202\001\130\116\001\221\001\001\225\233\271\001\224\001\272\001\211\277\001\211\225\001\001\001\237\235\234\175\233\200\015\001\211\211\212\024\001\217\146\231\206\200\237\200\313\207\265\236\237\206\003\205\001\021\200\300\200\247\226\246\001\005\234\013\001\213\235\221\210\250\001\001\003\001\001\223\001\064\001\001\001' > $$r/seed-known
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

lint: luacheck
	@./scripts/deps.sh cppcheck clang-tidy
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
