# acquire.ngx (lua/acquire/ngx.lua) runs in nginx's Lua, which is LuaJIT (OpenResty's branch,
# Debian's luajit2): it needs acquire.so built against LuaJIT's headers, kept apart from
# ./acquire.so. Never linked with libluajit: nginx's Lua module provides the symbols.
#   make .tmp/luajit/acquire.so   that build (acquire-luajit.so is the same target)
#   make test-ngx                 spec/07-ngx_spec.lua: a real nginx against the local server;
#                                 spec/12-h2_spec.lua: batches through nginx's connection rotation;
#                                 spec/20-ngx_proxy_spec.lua: through a real proxy (tinyproxy)
#   make demo-nginx               examples/nginx.conf itself in a real nginx on a free port, pointed
#                                 at the local Acquire server: one case created through
#                                 POST /cases and printed, nginx stopped (scripts/demo-nginx.sh)
NGX_PKGS          := nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev lua-cjson lua-socket curl openssl tinyproxy
NGX_LUAJIT_CFLAGS ?= $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)

.tmp/luajit/acquire.so: $(SRC) $(HDR)
	@mkdir -p .tmp/luajit
	$(call compile_module,$(CC),$(CFLAGS),$(NGX_LUAJIT_CFLAGS))

.PHONY: acquire-luajit.so test-ngx demo-nginx
acquire-luajit.so: .tmp/luajit/acquire.so

test-ngx: deps
	@./scripts/deps.sh -t test-ngx $(NGX_PKGS)
	$(MAKE) --no-print-directory build .tmp/luajit/acquire.so
	$(BUSTED) --tags=ngx $(BUSTED_ARGS) spec/07-ngx_spec.lua spec/12-h2_spec.lua spec/14-chaos_ngx_spec.lua \
	    spec/20-ngx_proxy_spec.lua

demo-nginx:
	@./scripts/deps.sh -t demo-nginx $(DEPS_CC) python3 $(NGX_PKGS)
	$(MAKE) --no-print-directory .tmp/luajit/acquire.so
	PYTHON=$(PYTHON) spec/server/with-server ./scripts/demo-nginx.sh
