rockspec_format = "3.0"
package = "lua-acquire"
version = "scm-1"
source = {
   url = "git+https://github.com/lua-acquire/lua-acquire.git",
}
description = {
   summary = "Create cases in Acquire's CRM from Lua (libcurl + lua-cjson)",
   detailed = [[
acquire.create_case(contactId, opts) sends POST /api/v1/crm/messenger/chat/create
to https://{account_id}.acquire.io with a Bearer key, encodes opts from the
API's schema, and returns the response as nested Lua tables, or nil and a
structured error.
]],
   license = "MIT",
   labels = { "http", "api", "crm", "libcurl" },
}
dependencies = {
   "lua >= 5.1",
   "lua-cjson",
   "argparse",  -- acquire-case's arguments
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
      ["acquire.cli.args"] = "lua/acquire/cli/args.lua",      -- acquire-case's parts
      ["acquire.cli.decode"] = "lua/acquire/cli/decode.lua",
      ["acquire.cli.input"] = "lua/acquire/cli/input.lua",
      ["acquire.cli.output"] = "lua/acquire/cli/output.lua",
      ["acquire.cli.run"] = "lua/acquire/cli/run.lua",
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
   install = {
      bin = { ["acquire-case"] = "bin/acquire-case" },
   },
}
test = {
   type = "busted",
}
