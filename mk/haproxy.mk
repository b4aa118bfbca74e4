# acquire.haproxy (lua/acquire/haproxy.lua) runs in HAProxy's Lua: Debian 12's HAProxy 2.6 embeds
# Lua 5.3, so it loads an acquire.so built against 5.3's headers, kept apart from ./acquire.so.
# Never linked with liblua: haproxy provides the symbols.
#   make .tmp/lua5.3/acquire.so   that build
#   make test-haproxy             spec/33-haproxy_spec.lua: a real haproxy against the local server;
#                                 spec/35-chaos_haproxy_spec.lua: the chaos invariant through it
#                                 (CHAOS_HAPROXY_CALLS, default 100 here)
#   make demo-haproxy             examples/haproxy.cfg in a real haproxy on free ports, pointed at the
#                                 local Acquire server: one case created through POST /cases and
#                                 printed, haproxy stopped (scripts/demo-haproxy.sh)
HAPROXY_PKGS      := haproxy lua5.3 liblua5.3-dev lua-cjson lua-socket curl openssl
HAPROXY_LUA_CFLAGS ?= -I/usr/include/lua5.3

.tmp/lua5.3/acquire.so: $(SRC) $(HDR)
	@mkdir -p .tmp/lua5.3
	$(call compile_module,$(CC),$(CFLAGS),$(HAPROXY_LUA_CFLAGS))

.PHONY: test-haproxy demo-haproxy
test-haproxy: deps
	@./scripts/deps.sh -t test-haproxy $(HAPROXY_PKGS)
	$(MAKE) --no-print-directory build .tmp/lua5.3/acquire.so
	CHAOS_HAPROXY_CALLS=$${CHAOS_HAPROXY_CALLS:-100} $(BUSTED) --tags=haproxy $(BUSTED_ARGS) \
	  spec/33-haproxy_spec.lua spec/35-chaos_haproxy_spec.lua

demo-haproxy:
	@./scripts/deps.sh -t demo-haproxy $(DEPS_CC) python3 $(HAPROXY_PKGS)
	$(MAKE) --no-print-directory .tmp/lua5.3/acquire.so
	PYTHON=$(PYTHON) spec/server/with-server ./scripts/demo-haproxy.sh
