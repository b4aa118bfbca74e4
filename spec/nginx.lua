-- Starts and stops a real nginx (Debian's, with its Lua module) for specs. Like spec/helper.lua,
-- a helper: spec files open on behaviour.
--
--   local nginx = require "spec.nginx"
--   local n = nginx.start(function(n)                   -- n.port (and n.ports[2..]), n.prefix
--     return nginx.config(n, { http = "server { listen 127.0.0.1:" .. n.port .. "; ... }" })
--   end, { env = "ACQUIRE_API_KEY=k", ports = 2 })
--   n.url, n:post(path, body) -> code, text; n:log() (the error log); nginx.stop(n) (idempotent)
--   nginx.start_cases{ base_url =, key =, trusted =, http =, main =, env = } -> n: acquire.ngx behind
--     POST /case; n:case{ contact =, opts =, config =, close =, logger = } -> what the handler
--     answered, decoded
--   nginx.run_as(), nginx.temp_paths(n), nginx.MODULES: for a config written by hand
--   nginx.self_signed(dir) -> cert, key: for `listen ... ssl`, cert as the client's ca_file
--
-- nginx runs LuaJIT: start() builds .tmp/luajit/acquire.so first (make), and every config made
-- by config() finds lua/?.lua and that module. Only 127.0.0.1 is listened on.
local helper = require "spec.helper"
local cjson = require "cjson"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local M = {}
local ROOT = helper.repo_root
M.MODULES = "/usr/lib/nginx/modules"

local sh, slurp, alive = helper.sh, helper.slurp, helper.alive
M.self_signed = helper.self_signed

-- Started as root, nginx runs its workers as nobody, who may not read a checkout under /root:
-- run them as root (a loopback test server). Otherwise nginx keeps the user it has.
function M.run_as()
  return sh("id -u"):match("^0%s") and "user root;\n" or ""
end

-- nginx's temporary directories, in the prefix (Debian's defaults are under /var/lib/nginx)
function M.temp_paths(n)
  local out = {}
  for _, d in ipairs { "client_body", "proxy", "fastcgi", "uwsgi", "scgi" } do
    out[#out + 1] = ("  %s_temp_path %s/tmp/%s;"):format(d, n.prefix, d)
  end
  return table.concat(out, "\n")
end

-- A whole config: the Lua module loaded, one worker in the foreground, logs and pid in the
-- prefix, acquire.ngx and the LuaJIT acquire.so on Lua's paths (o.lua_path and o.lua_cpath
-- instead: another tree's); o.main goes at the top level, o.http inside http { } (the server
-- blocks).
function M.config(n, o)
  return M.run_as() .. ([[
load_module %s/ndk_http_module.so;
load_module %s/ngx_http_lua_module.so;
daemon off;
master_process on;
worker_processes 1;
error_log %s/error.log info;
pid %s/nginx.pid;
env ACQUIRE_API_KEY;
%s
events { worker_connections 256; }
http {
  access_log off;
%s
  lua_package_path "%s";
  lua_package_cpath "%s";
%s
}
]]):format(M.MODULES, M.MODULES, n.prefix, n.prefix, o.main or "", M.temp_paths(n),
           o.lua_path or ROOT .. "/lua/?.lua;;",
           o.lua_cpath or ROOT .. "/.tmp/luajit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;",
           o.http or "")
end

-- Stops nginx (master, then any worker left) and removes its prefix. Safe to call twice.
function M.stop(n)
  if not n or n.stopped then return end
  n.stopped = true
  if n.pid then
    local kids = slurp(("/proc/%d/task/%d/children"):format(n.pid, n.pid))
    helper.terminate(n.pid, 5)
    for kid in kids:gmatch("%d+") do os.execute("kill -9 " .. kid .. " 2>/dev/null") end
  end
  helper.rmrf(n.prefix)
end

