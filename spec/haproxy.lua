-- Starts and stops a real haproxy (Debian's 2.6, Lua 5.3) for specs. Like spec/nginx.lua, a
-- helper: spec files open on behaviour.
--
--   local launcher = require "spec.haproxy"
--   local h = launcher.start_cases{ base_url =, key =, extra = "listen ... (more config)",
--                                   ports = N, global = "nbthread 1 (more global lines)" }
--   h.url, h.ports (h.port first: the service's; the others free for `extra`), h:case{ contact =,
--     opts =, config =, close =, logger =, find =, shared = } -> what the service answered, decoded;
--   h:cases{ q, ... } -> the answers to several such requests sent at once (one applet each: the
--     way to run calls side by side, a service running one request at a time);
--   h:log() (haproxy's stderr: its alerts and core.log lines); launcher.stop(h) (idempotent)
--
-- The service (POST /case, JSON in and out) makes one acquire.haproxy client a request (or, with
-- shared = name, uses the one client kept under that name, made by the first request naming it,
-- so its claims span requests): { ok, res } | { ok = false, err, text = tostring(err), mt } |
-- { raised = message }, with client = tostring(client), elapsed = the call's seconds (core.now),
-- and lines = { { level, line }, ... } when logger is "collect".
-- haproxy runs Lua 5.3: start() builds .tmp/lua5.3/acquire.so first (make). Only 127.0.0.1.
local helper = require "spec.helper"
local cjson = require "cjson"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local M = {}
local ROOT = helper.repo_root
local slurp, alive = helper.slurp, helper.alive

M.SERVICE = [[
local cjson = require "cjson"
local shared = {}                      -- name -> the client requests naming it share
local function now() local t = core.now() return t.sec + t.usec / 1e6 end
core.register_service("acquire_case", "http", function(applet)
  local raw = applet:receive()
  local q = raw and raw ~= "" and cjson.decode(raw) or {}
  local config = { base_url = os.getenv("ACQUIRE_BASE_URL"), api_key = os.getenv("ACQUIRE_API_KEY"),
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
  local out, t0, t1
  local ok, raised = pcall(function()
    local client = q.shared and shared[q.shared] or require("acquire.haproxy").new(config)
    if q.shared then shared[q.shared] = client end
    shown = tostring(client)
    if q.close then client:close() end
    local res, err
    t0 = now()
    if q.find then res, err = client:find_cases(q.contact or 597752)
    else res, err = client:create_case(q.contact or 597752, opts) end
    t1 = now()
    if res then
      out = { ok = true, res = res }
    else
      local copy = {}
      for k, v in pairs(err) do copy[k] = v end
      out = { ok = false, err = copy, text = tostring(err), mt = getmetatable(err) ~= nil }
    end
  end)
  if not ok then out = { raised = tostring(raised) } end
  out.client, out.lines, out.elapsed = shown, lines, t0 and (t1 or now()) - t0
  local encoded, body = pcall(cjson.encode, out)
  if not encoded then body = cjson.encode { raised = "encoding the answer: " .. tostring(body) } end
  applet:set_status(200)
  applet:add_header("content-type", "application/json")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
]]

-- A whole config: Lua 5.3's acquire.so and lua/?.lua first on the paths, lua_file loaded, the
-- service behind POST /case on h.port; global added to the global section (before lua-load),
-- extra appended (more listeners).
function M.config(h, lua_file, extra, global)
  return ([[
global
  lua-prepend-path %s/lua/?.lua
  lua-prepend-path %s/.tmp/lua5.3/?.so cpath
  setenv ACQUIRE_BASE_URL %s
  %s
  lua-load %s
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend cases
  bind 127.0.0.1:%d
  http-request use-service lua.acquire_case
%s
]]):format(ROOT, ROOT, h.base_url, global or "", lua_file, h.port, extra or "")
end

function M.stop(h)
  if not h or h.stopped then return end
  h.stopped = true
  if h.pid then helper.terminate(h.pid, 5) end
  helper.rmrf(h.prefix)
end

local Haproxy = {}
Haproxy.__index = Haproxy

function Haproxy:log() return slurp(self.prefix .. "/stderr") end
function Haproxy:stop() M.stop(self) end

-- POST body to path: code, text (a stuck service fails the spec in `timeout` s).
function Haproxy:post(path, body, timeout)
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

function Haproxy:case(q, timeout)
  local code, out = self:post("/case", type(q) == "string" and q or cjson.encode(q or {}), timeout)
  local ok, doc = pcall(cjson.decode, out)
  assert(code == 200 and ok, ("haproxy answered %s: %s\n%s"):format(tostring(code), out,
    self:log():sub(-3000)))
  return doc
end

-- Each q (a table or JSON text) POSTed to /case at once, each on its own connection, so each
-- runs in its own applet: the answers, decoded, in order (a stuck service fails the spec in
-- `timeout` s, and any answer that is not 200 and JSON fails it with haproxy's log).
function Haproxy:cases(list, timeout)
  local socks = {}
  for i, q in ipairs(list) do
    local body = type(q) == "string" and q or cjson.encode(q)
    local s = socket.tcp()
    s:settimeout(timeout or 15)
    assert(s:connect("127.0.0.1", self.port))
    assert(s:send(("POST /case HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(#body, body)))
    socks[i] = s
  end
  local docs = {}
  for i, s in ipairs(socks) do
    local text, e = s:receive("*a")
    s:close()
    local code, json = (text or ""):match("^HTTP/1%.%d (%d+).-\r\n\r\n(.*)$")
    local ok, doc = pcall(cjson.decode, json or "")
    assert(code == "200" and ok, ("haproxy answered request %d of %d with %s: %s\n%s"):format(i, #list,
      tostring(code or e), tostring(text), self:log():sub(-3000)))
    docs[i] = doc
  end
  return docs
end

local function launch(h, o)
  local out, code = helper.sh("cd " .. helper.shell_quote(ROOT) .. " && make -s .tmp/lua5.3/acquire.so")
  assert(code == 0, "building the Lua 5.3 module failed:\n" .. out)
  assert(io.open("/usr/sbin/haproxy"), "no /usr/sbin/haproxy: make test-haproxy installs it"):close()
  local lua_file = h.prefix .. "/service.lua"
  local f = assert(io.open(lua_file, "w"))
  f:write(o.service or M.SERVICE)
  f:close()
  local extra = type(o.extra) == "function" and o.extra(h) or o.extra
  f = assert(io.open(h.prefix .. "/haproxy.cfg", "w"))
  f:write(M.config(h, lua_file, extra, o.global))
  f:close()
  local p = assert(io.popen(("ACQUIRE_API_KEY=%s /usr/sbin/haproxy -f %s/haproxy.cfg -db </dev/null >%s/stderr 2>&1 & echo $!")
    :format(helper.shell_quote(o.key), h.prefix, h.prefix)))
  h.pid = tonumber(p:read("*l"))
  p:close()
  assert(h.pid, "haproxy did not start")
  local deadline = socket.gettime() + 60        -- a loaded machine: generous, ends when it listens
  while socket.gettime() < deadline do
    if not alive(h.pid) then break end
    local s = socket.tcp()
    s:settimeout(0.2)
    local ok = s:connect("127.0.0.1", h.port)
    s:close()
    if ok then return end
    socket.sleep(0.05)
  end
  error("haproxy did not come up on port " .. h.port .. ":\n" .. slurp(h.prefix .. "/stderr"))
end

-- haproxy with the service: o.base_url (the service's default), o.key (its ACQUIRE_API_KEY),
-- o.extra (config text, or function(h) -> text, appended), o.ports (how many free ports),
-- o.service (another Lua file's text), o.global (lines for the global section, before lua-load). Stopped before the error propagates on any failure.
function M.start_cases(o)
  local h = setmetatable({ prefix = helper.tmpdir(), ports = {}, base_url = o.base_url }, Haproxy)
  local taken = {}
  for i = 1, o.ports or 1 do
    local p
    repeat p = helper.free_port() until not taken[p]
    h.ports[i], taken[p] = p, true
  end
  h.port = h.ports[1]
  h.url = "http://127.0.0.1:" .. h.port
  local ok, err = pcall(launch, h, o)
  if not ok then
    M.stop(h)
    error(err, 0)
  end
  return h
end

return M
