-- Starts, controls and stops the local Acquire server (spec/server/acquire_server.py)
-- for specs; and a few assertions the specs share. Lua 5.1-5.4 and LuaJIT.
--
-- The specs' shell, files and child processes live here too, once.
--
--   local helper = require "spec.helper"
--   local srv = helper.start_server()        -- or { tls = true }: https, srv.ca_file; { host = "::1" }
--   local srv = helper.server()              -- in a describe: started in setup, reset before each
--   srv.port, srv.base_url, srv.key ("test-key"), srv.readonly_key ("readonly-key")
--   srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 1 }
--   srv:requests(), srv:last_request(), srv:stats(), srv:reset(), srv:stop(), srv:client(over)
--   srv:cases() (every stored case), srv:cases_config{ lag_ms = N, hide = { id }, unhide = { id } },
--   srv:config{ unique_ids = true }, srv.create_only_key ("create-only-key": creates, may not read)
--   helper.start_dns{ [name] = ip } -> dns.port, dns.queries(), dns.stop()
--   helper.run(words, opts) -> { code, out, err }; helper.run_lua(code, opts); helper.run_cli(args, opts)
--   helper.spawn(words, opts), helper.spawn_cli(args, opts) -> child { pid, done(), kill(sig), wait() }
--   helper.resolver_env(host, delay_ms, lookups_file): opts.env for a child whose lookups are counted
--   helper.sh(cmd) -> output, exit status; helper.shell_quote(s)
--   helper.read_file(path), helper.slurp(path) (or ""), helper.write_file(path, s), helper.exists(path),
--   helper.tmpdir(), helper.tmpfile(content), helper.rmrf(path), helper.alive(pid), helper.my_pid()
--   helper.requests_by_item(srv), helper.cases_by_item(srv) (items titled "item N")
--   helper.free_port(), helper.unanswered_port(), helper.fixture(name), helper.repo_root, helper.self_signed(dir)
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local helper = {}

-- The API's one endpoint the module posts to (src/core.h ACQ_API_PATH), for every spec.
helper.API_PATH = "/api/v1/crm/messenger/chat/create"

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

-- ---- files and the shell ---------------------------------------------------

function helper.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function helper.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- The file's contents, or "" when there is none (yet).
function helper.slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a") or ""
  f:close()
  return s
end

function helper.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

function helper.fixture(name)
  return helper.read_file(helper.repo_root .. "/spec/fixtures/api/" .. name)
end

-- Runs a shell command: its output (stdout and stderr) and exit status (the status is
-- echoed after the output: Lua 5.1's popen():close() does not return it).
function helper.sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"@@EXIT:$?\""))
  local out = p:read("*a")
  p:close()
  local text, code = out:match("^(.*)@@EXIT:(%d+)%s*$")
  return text or out, tonumber(code)
end

function helper.tmpdir()
  local p = io.popen("mktemp -d")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir:match("^/"), "mktemp -d failed")
  return dir
end

-- A new temporary file (with content, if given); helper.rmrf it when done.
function helper.tmpfile(content)
  local path = os.tmpname()
  if content then helper.write_file(path, content) end
  return path
end

-- Removes a file or a directory tree; only what mktemp or os.tmpname made.
function helper.rmrf(path)
  if path and path:match("^/tmp/") and not path:find("/%.%.") then
    os.execute("rm -rf " .. shell_quote(path))
  end
end

-- ---- processes --------------------------------------------------------------

-- The interpreter running the specs, for child processes.
function helper.interpreter()
  if os.getenv("LUA_BIN") then return os.getenv("LUA_BIN") end
  if rawget(_G, "jit") then return "luajit" end
  return "lua" .. _VERSION:match("%d+%.%d+")
end

-- The path of a spec/support object (a make target under .tmp/), built unless it is there.
local function support_object(target, lua)
  local path = helper.repo_root .. "/" .. target
  if not helper.exists(path) then
    local r = os.execute(("make -s -C %s %s%s >/dev/null"):format(
      shell_quote(helper.repo_root), target, lua and " LUA=" .. lua or ""))
    assert(r == true or r == 0, "building " .. target .. " failed")
  end
  return path
end