local function launch(n, conf, env)
  for _, m in ipairs { "ndk_http_module.so", "ngx_http_lua_module.so" } do
    assert(io.open(M.MODULES .. "/" .. m), "no " .. M.MODULES .. "/" .. m
      .. ": make test-ngx installs nginx and libnginx-mod-http-lua"):close()
  end
  local out, code = sh("cd " .. helper.shell_quote(ROOT) .. " && make -s .tmp/luajit/acquire.so")
  assert(code == 0, "building the LuaJIT module failed:\n" .. out)
  os.execute("chmod 755 " .. n.prefix .. " && mkdir -p " .. n.prefix .. "/tmp")
  local f = assert(io.open(n.prefix .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  local p = assert(io.popen(("%s nginx -p %s/ -c %s/nginx.conf -e %s/error.log </dev/null >%s/stdout 2>&1 & echo $!")
    :format(env or "", n.prefix, n.prefix, n.prefix, n.prefix)))
  n.pid = tonumber(p:read("*l"))
  p:close()
  assert(n.pid, "nginx did not start")
  local deadline = socket.gettime() + 60        -- a loaded machine: generous, ends when it listens
  while socket.gettime() < deadline do
    if not alive(n.pid) then break end
    local s = socket.tcp()
    s:settimeout(0.2)
    local ok = s:connect("127.0.0.1", n.port)
    s:close()
    if ok then return end
    socket.sleep(0.05)
  end
  error("nginx did not come up on port " .. n.port .. ":\n" .. slurp(n.prefix .. "/stdout")
    .. slurp(n.prefix .. "/error.log"))
end

local Nginx = {}
Nginx.__index = Nginx

function Nginx:log() return slurp(self.prefix .. "/error.log") end
function Nginx:stop() M.stop(self) end

-- POST body to path on nginx: code, text (a stuck handler fails the spec in `timeout` s, not 60).
function Nginx:post(path, body, timeout)
  local chunks = {}
  local _, code = http.request {
    url = self.url .. path, method = "POST",
    source = ltn12.source.string(body),
    headers = { ["content-type"] = "application/json", ["content-length"] = #body },
    sink = ltn12.sink.table(chunks),
    create = function()
      local s = socket.tcp()
      s:settimeout(timeout or 15)
      return s
    end,
  }
  return code, table.concat(chunks)
end

-- Starts nginx with conf_fn(n) as its config; n = { prefix, port, ports, pid, url }.
-- opts.env: "NAME=value ..." for nginx's environment; opts.ports: how many free ports to
-- pick (n.ports; n.port is the first, the one waited for). On any failure nginx is stopped
-- before the error propagates; otherwise the caller's teardown stops it.
function M.start(conf_fn, opts)
  opts = opts or {}
  local n = setmetatable({ prefix = helper.tmpdir(), ports = {} }, Nginx)
  local taken = {}
  for i = 1, opts.ports or 1 do
    local p
    repeat p = helper.free_port() until not taken[p]
    n.ports[i], taken[p] = p, true
  end
  n.port = n.ports[1]
  n.url = "http://127.0.0.1:" .. n.port
  local ok, err = pcall(function() launch(n, conf_fn(n), opts.env) end)
  if not ok then
    M.stop(n)
    error(err, 0)
  end
  return n
end

-- ---- acquire.ngx behind POST /case ------------------------------------------------------

-- The handler: one acquire.ngx client per request (the pool is nginx's, per worker). It takes
-- a JSON body { contact, opts, config, close, logger } and answers
-- { ok, res } | { ok = false, err, text = tostring(err), mt } | { raised = message }, with
-- client = tostring(client) and lines = { { level, line }, ... }: what the logger got, when
-- logger is "collect" (or "raise": it collects, then raises an error naming the key).
local CASE_HANDLER = [[
    local cjson = require "cjson"
    ngx.req.read_body()
    local raw = ngx.req.get_body_data()
    local q = raw and cjson.decode(raw) or {}
    local config = { base_url = ngx.var.acquire_base_url, api_key = os.getenv("ACQUIRE_API_KEY"),
                     timeout = 5, connect_timeout = 2 }
    for k, v in pairs(q.config or {}) do config[k] = v end
    local opts = q.opts
    if opts == cjson.null then opts = nil end
    local lines, shown = {}, nil
    if q.logger then
      config.logger = function(level, line)
        lines[#lines + 1] = { level, line }
        if q.logger == "raise" then error("this logger raises, key " .. tostring(config.api_key)) end
      end
    end
    local out
    local ok, raised = pcall(function()
      local client = require("acquire.ngx").new(config)
      shown = tostring(client)
      if q.close then client:close() end
      local res, err = client:create_case(q.contact or 597752, opts)
      if res then
        out = { ok = true, res = res }
      else
        local copy = {}
        for k, v in pairs(err) do copy[k] = v end
        out = { ok = false, err = copy, text = tostring(err), mt = getmetatable(err) ~= nil }
      end
    end)
    if not ok then out = { raised = tostring(raised) } end
    out.client, out.lines = shown, lines
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(out))
]]

-- nginx with the handler at /case: o.base_url (the handler's default), o.key (its
-- ACQUIRE_API_KEY), o.trusted (lua_ssl_trusted_certificate), o.http (more of the http block),
-- o.main (more of the top level: `env` directives), o.env ("NAME=value ...": more of nginx's
-- environment).
function M.start_cases(o)
  return M.start(function(n)
    return M.config(n, { main = o.main, http = ([[
  lua_ssl_trusted_certificate %s;
  lua_ssl_verify_depth 2;
%s
  server {
    listen 127.0.0.1:%d;
    set $acquire_base_url "%s";
    location = /case { content_by_lua_block { %s } }
  }]]):format(o.trusted or "/etc/ssl/certs/ca-certificates.crt", o.http or "", n.port, o.base_url,
              CASE_HANDLER) })
  end, { env = "ACQUIRE_API_KEY=" .. o.key .. (o.env and " " .. o.env or "") })
end

-- The handler's answer to q (a table or JSON text), decoded; any other answer fails the spec
-- (with the end of nginx's error log).
function Nginx:case(q, timeout)
  local code, out = self:post("/case", type(q) == "string" and q or cjson.encode(q or {}), timeout)
  local ok, doc = pcall(cjson.decode, out)
  assert(code == 200 and ok, ("nginx answered %s: %s\n%s"):format(tostring(code), out,
    self:log():sub(-3000)))
  return doc
end

return M
