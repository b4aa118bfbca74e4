-- The nginx rock: lua-acquire-scm-1.rockspec without acquire-case (README, Install).
rockspec_format = "3.0"
package = "lua-acquire-ngx"
version = "scm-1"
source = {
   url = "git+https://github.com/lua-acquire/lua-acquire.git",
}
description = {
   summary = "Create cases in Acquire's CRM from nginx/OpenResty (acquire.ngx; LuaJIT)",
   detailed = [[
acquire.create_case(contactId, opts) sends POST /api/v1/crm/messenger/chat/create
to https://{account_id}.acquire.io with a Bearer key, encodes opts from the
API's schema, and returns the response as nested Lua tables, or nil and a
structured error.

This rock is for nginx's Lua (LuaJIT, the Lua 5.1 tree; Neovim's too): the module, acquire.ngx,
acquire.journal, acquire.cqueues and acquire.luv, and no acquire-case command, so that it installs beside the lua-acquire
rock of another Lua without replacing that one's command.
]],
   license = "MIT",
   labels = { "http", "api", "crm", "libcurl" },
}
dependencies = {
   "lua >= 5.1",
   "lua-cjson",
}
external_dependencies = {
   CURL = { header = "curl/curl.h", library = "curl" },
}
build = {
   type = "builtin",
   modules = {
      ["acquire.ngx"] = "lua/acquire/ngx.lua",
      ["acquire.http1"] = "lua/acquire/http1.lua",
      ["acquire.driver"] = "lua/acquire/driver.lua",
      ["acquire.haproxy"] = "lua/acquire/haproxy.lua",
      ["acquire.journal"] = "lua/acquire/journal.lua",
      ["acquire.cqueues"] = "lua/acquire/cqueues.lua",    -- in an event loop (README)
      ["acquire.luv"] = "lua/acquire/luv.lua",
      ["acquire.loop"] = "lua/acquire/loop.lua",         -- what acquire.cqueues and acquire.luv share
      acquire = {
         sources = {
            "lua_acquire.c",
            "src/batch.c",
            "src/batchopts.c",
            "src/buffer.c",
            "src/call.c",
            "src/client.c",
            "src/config.c",
            "src/engine.c",
            "src/error.c",
            "src/group.c",
            "src/journal.c",
            "src/jrecord.c",
            "src/json.c",
            "src/jsync.c",
            "src/pending.c",
            "src/policy.c",
            "src/proxy.c",
            "src/reconcile.c",
            "src/redact.c",
            "src/request.c",
            "src/response.c",
            "src/transport.c",
            "src/url.c",
         },
         libraries = { "curl", "pthread" },
         incdirs = { "$(CURL_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)" },
      },
   },
}
test = {
   type = "busted",
}
