# Memory and code safety: make sanitize, make fuzz, make lint.
ASAN_DIR    := .tmp/asan
QUALITY_SRC := lua_acquire.c $(wildcard src/*.c)
SAN_FLAGS   := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_SECONDS ?= 60

.PHONY: sanitize lint fuzz

# The module built with ASan and UBSan, the specs run with it (the runtime
# preloaded for the uninstrumented interpreter; leaks are memcheck's job).
$(ASAN_DIR)/acquire.so: $(QUALITY_SRC) $(wildcard src/*.h)
	@mkdir -p $(ASAN_DIR)
	$(CC) $(SAN_FLAGS) $(WARN) -std=gnu99 -fPIC -I/usr/include/lua5.4 $(CURL_CFLAGS) \
	  $(QUALITY_SRC) -shared -o $@ $(CURL_LIBS)

sanitize: deps
	$(MAKE) --no-print-directory build $(ASAN_DIR)/acquire.so
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  lua5.4 /usr/bin/busted --cpath="$(ASAN_DIR)/?.so" --exclude-tags=rock,ngx $(BUSTED_ARGS)

lint: luacheck
	@./scripts/deps.sh cppcheck clang-tidy
	cppcheck --enable=warning,performance,portability --error-exitcode=1 --inline-suppr --quiet \
	  --suppress=missingIncludeSystem --suppress=missingInclude -DLUA_VERSION_NUM=504 -I src $(QUALITY_SRC)
	clang-tidy --quiet $(QUALITY_SRC) -- -std=gnu99 -I/usr/include/lua5.4 $(CURL_CFLAGS)
	@echo "lint: cppcheck and clang-tidy clean"

# libFuzzer harnesses (clang), each embedding Lua 5.4 and the module's
# sources, seeded from the API's documented JSON; FUZZ_SECONDS each.
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	$(WARN) -std=gnu99 -I/usr/include/lua5.4 $(CURL_CFLAGS) -Ifuzz

.tmp/fuzz/fuzz_%: fuzz/fuzz_%.c fuzz/harness.h $(QUALITY_SRC) $(wildcard src/*.h)
	@mkdir -p .tmp/fuzz
	clang $(FUZZ_CFLAGS) $< $(QUALITY_SRC) -o $@ -llua5.4 $(CURL_LIBS)

fuzz:
	@./scripts/deps.sh clang libclang-rt-14-dev liblua5.4-dev lua-cjson
	$(MAKE) --no-print-directory .tmp/fuzz/fuzz_response .tmp/fuzz/fuzz_request
	@rm -rf fuzz/corpus-response fuzz/corpus-request
	@mkdir -p fuzz/corpus-response fuzz/corpus-request
	@for f in spec/fixtures/api/*.json; do \
	  (printf '\000\005'; cat $$f) > fuzz/corpus-response/ok-$$(basename $$f); \
	  (printf '\012\003'; cat $$f) > fuzz/corpus-response/err-$$(basename $$f); \
	  head -c 96 $$f > fuzz/corpus-request/$$(basename $$f); \
	done
	@printf '\003\001\000\005hello\002\004' > fuzz/corpus-request/short
	.tmp/fuzz/fuzz_response -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 \
	  -artifact_prefix=.tmp/fuzz/ fuzz/corpus-response
	.tmp/fuzz/fuzz_request -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 \
	  -artifact_prefix=.tmp/fuzz/ fuzz/corpus-request
	@echo "fuzz: no finding in $(FUZZ_SECONDS) s each"
