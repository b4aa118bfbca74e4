-- Starts and stops a real nginx (Debian's, with its Lua module) for specs, and the small
-- servers nginx talks to in them. Like spec/helper.lua, a helper: spec files open on behaviour.
--
--   local nginx = require "spec.nginx"
--   local n = nginx.start(function(n)                   -- n.port (and n.ports[2..]), n.prefix
--     return nginx.config(n, { http = "server { listen 127.0.0.1:" .. n.port .. "; ... }" })
--   end, { env = "ACQUIRE_API_KEY=k", ports = 2 })
--   n.url, n:post(path, body) -> code, text; n:log() (the error log); nginx.stop(n) (idempotent)
--   nginx.run_as(), nginx.temp_paths(n), nginx.MODULES: for a config written by hand
--   nginx.self_signed(dir) -> cert, key: for `listen ... ssl`, cert as the client's ca_file
--   nginx.raw_server(answers), nginx.dns(answers): upstreams (one that misbehaves on purpose)
--   nginx.sh(cmd) -> output, exit code; nginx.slurp(path) -> contents or ""
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

local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"@@EXIT:$?\""))
  local out = p:read("*a")
  p:close()
  local text, code = out:match("^(.*)@@EXIT:(%d+)\n$")
  return text, tonumber(code)
end
M.sh = sh

local function alive(pid)
  local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return r == true or r == 0
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end
M.slurp = slurp

-- Started as root, nginx runs its workers as nobody, who may not read a checkout under /root:
-- run them as root (a loopback test server). Otherwise nginx keeps the user it has.
function M.run_as()
  local p = io.popen("id -u")
  local uid = p:read("*l")
  p:close()
  return uid == "0" and "user root;\n" or ""
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
-- prefix, acquire.ngx and the LuaJIT acquire.so on Lua's paths; o.main goes at the top level,
-- o.http inside http { } (the server blocks).
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
  lua_package_path "%s/lua/?.lua;;";
  lua_package_cpath "%s/.tmp/luajit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
%s
}
]]):format(M.MODULES, M.MODULES, n.prefix, n.prefix, o.main or "", M.temp_paths(n), ROOT, ROOT,
           o.http or "")
end

