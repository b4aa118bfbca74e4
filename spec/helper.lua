-- Starts, controls and stops the local Acquire server for specs.
--
--   local helper = require "spec.helper"
--   local srv = helper.start_server()        -- srv.base_url, srv.key, srv.readonly_key, srv.port
--   srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 1 }
--   srv:requests(), srv:last_request(), srv:stats(), srv:reset(), srv:stop()
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local helper = {}

local function script_dir()
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/[^/]*$") or "."
  local p = io.popen('cd "' .. dir .. '/.." && pwd')
  local root = p:read("*l")
  p:close()
  return root
end

helper.repo_root = script_dir()

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

-- A loopback port with nothing listening on it.
function helper.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function my_pid()
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("*n")
  if f then f:close() end
  return pid
end

local function b64decode(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local map = {}
  for i = 1, #chars do map[chars:byte(i)] = i - 1 end
  local out, bits, n = {}, 0, 0
  for i = 1, #s do
    local v = map[s:byte(i)]
    if v then
      bits = bits * 64 + v
      n = n + 6
      if n >= 8 then
        n = n - 8
        local byte = math.floor(bits / 2 ^ n) % 256
        out[#out + 1] = string.char(byte)
        bits = bits % 2 ^ n
      end
    end
  end
  return table.concat(out)
end
helper.b64decode = b64decode

local function alive(pid)
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

local Server = {}
Server.__index = Server

function Server:call(method, path, body)
  local chunks = {}
  local _, code = http.request{
    url = "http://127.0.0.1:" .. self.control_port .. path,
    method = method,
    source = body and ltn12.source.string(body) or nil,
    headers = body and { ["content-type"] = "application/json", ["content-length"] = #body } or nil,
    sink = ltn12.sink.table(chunks),
  }
  assert(code == 200, ("control %s %s failed: %s"):format(method, path, tostring(code)))
  return cjson.decode(table.concat(chunks))
end

function Server:requests()
  local list = self:call("GET", "/_control/requests").requests
  for _, r in ipairs(list) do
    r.header_list = r.headers
    r.headers = {}
    for _, h in ipairs(r.header_list) do r.headers[h[1]:lower()] = h[2] end
    r.body = b64decode(r.body_b64)
  end
  return list
end

function Server:last_request()
  local list = self:requests()
  return list[#list]
end

function Server:stats() return self:call("GET", "/_control/stats") end
function Server:reset() return self:call("POST", "/_control/reset", "{}") end
function Server:fault(rule) return self:call("POST", "/_control/fault", cjson.encode(rule)) end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  pcall(http.request, { url = "http://127.0.0.1:" .. self.control_port .. "/_control/shutdown", method = "POST",
    source = ltn12.source.string("{}"), headers = { ["content-length"] = 2 } })
  for _ = 1, 100 do
    if not alive(self.pid) then break end
    socket.sleep(0.02)
  end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  os.execute('rm -rf "' .. self.dir .. '"')
end

-- opts.tls: serve https with a certificate made now (srv.ca_file).
function helper.start_server(opts)
  opts = opts or {}
  local p = io.popen("mktemp -d")
  local dir = p:read("*l")
  p:close()
  local args = ""
  local self = setmetatable({ dir = dir, key = "test-key", readonly_key = "readonly-key" }, Server)
  if opts.tls then
    assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 " ..
      "-addext subjectAltName=IP:127.0.0.1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1"):format(dir, dir)))
    args = (" --tls-cert %s/cert.pem --tls-key %s/key.pem"):format(dir, dir)
    self.ca_file = dir .. "/cert.pem"
  end
  local python = os.getenv("PYTHON") or "python3"
  local cmd = ('%s "%s/spec/server/acquire_server.py" --port-file "%s/port" --parent-pid %d%s >"%s/log" 2>&1 &')
    :format(python, helper.repo_root, dir, my_pid() or 1, args, dir)
  os.execute(cmd)
  local line
  for _ = 1, 500 do
    local f = io.open(dir .. "/port")
    if f then line = f:read("*l") f:close() end
    if line then break end
    socket.sleep(0.02)
  end
  if not line then
    error("the local Acquire server did not start:\n" .. (io.open(dir .. "/log") and helper.read_file(dir .. "/log") or ""))
  end
  local port, pid, control = line:match("^(%d+) (%d+) (%d+)")
  self.port, self.pid, self.control_port = tonumber(port), tonumber(pid), tonumber(control)
  self.base_url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. self.port
  return self
end

return helper
