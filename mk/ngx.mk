# nginx's Lua is LuaJIT (OpenResty's branch): acquire.ngx needs a LuaJIT
# build of the module, kept apart from ./acquire.so.
NGX_PKGS := nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev lua5.1 lua-cjson curl
.tmp/luajit/acquire.so: $(SRC) $(HDR)
	@mkdir -p .tmp/luajit
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
	  $$(pkg-config --cflags luajit) $(CURL_CFLAGS) $(SRC) $(LIBFLAG) -o $@ $(CURL_LIBS)

.PHONY: test-ngx
test-ngx: deps
	@./scripts/deps.sh $(NGX_PKGS)
	$(MAKE) --no-print-directory build .tmp/luajit/acquire.so
	$(BUSTED) --tags=ngx $(BUSTED_ARGS)