-- Stops nginx (master, then any worker left) and removes its prefix. Safe to call twice.
function M.stop(n)
  if not n or n.stopped then return end
  n.stopped = true
  if n.pid then
    local kids = slurp(("/proc/%d/task/%d/children"):format(n.pid, n.pid))
    os.execute("kill " .. n.pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not alive(n.pid) then break end
      socket.sleep(0.05)
    end
    if alive(n.pid) then os.execute("kill -9 " .. n.pid .. " 2>/dev/null") end
    for kid in kids:gmatch("%d+") do os.execute("kill -9 " .. kid .. " 2>/dev/null") end
  end
  if n.prefix and n.prefix:match("/tmp%.%w+$") then os.execute('rm -rf "' .. n.prefix .. '"') end
end

local function launch(n, conf, env)
  for _, m in ipairs { "ndk_http_module.so", "ngx_http_lua_module.so" } do
    assert(io.open(M.MODULES .. "/" .. m), "no " .. M.MODULES .. "/" .. m
      .. ": make test-ngx installs nginx and libnginx-mod-http-lua"):close()
  end
  local out, code = sh("cd '" .. ROOT .. "' && make -s .tmp/luajit/acquire.so")
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
  for _ = 1, 200 do
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

-- A self-signed certificate for 127.0.0.1 (its own CA: pass cert as ca_file), made in dir.
function M.self_signed(dir)
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  local out, code = sh(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 "
    .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s"):format(key, cert))
  assert(code == 0, "openssl could not make a certificate:\n" .. out)
  return cert, key
end

-- ---- upstreams that misbehave on purpose --------------------------------------------------

-- Runs a small Python server from source: { pid, dir, port, stop(), file(name) }. It writes
-- its port to argv[1]/port once it listens.
local function python_server(source, files)
  local dir = helper.tmpdir()
  local f = assert(io.open(dir .. "/server.py", "w"))
  f:write(source)
  f:close()
  for name, text in pairs(files or {}) do
    f = assert(io.open(dir .. "/" .. name, "w"))
    f:write(text)
    f:close()
  end
  local p = assert(io.popen(('%s %s/server.py %s </dev/null >%s/log 2>&1 & echo $!')
    :format(os.getenv("PYTHON") or "python3", dir, dir, dir)))
  local s = { pid = tonumber(p:read("*l")), dir = dir }
  p:close()
  function s.stop()
    if s.pid then os.execute("kill " .. s.pid .. " 2>/dev/null") end
    os.execute('rm -rf "' .. dir .. '"')
  end
  function s.file(name) return slurp(dir .. "/" .. name) end
  for _ = 1, 250 do
    s.port = tonumber(slurp(dir .. "/port"))
    if s.port then return s end
    socket.sleep(0.02)
  end
  local log = slurp(dir .. "/log")
  s.stop()
  error("the test server did not start: " .. log)
end

-- A raw HTTP server for framings the local Acquire server does not produce: it answers the
-- requests it reads, in order, with the given bytes ({ raw = "...", close = true? }, or
-- { parts = { "...", ... } } written one by one 50 ms apart), and counts its connections.
local RAW_SERVER = [==[
import json, os, socket, sys, threading, time
d = sys.argv[1]
answers = json.load(open(d + "/answers.json"))
lock, state = threading.Lock(), {"next": 0, "conns": 0}
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(32)
with open(d + "/port.tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
os.rename(d + "/port.tmp", d + "/port")
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = c.makefile("rb")
    while True:
        line, n = f.readline(), 0
        if not line:
            break
        while line not in (b"\r\n", b"\n", b""):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
            line = f.readline()
        f.read(n)
        with lock:
            a = answers[state["next"]]
            state["next"] += 1
        if "parts" in a:
            for p in a["parts"]:
                c.sendall(p.encode("latin-1"))
                time.sleep(0.05)
        else:
            c.sendall(a["raw"].encode("latin-1"))
        if a.get("close"):
            break
    c.close()
while True:
    c, _ = srv.accept()
    with lock:
        state["conns"] += 1
        with open(d + "/conns", "w") as f:
            f.write(str(state["conns"]))
    threading.Thread(target=serve, args=(c,), daemon=True).start()
]==]

function M.raw_server(answers)
  local s = python_server(RAW_SERVER, { ["answers.json"] = cjson.encode(answers) })
  function s.conns() return tonumber(s.file("conns")) or 0 end
  return s
end

-- A DNS server on 127.0.0.1 (UDP) for nginx's `resolver 127.0.0.1:<port>`: it answers A
-- queries for the names in `answers` ({ [name] = "127.0.0.1" }) and never answers any other
-- query, so nginx waits its resolver_timeout. s.queries() counts the queries it read.
local DNS_SERVER = [==[
import json, os, socket, struct, sys
d = sys.argv[1]
answers = json.load(open(d + "/answers.json"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
with open(d + "/port.tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(d + "/port.tmp", d + "/port")
n = 0
while True:
    q, peer = s.recvfrom(4096)
    n += 1
    with open(d + "/queries.tmp", "w") as f:
        f.write(str(n))
    os.rename(d + "/queries.tmp", d + "/queries")
    labels, i = [], 12
    while i < len(q) and q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
        i += 1 + q[i]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0] if i + 3 <= len(q) else 0
    ip = answers.get(".".join(labels).lower())
    if ip is None or qtype != 1:
        continue                                   # silence
    question = q[12:i + 5]
    head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
    s.sendto(head + question + rr, peer)
]==]

function M.dns(answers)
  local s = python_server(DNS_SERVER, { ["answers.json"] = cjson.encode(answers or {}) })
  function s.queries() return tonumber(s.file("queries")) or 0 end
  return s
end

return M
