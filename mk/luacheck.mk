# make luacheck: every Lua file of the project (.luacheckrc).
LUA_FILES := bin/acquire-case examples spec bench $(wildcard lua)
.PHONY: luacheck
luacheck:
	@./scripts/deps.sh -t luacheck lua-check
	luacheck $(LUA_FILES)
