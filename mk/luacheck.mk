# make luacheck: every Lua file of the project (.luacheckrc).
LUA_FILES := bin/acquire-case examples spec lua
.PHONY: luacheck
luacheck:
	@./scripts/deps.sh lua-check
	luacheck $(LUA_FILES)
