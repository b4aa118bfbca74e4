-- The libcurl client's batches against a real nginx that rotates its connections: with
-- keepalive_requests 3, nginx closes an HTTP/1.1 connection after its third answer, and over
-- HTTP/2 sends GOAWAY and refuses the streams it never processed. Every item must succeed,
-- and the server must have processed exactly one request per item: no case lost, none twice,
-- no false maybe_created. nginx serves the create-case endpoint itself, counting in a shared
-- dict what it processed.
local acquire = require "acquire"
local launcher = require "spec.nginx"
local cjson = require "cjson"
local http = require "socket.http"

local CREATE = [[
  ngx.req.read_body()
  local d = ngx.shared.seen
  local n = d:incr("requests", 1, 0)
  d:incr(ngx.var.server_protocol, 1, 0)
  if d:add("conn:" .. ngx.var.connection, true) then d:incr("connections", 1, 0) end
  local body = cjson.decode(ngx.req.get_body_data() or "{}")
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode { data = { id = n, title = body.title, status = "active",
                                  contact = { id = tonumber(ngx.var.arg_contactId) } } })
]]

local STATS = [[
  local d, out = ngx.shared.seen, {}
  for _, k in ipairs { "requests", "connections", "HTTP/1.1", "HTTP/2.0" } do out[k] = d:get(k) or 0 end
  ngx.say(cjson.encode(out))
]]

describe("create_cases through connection rotation (keepalive_requests 3) #ngx", function()
  local nginx, cert, tls_url, plain_url

  setup(function()
    nginx = launcher.start(function(n)
      local key
      cert, key = launcher.self_signed(n.prefix)
      return launcher.config(n, { http = ([[
  lua_shared_dict seen 1m;
  init_by_lua_block { cjson = require "cjson" }
  keepalive_requests 3;
  server {
    listen 127.0.0.1:%d ssl http2;
    listen 127.0.0.1:%d;
    ssl_certificate %s;
    ssl_certificate_key %s;
    location = /api/v1/crm/messenger/chat/create { content_by_lua_block { %s } }
    location = /stats { content_by_lua_block { %s } }
  }]]):format(n.ports[1], n.ports[2], cert, key, CREATE, STATS) })
    end, { ports = 2 })
    tls_url = "https://127.0.0.1:" .. nginx.ports[1]
    plain_url = "http://127.0.0.1:" .. nginx.ports[2]
  end)

  teardown(function()
    launcher.stop(nginx)
  end)

  local function stats()
    local text, code = http.request(plain_url .. "/stats")
    assert(code == 200, "stats: " .. tostring(code))
    return cjson.decode(text)
  end

  -- rounds batches of 16 at concurrency 16 on one client: every item created, once
  local function batches(config, rounds)
    local c = acquire.new(config)
    local before = stats()
    for round = 1, rounds do
      local items = {}
      for i = 1, 16 do items[i] = { 597752, { title = ("r%d-%d"):format(round, i) } } end
      local results = c:create_cases(items, { concurrency = 16 })
      local failed = {}
      for i, r in ipairs(results) do
        if not r.res then failed[#failed + 1] = ("#%d %s"):format(i, tostring(r.err)) end
      end
      local s = stats()
      assert(#failed == 0, ("round %d: %d of 16 failed (server: %s):\n%s"):format(round, #failed,
        cjson.encode(s), table.concat(failed, "\n")))
      for i, r in ipairs(results) do assert.equal(items[i][2].title, r.res.data.title) end
      assert.equal(16 * round, s.requests - before.requests)   -- processed exactly once each
    end
    c:close()
    local after = stats()
    -- 3 requests a connection at most: the connections did rotate
    assert.is_true(after.connections - before.connections >= math.ceil(16 * rounds / 3),
      cjson.encode(after))
    return after
  end

  it("over TLS (HTTP/2 if the client offers it): 4 batches of 16, all created, none twice", function()
    batches({ base_url = tls_url, api_key = "k", ca_file = cert, timeout = 10 }, 4)
  end)

  it("over plain HTTP/1.1: 4 batches of 16, all created, none twice", function()
    batches({ base_url = plain_url, api_key = "k", timeout = 10 }, 4)
  end)
end)
