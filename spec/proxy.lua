-- Starts and stops a real HTTP proxy (Debian's tinyproxy) on loopback for specs. Like
-- spec/helper.lua, a helper: spec files open on behaviour.
--
--   local proxy = require "spec.proxy"
--   local p = proxy.start()                    -- or { auth = "user:pass" }: 407 without them
--   p.port, p.url ("http://127.0.0.1:PORT"), p.host
--   p.requests() -> the request lines it read, in order: "CONNECT 127.0.0.1:8443 HTTP/1.1",
--     "POST http://127.0.0.1:8080/api/... HTTP/1.1" (logged on arrival, before its BasicAuth check)
--   p.connects() -> how many CONNECTs it read; p.log() -> its whole log
--   p.stop()                                   -- idempotent; in a finally or teardown
--   proxy.dead() -> a loopback proxy URL where nothing listens
--   proxy.USER, proxy.PASS: credentials for { auth = proxy.USER .. ":" .. proxy.PASS };
--   proxy.no_secret(s, what): raises when s holds the local server's key or those credentials
--
-- Options: auth = "user:pass" (tinyproxy's BasicAuth: user and password of letters, digits,
-- '.', '_' and '-' only: Debian 12's 1.11.1 refuses its config otherwise); connect_ports =
-- { 443 } (CONNECT to any other port is answered 403; default: every port); host = "::1".
-- How it answers what a spec may want to provoke:
--   CONNECT to a port where nothing listens      -> "HTTP/1.0 500 Unable to connect"
--   CONNECT or a request without the credentials -> 407 (with auth)
--   CONNECT or a request with wrong credentials  -> 401 (not 407: tinyproxy 1.11.1's own answer)
--   CONNECT to a port not in connect_ports        -> 403
-- tinyproxy closes the client's connection after each absolute-form request (no keep-alive
-- towards the client), and after a refusal without reading the request's body: the client may
-- then see a reset after the answer, not a clean close. A CONNECT tunnel lives until either side
-- closes it (idle Timeout 60 s).
-- It dies with the process that started it (a watchdog shell), if a spec forgets stop().
local helper = require "spec.helper"
local socket = require "socket"

local M = {}
local q = helper.shell_quote

local function connectable(host, port)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect(host, port)
  c:close()
  return ok ~= nil
end

local function config(dir, port, opts)
  local lines = {
    "Port " .. port,
    "Listen " .. opts.host,
    "Timeout 60",
    ("LogFile %q"):format(dir .. "/log"),
    "LogLevel Info",       -- Connect: the CONNECT-level lines (Request ...) are above Info
    "MaxClients 64",
    "Allow " .. opts.host,
    -- it logs its pid file's failure only: keep it in the temp dir
    ("PidFile %q"):format(dir .. "/pid"),
  }
  if opts.auth then
    local user, pass = opts.auth:match("^([%w%._%-]+):([%w%._%-]+)$")
    assert(user, "spec/proxy: auth must be user:pass, letters, digits, '.', '_' and '-' only")
    lines[#lines + 1] = ("BasicAuth %s %s"):format(user, pass)
  end
  for _, p in ipairs(opts.connect_ports or {}) do lines[#lines + 1] = "ConnectPort " .. p end
  return table.concat(lines, "\n") .. "\n"
end

-- The request lines in a tinyproxy log: "Request (file descriptor 5): CONNECT h:p HTTP/1.1".
local function request_lines(log)
  local out = {}
  for line in log:gmatch("[^\n]+") do
    local r = line:match("^CONNECT%s.-%]: Request %(file descriptor %d+%): (.*)$")
    if r then out[#out + 1] = r end
  end
  return out
end
M.request_lines = request_lines

local function launch(dir, port, opts)
  helper.write_file(dir .. "/tinyproxy.conf", config(dir, port, opts))
  -- The watchdog shell stops tinyproxy when the spec's process is gone.
  local parent = helper.my_pid()
  local watch = parent and ("while kill -0 %d 2>/dev/null; do sleep 0.5; done; kill $tp 2>/dev/null; wait $tp; rm -rf %s")
    :format(parent, q(dir)) or "wait $tp"
  local script = ("tinyproxy -d -c %s >%s 2>&1 </dev/null & tp=$!; echo $tp >%s; %s"):format(
    q(dir .. "/tinyproxy.conf"), q(dir .. "/out"), q(dir .. "/tp.pid"), watch)
  local p = io.popen(("sh -c %s </dev/null >/dev/null 2>&1 & echo $!"):format(q(script)))
  local watchdog = tonumber(p:read("*l") or "")
  p:close()
  local pid
  local deadline = socket.gettime() + 30               -- ends when it listens, or exits (port taken)
  while socket.gettime() < deadline do
    pid = pid or tonumber(helper.slurp(dir .. "/tp.pid"):match("%d+") or "")
    if pid and connectable(opts.host, port) then return pid, watchdog end
    if pid and not helper.alive(pid) then break end
    socket.sleep(0.02)
  end
  helper.terminate(pid)
  helper.terminate(watchdog)
  return nil, helper.slurp(dir .. "/out") .. helper.slurp(dir .. "/log")
end

function M.start(opts)
  opts = opts or {}
  local o = { auth = opts.auth, connect_ports = opts.connect_ports, host = opts.host or "127.0.0.1" }
  local dir = helper.tmpdir()
  local pid, watchdog, port
  for _ = 1, 5 do                     -- a free port may be taken before tinyproxy binds it
    port = helper.free_port()
    pid, watchdog = launch(dir, port, o)
    if pid then break end
  end
  if not pid then
    helper.rmrf(dir)
    error("tinyproxy did not start:\n" .. tostring(watchdog), 2)
  end
  local url_host = o.host:find(":") and ("[" .. o.host .. "]") or o.host
  local p = { port = port, host = url_host, url = "http://" .. url_host .. ":" .. port, dir = dir, pid = pid }
  function p.log() return helper.slurp(dir .. "/log") end
  function p.requests() return request_lines(p.log()) end
  function p.connects()
    local n = 0
    for _, r in ipairs(p.requests()) do
      if r:match("^CONNECT ") then n = n + 1 end
    end
    return n
  end
  local stopped = false
  function p.stop()
    if stopped then return end
    stopped = true
    helper.terminate(pid)
    helper.terminate(watchdog)
    helper.rmrf(dir)
  end
  return p
end

M.USER, M.PASS = "agent.smith", "s3cr3t-Pr0xy"

-- Raises, naming what (and at the caller's caller), when s holds a secret: the local Acquire
-- server's key (spec/helper's "test-key") or the credentials above, raw or as user:pass.
function M.no_secret(s, what)
  for _, secret in ipairs { "test-key", M.PASS, M.USER .. ":" .. M.PASS } do
    if s:find(secret, 1, true) then
      error(("%s holds a secret (%s):\n%s"):format(what, secret, s), 2)
    end
  end
end

-- A proxy URL on loopback where nothing listens (connections refused).
function M.dead()
  return "http://127.0.0.1:" .. helper.free_port()
end

return M
