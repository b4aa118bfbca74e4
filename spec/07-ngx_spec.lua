-- acquire.ngx inside a real nginx (Debian's, with its Lua module), whose
-- handler creates cases against the local Acquire server: the same results
-- and errors as the libcurl client, keep-alive pools, retries, and 20
-- concurrent requests on one worker that do not wait for each other.
local acquire = require "acquire"
local helper = require "spec.helper"
local cjson = require "cjson"
local socket = require "socket"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"@@EXIT:$?\""))
  local out = p:read("*a")
  p:close()
  local text, code = out:match("^(.*)@@EXIT:(%d+)\n$")
  return text, tonumber(code)
end

local function start_nginx(srv)
  local root = helper.repo_root
  local out, code = sh("cd " .. root .. " && make -s .tmp/luajit/acquire.so")
  assert(code == 0, "building the LuaJIT module failed: " .. out)
  local prefix = helper.tmpdir()
  os.execute("chmod 755 " .. prefix .. " && mkdir -p " .. prefix .. "/logs " .. prefix .. "/tmp")
  local port = helper.free_port()
  local handler = ([[
    local cjson = require "cjson"
    local acquire = require "acquire"
    local args = ngx.req.get_uri_args()
    local client = require("acquire.ngx").new{
      base_url = args.base_url or %q, api_key = args.key or %q,
      timeout = 5, connect_timeout = 2, max_retries = 2 }
    local res, err = client:create_case(tonumber(args.contact) or 597752, args.title and { title = args.title } or nil)
    ngx.header["Content-Type"] = "application/json"
    if res then
      local f = acquire.fields(res.data.contact)
      ngx.say(cjson.encode{ ok = true, id = res.data.id, contact = res.data.contact.id, title = res.data.title,
        visits = #res.data.contact.visits, fields = #res.data.contact.fields, ip = f.ip,
        company_is_null = res.data.contact.company == acquire.null,
        engine = res.data.contact.clientDetails.engine.name })
    else
      ngx.say(cjson.encode{ ok = false, kind = err.kind, status = err.status, type = err.type or cjson.null,
        maybe_created = err.maybe_created, attempts = err.attempts, text = tostring(err) })
    end
  ]]):format(srv.base_url, srv.key)
  local conf = ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process on;
