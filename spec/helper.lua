-- Starts, controls and stops the local Acquire server (spec/server/acquire_server.py)
-- for specs; and a few assertions the specs share. Lua 5.1-5.4 and LuaJIT.
--
--   local helper = require "spec.helper"
--   local srv = helper.start_server()        -- or { tls = true }: https, srv.ca_file
--   srv.port, srv.base_url, srv.key ("test-key"), srv.readonly_key ("readonly-key")
--   srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 1 }
--   srv:requests(), srv:last_request(), srv:stats(), srv:reset(), srv:stop()
--   helper.free_port(), helper.read_file(path), helper.fixture(name), helper.repo_root
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local helper = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.shell_quote = shell_quote

-- The repository: the directory above this file's.
local function find_root()
  local src = debug.getinfo(1, "S").source
  src = src:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) == "/" and not dir:find("/%.%.?/") and not dir:find("/%.%.?$") then
    return (dir:gsub("/[^/]+$", ""))
  end
  local p = io.popen("cd " .. shell_quote(dir .. "/..") .. " && pwd")
  local root = p:read("*l")
  p:close()
  return root
end

helper.repo_root = find_root()

function helper.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function helper.fixture(name)
  return helper.read_file(helper.repo_root .. "/spec/fixtures/api/" .. name)
end

function helper.tmpdir()
  local p = io.popen("mktemp -d")
  local dir = p:read("*l")
  p:close()
  return dir
end

-- The interpreter running the specs, for child processes.
function helper.interpreter()
  if os.getenv("LUA_BIN") then return os.getenv("LUA_BIN") end
  if rawget(_G, "jit") then return "luajit" end
  return "lua" .. _VERSION:match("%d+%.%d+")
end

-- fork(), waitpid(), _exit(), getpid() (spec/support/testposix.c), built for this Lua.
function helper.testposix()
  local lua = rawget(_G, "jit") and "luajit" or _VERSION:match("%d+%.%d+")
  local dir = helper.repo_root .. "/.tmp/spec-" .. lua
  local built = io.open(dir .. "/testposix.so")
  if built then
    built:close()
  else
    local r = os.execute(("make -s -C %s .tmp/spec-%s/testposix.so LUA=%s >/dev/null"):format(
      shell_quote(helper.repo_root), lua, lua))
    assert(r == true or r == 0, "building spec/support/testposix.c failed")
  end
  local open = package.loadlib(dir .. "/testposix.so", "luaopen_testposix")
  return assert(open, "cannot load " .. dir .. "/testposix.so")()
end

-- Runs a Lua chunk in a child interpreter (this one, with ./acquire.so), killed after
-- `limit` seconds (default 20) so that a hang fails the spec instead of stalling it.
-- prefix: shell words before the interpreter (ulimit, env). -> exit status, stdout, stderr
-- (124: timed out).
function helper.run_lua(code, limit, prefix)
  local dir = helper.tmpdir()
  local f = assert(io.open(dir .. "/chunk.lua", "wb"))
  f:write(code)
  f:close()
  local cmd = ("cd %s && %s LUA_CPATH='./?.so;;' LUA_PATH='./?.lua;./lua/?.lua;;' timeout -s KILL %d %s %s"
    .. " >%s 2>%s </dev/null; echo $?"):format(
    shell_quote(helper.repo_root), prefix or "", limit or 20, helper.interpreter(),
    shell_quote(dir .. "/chunk.lua"), shell_quote(dir .. "/out"), shell_quote(dir .. "/err"))
  local p = io.popen(cmd)
  local status = tonumber(p:read("*l"))
  p:close()
  local out, err = helper.read_file(dir .. "/out"), helper.read_file(dir .. "/err")
  os.execute("rm -rf " .. shell_quote(dir))
  if status == 137 then status = 124 end        -- KILL after the limit
  return status, out, err
end

-- A loopback port with nothing listening on it.
function helper.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- 1 rather than 1.0 on 5.3+ (lua-cjson 2.1.0 decodes every number as a float).
local function int(n)
  if type(n) == "number" and math.tointeger then return math.tointeger(n) or n end
  return n
end

