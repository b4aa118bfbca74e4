-- luacheck: every Lua file of the project (make luacheck).
std = "max"
max_line_length = 120
files["spec/"] = { std = "+busted", max_line_length = 150 }
files["lua/acquire/ngx.lua"] = { read_globals = { "ngx" } }
exclude_files = { ".tmp/", "luarocks-tree/" }
files["bench/"] = { max_line_length = 150 }
files["bench/wrk_post.lua"] = { globals = { "wrk" } }