worker_processes 1;
error_log %s/logs/error.log info;
pid %s/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %s/tmp;
  lua_package_path "%s/lua/?.lua;;";
  lua_package_cpath "%s/.tmp/luajit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
  server {
    listen 127.0.0.1:%d;
    location /case { content_by_lua_block { %s } }
  }
}
]]):format(prefix, prefix, prefix, root, root, port, handler)
  local f = assert(io.open(prefix .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  os.execute(("nginx -p %s -c %s/nginx.conf -e %s/logs/error.log >%s/logs/stdout 2>&1 &")
    :format(prefix, prefix, prefix, prefix))
  for _ = 1, 200 do
    local s = socket.tcp()
    s:settimeout(0.1)
    if s:connect("127.0.0.1", port) then s:close() break end
    s:close()
    socket.sleep(0.05)
  end
  return { prefix = prefix, port = port, url = "http://127.0.0.1:" .. port }
end

local function stop_nginx(ngx_)
  if not ngx_ then return end
  local f = io.open(ngx_.prefix .. "/nginx.pid")
  local pid = f and f:read("*n")
  if f then f:close() end
  if pid then
    os.execute("kill " .. pid)
    for _ = 1, 100 do
      local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
      if not (r == true or r == 0) then break end
      socket.sleep(0.05)
    end
  end
  os.execute('rm -rf "' .. ngx_.prefix .. '"')
end

local function get(ngx_, query)
  local out, code = sh(("curl -s --max-time 10 '%s/case?%s'"):format(ngx_.url, query or ""))
  assert(code == 0, "curl to nginx failed: " .. out)
  local ok, doc = pcall(cjson.decode, out)
  assert(ok, "nginx answered: " .. out)
  return doc
end

describe("acquire.ngx in nginx #ngx", function()
  local srv, nginx

  setup(function()
    srv = helper.start_server()
    nginx = start_nginx(srv)
  end)
  teardown(function()
    stop_nginx(nginx)
    srv:stop()
  end)
  before_each(function() srv:reset() end)

  it("creates the documented case, decoded as in plain Lua", function()
    local doc = get(nginx, "title=Refund")
    assert.is_true(doc.ok, cjson.encode(doc))
    local c = acquire.new{ base_url = srv.base_url, api_key = srv.key }
    local res = c:create_case(597752, { title = "Refund" })
    c:close()
    assert.equal(res.data.id, doc.id)
    assert.equal(2071, doc.id)
    assert.equal(597752, doc.contact)
    assert.equal("Refund", doc.title)
    assert.equal(5, doc.visits)
    assert.equal(6, doc.fields)
    assert.equal(acquire.fields(res.data.contact).ip, doc.ip)
    assert.is_true(doc.company_is_null)
    assert.equal("Blink", doc.engine)
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.equal(reqs[2].body, reqs[1].body)             -- the same bytes from both transports
    assert.equal('{"title":"Refund"}', reqs[1].body)
    assert.equal("Bearer " .. srv.key, reqs[1].headers.authorization)
    assert.matches("^lua%-acquire/0%.1%.0 ngx_lua/", reqs[1].headers["user-agent"])
  end)

  it("returns err tables: 401, 404, an HTML 502, a refused port", function()
    local doc = get(nginx, "key=wrong")
    assert.same({ false, "http", 401, "ERROR_UNAUTHORIZED", false },
                { doc.ok, doc.kind, doc.status, doc.type, doc.maybe_created })
    assert.equal("acquire: http 401 ERROR_UNAUTHORIZED: Invalid API key", doc.text)
    doc = get(nginx, "contact=1")
    assert.same({ "http", 404 }, { doc.kind, doc.status })
    srv:fault{ action = "html", times = 1 }
    doc = get(nginx, "")
    assert.same({ "http", 502, true }, { doc.kind, doc.status, doc.maybe_created })
    doc = get(nginx, "base_url=http://127.0.0.1:" .. helper.free_port())
    assert.same({ false, "network", false, 3 }, { doc.ok, doc.kind, doc.maybe_created, doc.attempts })
  end)

  it("keeps its connection to the server alive across requests", function()
    for _ = 1, 5 do assert.is_true(get(nginx, "").ok) end
    local reqs = srv:requests()
    assert.equal(5, #reqs)
    for i = 2, 5 do assert.equal(reqs[1].connection, reqs[i].connection) end
    assert.is_true(srv:stats().connections <= 1)      -- 0 when an earlier test's pooled one served
  end)

  it("follows the retry policy: 503 with Retry-After, then success", function()
    srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 1 }
    local doc = get(nginx, "")
    assert.is_true(doc.ok)
    assert.equal(2, srv:stats().requests)
  end)

  it("does not block: 20 concurrent requests, each delayed 500 ms, on one worker, in under 2 s", function()
    srv:fault{ action = "delay", seconds = 0.5 }
    local dir = helper.tmpdir()
    local t0 = socket.gettime()
    local _, code = sh(("for i in $(seq 1 20); do curl -s --max-time 10 -o %s/$i '%s/case' & done; wait")
      :format(dir, nginx.url))
    local elapsed = socket.gettime() - t0
    assert.equal(0, code)
    for i = 1, 20 do
      local doc = cjson.decode(helper.read_file(dir .. "/" .. i))
      assert.is_true(doc.ok, cjson.encode(doc))
    end
    os.execute('rm -rf "' .. dir .. '"')
    assert.equal(20, srv:stats().requests)
    assert.is_true(srv:stats().max_in_flight >= 10, "in flight at once: " .. srv:stats().max_in_flight)
    assert.is_true(elapsed < 2, "20 requests took " .. elapsed .. " s")
  end)
end)