local function my_pid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local line = f:read("*l")
  f:close()
  return line and tonumber(line:match("^(%d+)"))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for i = 1, #B64 do B64_VALUE[B64:sub(i, i)] = i - 1 end

-- Standard base64 (padding optional, other characters ignored) to bytes.
local function b64decode(s)
  s = s:gsub("[^%w%+/]", "")
  local out = {}
  for i = 1, #s, 4 do
    local a, b, c, d = s:sub(i, i), s:sub(i + 1, i + 1), s:sub(i + 2, i + 2), s:sub(i + 3, i + 3)
    local n = B64_VALUE[a] * 262144 + (B64_VALUE[b] or 0) * 4096
      + (B64_VALUE[c] or 0) * 64 + (B64_VALUE[d] or 0)
    local b1 = math.floor(n / 65536)
    local b2 = math.floor(n / 256) % 256
    local b3 = n % 256
    if d ~= "" then
      out[#out + 1] = string.char(b1, b2, b3)
    elseif c ~= "" then
      out[#out + 1] = string.char(b1, b2)
    elseif b ~= "" then
      out[#out + 1] = string.char(b1)
    end
  end
  return table.concat(out)
end
helper.b64decode = b64decode

-- Is the process alive (a zombie is not)?
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if f then
    local stat = f:read("*a") or ""
    f:close()
    local state = stat:match("^.*%)%s+(%S)")
    return state ~= "Z" and state ~= "X"
  end
  local self_stat = io.open("/proc/self/stat")
  if self_stat then self_stat:close() return false end   -- /proc works: no such pid
  local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return r == true or r == 0          -- 5.2+ / 5.1
end

-- ---- shared assertions (plain error(), so they work anywhere) ----------

-- Calls fn(...), which must raise a string; returns it.
function helper.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error, got none", 2) end
  if type(err) ~= "string" then error("error value should be a string, got " .. type(err), 2) end
  return err
end

function helper.contains(haystack, needle)
  if not string.find(haystack, needle, 1, true) then
    error(("expected %q to contain %q"):format(haystack, needle), 2)
  end
end

function helper.not_contains(haystack, needle)
  if string.find(haystack, needle, 1, true) then
    error(("expected %q not to contain %q"):format(haystack, needle), 2)
  end
end

-- The documented request (spec/fixtures/api/create-case-request.json) as
-- opts, and the exact bytes the module writes for it.
function helper.documented_opts()
  return {
    title = "string", source = "firstMessage", mentionUsers = { "00" },
    message = "I'm reopening the closed case", channel = "chat",
    routeAgentId = 0, agentId = 0, isFromCobrowse = true, fields = {},
  }
end
helper.DOCUMENTED_BODY = '{"title":"string","source":"firstMessage","mentionUsers":["00"],'
  .. '"message":{"type":"message","message":"I\'m reopening the closed case","translateLangKey":""},'
  .. '"channel":"chat","routeAgentId":0,"agentId":0,"isFromCobrowse":true,"fields":{}}'

-- ---- the server ----------------------------------------------------------

local Server = {}
Server.__index = Server

-- A control call: plain HTTP to 127.0.0.1 (with TLS, the plain control port).
function Server:call(method, path, body)
  local chunks = {}
  local headers
  if body then
    headers = { ["content-type"] = "application/json", ["content-length"] = tostring(#body) }
  end
  local ok, code = http.request{
    url = "http://127.0.0.1:" .. self.control_port .. path,
    method = method,
    source = body and ltn12.source.string(body) or nil,
    headers = headers,
    sink = ltn12.sink.table(chunks),
  }
  local text = table.concat(chunks)
  if not ok or code ~= 200 then
    error(("local Acquire server: control %s %s failed: %s %s"):format(method, path, tostring(code), text), 2)
  end
  return cjson.decode(text)
end

function Server:requests()
  local list = self:call("GET", "/_control/requests").requests
  for _, r in ipairs(list) do
    r.seq, r.connection = int(r.seq), int(r.connection)
    r.header_list = r.headers
    r.headers = {}
    for _, h in ipairs(r.header_list) do
      local name = h[1]:lower()
      -- a repeated header: its values joined, as HTTP allows
      r.headers[name] = r.headers[name] and (r.headers[name] .. ", " .. h[2]) or h[2]
    end
    r.body = b64decode(r.body_b64)
  end
  return list
end

function Server:last_request()
  local list = self:requests()
  return list[#list]
end

function Server:stats()
  local s = self:call("GET", "/_control/stats")
  for k, v in pairs(s) do s[k] = int(v) end
  return s
end

function Server:reset() return self:call("POST", "/_control/reset", "{}") end

-- rule: { action = ..., contactId = N?, times = N?, delay = s?, ...params }
function Server:fault(rule)
  return self:call("POST", "/_control/fault", cjson.encode(rule))
end

-- Idempotent: asks the server to stop, kills it after 2 s, removes its files.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  pcall(http.request, {
    url = "http://127.0.0.1:" .. self.control_port .. "/_control/shutdown", method = "POST",
    source = ltn12.source.string("{}"),
    headers = { ["content-type"] = "application/json", ["content-length"] = "2" },
    sink = ltn12.sink.null(),
  })
  local gone = false
  for _ = 1, 100 do
    if not alive(self.pid) then gone = true break end
    socket.sleep(0.02)
  end
  if not gone then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    for _ = 1, 50 do
      if not alive(self.pid) then gone = true break end
      socket.sleep(0.02)
    end
    if not gone then os.execute("kill -9 " .. self.pid .. " 2>/dev/null") end
  end
  os.execute("rm -rf " .. shell_quote(self.dir))
end

-- opts.tls: serve https with a certificate made now (srv.ca_file).
-- opts.verbose: the server logs every exchange to its log (srv.dir .. "/log").
-- opts.script, opts.args: another server with the same command line (port
-- file, parent pid, control calls) and its extra arguments, e.g. chaos_server.py.
function helper.start_server(opts)
  opts = opts or {}
  local dir = helper.tmpdir()
  assert(dir and dir ~= "", "mktemp -d failed")
  local self = setmetatable({ dir = dir, key = "test-key", readonly_key = "readonly-key" }, Server)
  local args = ""
  if opts.tls then
    local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
    local r = os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 "
      .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s >%s 2>&1")
      :format(shell_quote(key), shell_quote(cert), shell_quote(dir .. "/openssl.log")))
    if not (r == true or r == 0) then
      error("openssl could not make a certificate:\n" .. helper.read_file(dir .. "/openssl.log"))
    end
    args = (" --tls-cert %s --tls-key %s"):format(shell_quote(cert), shell_quote(key))
    self.ca_file = cert
  end
  if opts.verbose then args = args .. " --verbose" end
  for _, a in ipairs(opts.args or {}) do args = args .. " " .. shell_quote(a) end
  local pid = my_pid()
  if pid then args = args .. " --parent-pid " .. pid end
  local python = os.getenv("PYTHON") or "python3"
  local port_file, log = dir .. "/port", dir .. "/log"
  local cmd = ("%s %s --port-file %s%s </dev/null >%s 2>&1 & echo $!"):format(
    python, shell_quote(opts.script or (helper.repo_root .. "/spec/server/acquire_server.py")),
    shell_quote(port_file), args, shell_quote(log))
  local p = io.popen(cmd)
  local launched = tonumber(p:read("*l") or "")
  p:close()
  local line
  for _ = 1, 500 do                  -- 10 s
    local f = io.open(port_file)
    if f then line = f:read("*l") f:close() end
    if line and line:match("^%d+ %d+") then break end
    line = nil
    if launched and not alive(launched) then break end
    socket.sleep(0.02)
  end
  if not line then
    local f = io.open(log)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    if launched then os.execute("kill " .. launched .. " 2>/dev/null") end
    os.execute("rm -rf " .. shell_quote(dir))
    error("the local Acquire server did not start:\n" .. text, 2)
  end
  local port, spid, control = line:match("^(%d+) (%d+) ?(%d*)")
  self.port, self.pid = tonumber(port), tonumber(spid)
  self.control_port = tonumber(control) or self.port
  self.base_url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. self.port
  return self
end

return helper