-- fork(), waitpid(), _exit(), getpid() (spec/support/testposix.c), built for this Lua.
function helper.testposix()
  local lua = rawget(_G, "jit") and "luajit" or _VERSION:match("%d+%.%d+")
  local path = support_object(".tmp/spec-" .. lua .. "/testposix.so", lua)
  local open = package.loadlib(path, "luaopen_testposix")
  return assert(open, "cannot load " .. path)()
end

-- For helper.run's opts.env: in that child, `host` resolves to 127.0.0.1 after
-- delay_ms, and each lookup of it adds a line to the file `lookups`
-- (spec/support/testresolver.c, preloaded). Other names resolve as usual.
function helper.resolver_env(host, delay_ms, lookups)
  return { LD_PRELOAD = support_object(".tmp/spec/testresolver.so"), ACQ_SPEC_HOST = host,
           ACQ_SPEC_DELAY_MS = tostring(delay_ms), ACQ_SPEC_LOOKUPS = lookups }
end

-- `env` words that give a child the environment helper.run promises: no ACQUIRE_*
-- variable but those in env ({ NAME = value }).
local function env_words(env)
  local words = { "env -u ACQUIRE_API_KEY -u ACQUIRE_ACCOUNT_ID -u ACQUIRE_BASE_URL" }
  local names = {}
  for k in pairs(env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do words[#words + 1] = k .. "=" .. shell_quote(env[k]) end
  return table.concat(words, " ")
end

local function quoted(words)
  local t = {}
  for i, w in ipairs(words) do t[i] = shell_quote(w) end
  return table.concat(t, " ")
end

-- Runs a command (words, each quoted here) as a child process, killed after opts.limit
-- seconds (default 20: a hang fails the spec instead of stalling it). The child's
-- environment has no ACQUIRE_* variable but those in opts.env ({ NAME = value }).
--   opts.dir: its directory (default the repository); opts.stdin: text for its standard input;
--   opts.prefix: shell words before it (ulimit); opts.merge: stderr into out;
--   opts.interrupt: seconds after which it gets SIGINT (Ctrl-C).
-- -> { code = exit status (124: timed out), out = stdout, err = stderr }
function helper.run(words, opts)
  opts = opts or {}
  local dir = helper.tmpdir()
  local cmd = { opts.prefix or "", "cd", shell_quote(opts.dir or helper.repo_root), "|| exit 1;", env_words(opts.env) }
  -- --foreground: timeout stays in our process group, and passes a SIGINT on once, not twice
  cmd[#cmd + 1] = ("timeout --foreground -s KILL %d"):format(opts.limit or 20)
  cmd[#cmd + 1] = quoted(words)
  local stdin = opts.stdin and helper.write_file(dir .. "/in", opts.stdin) or "/dev/null"
  cmd[#cmd + 1] = ("<%s >%s 2>%s"):format(shell_quote(stdin), shell_quote(dir .. "/out"),
    opts.merge and "&1" or shell_quote(dir .. "/err"))
  local line = table.concat(cmd, " ")
  if opts.interrupt then
    line = ("%s & pid=$!; sleep %s; kill -INT $pid; wait $pid"):format(line, opts.interrupt)
  end
  local p = assert(io.popen(line .. "; echo $?"))
  local code = tonumber(p:read("*l"))
  p:close()
  local r = { code = code, out = helper.slurp(dir .. "/out"), err = helper.slurp(dir .. "/err") }
  helper.rmrf(dir)
  if r.code == 137 then r.code = 124 end        -- KILL after the limit
  return r
end

-- Starts a command like helper.run (opts.dir, opts.env, opts.stdin) but returns at once:
-- { pid = the command's own process (it is exec'd: a signal sent to pid reaches it),
--   done() -> whether it has exited, kill(signal), wait([limit = 20 s]) -> { code, out, err } }
-- (code: its exit status, 128 + N when signal N ended it; killed after the limit: 124).
function helper.spawn(words, opts)
  opts = opts or {}
  local dir = helper.tmpdir()
  local stdin = opts.stdin and helper.write_file(dir .. "/in", opts.stdin) or "/dev/null"
  local inner = ("cd %s || exit 1; echo $$ > %s.tmp && mv %s.tmp %s; exec %s %s <%s >%s 2>%s"):format(
    shell_quote(opts.dir or helper.repo_root), shell_quote(dir .. "/pid"), shell_quote(dir .. "/pid"),
    shell_quote(dir .. "/pid"), env_words(opts.env), quoted(words), shell_quote(stdin),
    shell_quote(dir .. "/out"), shell_quote(dir .. "/err"))
  os.execute(("(sh -c %s; echo $? > %s.tmp && mv %s.tmp %s) </dev/null >/dev/null 2>&1 &"):format(
    shell_quote(inner), shell_quote(dir .. "/code"), shell_quote(dir .. "/code"), shell_quote(dir .. "/code")))
  local child = { dir = dir }
  local deadline = socket.gettime() + 60       -- a loaded machine: generous, ends when it started
  repeat
    child.pid = tonumber(helper.slurp(dir .. "/pid"):match("%d+"))
    if child.pid then break end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  assert(child.pid, "helper.spawn: the command did not start")
  function child.done() return helper.exists(dir .. "/code") end
  function child.kill(signal) os.execute(("kill -%s %d 2>/dev/null"):format(signal or "TERM", child.pid)) end
  function child.wait(limit)
    local code
    for _ = 1, math.ceil((limit or 20) / 0.01) do
      code = tonumber(helper.slurp(dir .. "/code"):match("%d+"))
      if code then break end
      socket.sleep(0.01)
    end
    if not code then
      child.kill("KILL")
      for _ = 1, 200 do
        if child.done() then break end
        socket.sleep(0.01)
      end
      code = 124
    end
    local r = { code = code, out = helper.slurp(dir .. "/out"), err = helper.slurp(dir .. "/err") }
    helper.rmrf(dir)
    return r
  end
  return child
end

-- opts with base's variables under opts.env's, for a runner that needs some of its own.
local function with_env(opts, base)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.env = {}
  for k, v in pairs(base) do o.env[k] = v end
  for k, v in pairs(opts and opts.env or {}) do o.env[k] = v end
  return o
end

-- Runs a Lua chunk in a child interpreter (this one, with ./acquire.so and ./lua/),
-- with helper.run's opts. -> exit status, stdout, stderr
function helper.run_lua(code, opts)
  local path = helper.tmpfile(code)
  local r = helper.run({ helper.interpreter(), path },
    with_env(opts, { LUA_CPATH = "./?.so;;", LUA_PATH = "./?.lua;./lua/?.lua;;" }))
  os.remove(path)
  return r.code, r.out, r.err
end

-- bin/acquire-case args with this interpreter, and the environment it finds the checkout's
-- module with, under opts.env's.
local function cli(args, opts)
  local words = { helper.interpreter(), "bin/acquire-case" }
  for _, a in ipairs(args) do words[#words + 1] = a end
  return words, with_env(opts, { LUA_CPATH = "./?.so;;", LUA_PATH = "./lua/?.lua;;" })
end

-- Runs bin/acquire-case args with this interpreter, with helper.run's opts. -> { code, out, err }
function helper.run_cli(args, opts)
  return helper.run(cli(args, opts))
end

-- Starts bin/acquire-case args in the background: helper.spawn's child.
function helper.spawn_cli(args, opts)
  return helper.spawn(cli(args, opts))
end

-- For specs whose items are titled "item N" (the journal's): how many creates the server
-- received for each, requests[N]; and the cases it stored for each, cases[N] = { case, … }.
function helper.requests_by_item(srv)
  local n = {}
  for _, q in ipairs(srv:requests()) do
    local item = q.body:match('"title":"item (%d+)"')
    if item then n[tonumber(item)] = (n[tonumber(item)] or 0) + 1 end
  end
  return n
end

function helper.cases_by_item(srv)
  local by = {}
  for _, c in ipairs(srv:cases()) do
    local item = type(c.title) == "string" and c.title:match("^item (%d+)$")
    if item then
      by[tonumber(item)] = by[tonumber(item)] or {}
      table.insert(by[tonumber(item)], c)
    end
  end
  return by
end

-- A loopback port with nothing listening on it.
function helper.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- A loopback port whose connections never complete: a listener whose backlog is full (never
-- accepted, so the kernel drops further SYNs), for connect timeouts. -> port, close()
function helper.unanswered_port()
  local l = assert(socket.tcp())
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen(0))
  local _, port = l:getsockname()
  local fill = {}
  for i = 1, 4 do
    fill[i] = socket.tcp()
    fill[i]:settimeout(0)
    fill[i]:connect("127.0.0.1", port)
  end
  return tonumber(port), function()
    for _, s in ipairs(fill) do s:close() end
    l:close()
  end
end

-- 1 rather than 1.0 on 5.3+ (lua-cjson 2.1.0 decodes every number as a float).
local function int(n)
  if type(n) == "number" and math.tointeger then return math.tointeger(n) or n end
  return n
end

-- This process's id (nil without /proc).
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
helper.my_pid, helper.alive = my_pid, alive

-- Stops a process we started: SIGTERM, then SIGKILL if it is still there after `grace` s.
local function terminate(pid, grace)
  if not pid then return end
  os.execute("kill " .. pid .. " 2>/dev/null")
  for _ = 1, math.ceil((grace or 1) / 0.02) do
    if not alive(pid) then return end
    socket.sleep(0.02)
  end
  os.execute("kill -9 " .. pid .. " 2>/dev/null")
end
helper.terminate = terminate

-- A self-signed certificate for 127.0.0.1 (its own CA: pass cert as ca_file), made in dir.
function helper.self_signed(dir)
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  local out, code = helper.sh(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 "
    .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s"):format(shell_quote(key), shell_quote(cert)))
  assert(code == 0, "openssl could not make a certificate:\n" .. out)
  return cert, key
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

-- A control call: plain HTTP (with TLS, to the plain control port).
function Server:call(method, path, body)
  local chunks = {}
  local headers
  if body then
    headers = { ["content-type"] = "application/json", ["content-length"] = tostring(#body) }
  end
  local ok, code = http.request{
    url = "http://" .. self.host .. ":" .. self.control_port .. path,
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

local function int_ids(list)
  for i, v in ipairs(list) do list[i] = int(v) end
  return list
end

-- Every case the server stored, hidden or not, ascending ids -> cases, { lag_ms, hidden, visible }
-- (the ids a read sees now).
function Server:cases()
  local r = self:call("GET", "/_control/cases")
  for _, c in ipairs(r.cases) do
    for _, k in ipairs({ "id", "contactId", "threadId", "parentId" }) do c[k] = int(c[k]) end
  end
  int_ids(r.hidden)
  int_ids(r.visible)
  r.lag_ms = int(r.lag_ms)
  return r.cases, r
end

-- t: { lag_ms = N } (a case is read back only N ms after its creation), { hide = { ids } },
-- { unhide = { ids } } (paged out of every read, or back in). -> as srv:cases()
function Server:cases_config(t)
  local r = self:call("POST", "/_control/cases", cjson.encode(t or {}))
  return r.cases, r
end

-- t: { unique_ids = true }: a create's 200 carries the stored case's id (threadId, dateCreated)
-- instead of the documented 2071. Cleared by srv:reset().
function Server:config(t)
  return self:call("POST", "/_control/config", cjson.encode(t or {}))
end

-- rule: { action = ..., contactId = N?, times = N?, delay = s?, ...params }
function Server:fault(rule)
  return self:call("POST", "/_control/fault", cjson.encode(rule))
end

-- A libcurl client of this server: timeout 5, connect_timeout 2, max_retries 2, ca_file
-- (with TLS), and over's options on top.
function Server:client(over)
  local cfg = { base_url = self.base_url, api_key = self.key, timeout = 5, connect_timeout = 2,
                max_retries = 2, ca_file = self.ca_file }
  for k, v in pairs(over or {}) do cfg[k] = v end
  return require("acquire").new(cfg)
end

-- Idempotent: asks the server to stop, kills it after 2 s, removes its files.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  pcall(http.request, {
    url = "http://" .. self.host .. ":" .. self.control_port .. "/_control/shutdown", method = "POST",
    source = ltn12.source.string("{}"),
    headers = { ["content-type"] = "application/json", ["content-length"] = "2" },
    sink = ltn12.sink.null(),
  })
  for _ = 1, 100 do
    if not alive(self.pid) then break end
    socket.sleep(0.02)
  end
  terminate(self.pid)
  helper.rmrf(self.dir)
end

-- Starts `python3 script --port-file F --parent-pid P args...` (the command line of every
-- server in spec/server/) and waits for its port file: -> the file's first line, "PORT PID ...".
-- On failure the server is killed, dir removed, and the error names `what` and has its log.
local function launch(what, script, args, dir)
  local words = { os.getenv("PYTHON") or "python3", script, "--port-file", dir .. "/port" }
  if my_pid() then
    words[#words + 1] = "--parent-pid"
    words[#words + 1] = tostring(my_pid())
  end
  for _, a in ipairs(args or {}) do words[#words + 1] = a end
  for i, w in ipairs(words) do words[i] = shell_quote(w) end
  local p = io.popen(("%s </dev/null >%s 2>&1 & echo $!"):format(table.concat(words, " "),
    shell_quote(dir .. "/log")))
  local launched = tonumber(p:read("*l") or "")
  p:close()
  -- up to 60 s: on a loaded machine (specs run 4 at a time, beside other work) python3
  -- can take seconds to start; the loop ends as soon as the port file is there or it died
  local deadline = socket.gettime() + 60
  while socket.gettime() < deadline do
    local line = helper.slurp(dir .. "/port"):match("^[^\n]+")
    if line and line:match("^%d+ %d+") then return line end
    if launched and not alive(launched) then break end
    socket.sleep(0.02)
  end
  local log = helper.slurp(dir .. "/log")
  terminate(launched)
  helper.rmrf(dir)
  error(what .. " did not start:\n" .. log, 3)
end

-- opts.tls: serve https with a certificate made now (srv.ca_file).
-- opts.host: listen there (default 127.0.0.1; "::1" for IPv6).
-- opts.verbose: the server logs every exchange to its log (srv.dir .. "/log").
-- opts.script, opts.args: another server with the same command line (port
-- file, parent pid, control calls) and its extra arguments, e.g. chaos_server.py.
function helper.start_server(opts)
  opts = opts or {}
  local dir = helper.tmpdir()
  local host = opts.host or "127.0.0.1"
  local url_host = host:find(":") and ("[" .. host .. "]") or host
  local self = setmetatable({ dir = dir, key = "test-key", readonly_key = "readonly-key",
                              create_only_key = "create-only-key", host = url_host }, Server)
  local args = { "--host", host }
  if opts.tls then
    local cert, key = helper.self_signed(dir)
    args[#args + 1], args[#args + 2] = "--tls-cert", cert
    args[#args + 1], args[#args + 2] = "--tls-key", key
    self.ca_file = cert
  end
  if opts.verbose then args[#args + 1] = "--verbose" end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local line = launch("the local Acquire server",
    opts.script or (helper.repo_root .. "/spec/server/acquire_server.py"), args, dir)
  local port, spid, control = line:match("^(%d+) (%d+) ?(%d*)")
  self.port, self.pid = tonumber(port), tonumber(spid)
  self.control_port = tonumber(control) or self.port
  self.base_url = (opts.tls and "https" or "http") .. "://" .. url_host .. ":" .. self.port
  return self
end

-- In a describe block: the local Acquire server for its specs (opts as start_server's),
-- started in setup, reset before each spec, stopped in teardown. It stands for the server
-- from setup on (srv.base_url, srv:fault{...}, ...).
function helper.server(opts)
  local busted = require "busted"
  local real
  local srv = setmetatable({}, {
    __index = function(_, k)
      if not real then error("the local Acquire server starts in setup, not before", 2) end
      return real[k]
    end,
    __newindex = function(_, k, v) real[k] = v end,
  })
  busted.setup(function() real = helper.start_server(opts) end)
  busted.teardown(function() if real then real:stop() end end)
  busted.before_each(function() real:reset() end)
  return srv
end

-- A DNS server on 127.0.0.1 (UDP, spec/server/dns_server.py) for nginx's
-- `resolver 127.0.0.1:<port>`: it answers A queries for the names in answers
-- ({ [name] = "127.0.0.1" }) and no other query, so the resolver waits its timeout.
-- -> { port, pid, queries() (how many it read), stop() }
function helper.start_dns(answers)
  local dir = helper.tmpdir()
  local args = { "--count-file", dir .. "/queries" }
  local names = {}
  for name in pairs(answers or {}) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    args[#args + 1], args[#args + 2] = "--answer", name .. "=" .. answers[name]
  end
  local line = launch("the DNS server", helper.repo_root .. "/spec/server/dns_server.py", args, dir)
  local port, pid = line:match("^(%d+) (%d+)")
  local dns = { port = tonumber(port), pid = tonumber(pid) }
  function dns.queries() return tonumber(helper.slurp(dir .. "/queries")) or 0 end
  function dns.stop()
    terminate(dns.pid)
    helper.rmrf(dir)
  end
  return dns
end

return helper
