-- Proxies and the log, for acquire.ngx: a real nginx (spec/nginx.lua, its POST /case handler)
-- whose cosockets go through a real proxy (Debian's tinyproxy, spec/proxy.lua) to the local
-- Acquire server, over http (absolute form) and over https (a CONNECT tunnel, TLS verified end
-- to end); the environment nginx hands its workers (`env` directives only); pools that never
-- hand a connection to another target, proxy, credentials or verification setting; the
-- `logger` and `debug` options. The libcurl client's side is spec/19-proxy_spec.lua.
local helper = require "spec.helper"
local launcher = require "spec.nginx"
local proxy = require "spec.proxy"
local cjson = require "cjson"
local socket = require "socket"

local CONTACT = 597752
local USER, PASS, no_secret = proxy.USER, proxy.PASS, proxy.no_secret
local PATH = helper.API_PATH .. "?contactId=" .. CONTACT

-- Every string the handler's answer holds: err, tostring(err), tostring(client), the lines.
local function everything(doc)
  local out = { doc.text or "", doc.client or "", doc.raised or "" }
  for _, v in pairs(doc.err or {}) do out[#out + 1] = tostring(v) end
  for _, l in ipairs(doc.lines or {}) do out[#out + 1] = l[2] end
  return table.concat(out, "\n")
end

describe("acquire.ngx through a proxy #ngx", function()
  local servers, px, authpx, nginx, envnginx, dns, dead
  local auth_url

  -- POST /case on nginx (no proxy in its workers' environment) with config on top of server's
  -- base_url and key.
  local function call(srv, config, q)
    q = q or {}
    local n = q.nginx or nginx
    q.nginx, q.config = nil, { base_url = srv.base_url, api_key = srv.key }
    for k, v in pairs(config or {}) do q.config[k] = v end
    return n:case(q)
  end

  setup(function()
    servers = { http = helper.start_server(), https = helper.start_server { tls = true },
                untrusted = helper.start_server { tls = true } }
    px = proxy.start()
    authpx = proxy.start { auth = USER .. ":" .. PASS }
    auth_url = ("http://%s:%s@127.0.0.1:%d"):format(USER, PASS, authpx.port)
    dead = proxy.dead()
    dns = helper.start_dns { ["api.acquire.test"] = "127.0.0.1" }
    local env = ("https_proxy=%s http_proxy=%s"):format(dead, dead)
    -- a dead proxy in nginx's own environment, which no `env` directive hands to its workers
    nginx = launcher.start_cases { base_url = servers.http.base_url, key = servers.http.key,
                                   trusted = servers.https.ca_file, env = env }
    -- and one whose workers get it (and a no_proxy), as the README says to write it
    envnginx = launcher.start_cases { base_url = servers.http.base_url, key = servers.http.key,
      trusted = servers.https.ca_file, env = env .. " no_proxy=.acquire.test",
      main = "env https_proxy;\nenv http_proxy;\nenv no_proxy;",
      http = ("  resolver 127.0.0.1:%d ipv6=off;\n  resolver_timeout 2s;"):format(dns.port) }
  end)

  teardown(function()
    launcher.stop(nginx)
    launcher.stop(envnginx)
    for _, p in ipairs { px, authpx, dns } do if p then p.stop() end end
    for _, s in pairs(servers or {}) do s:stop() end
  end)

  before_each(function()
    for _, s in pairs(servers) do s:reset() end
  end)

  for _, scheme in ipairs { "http", "https" } do
    local tls = scheme == "https"
    describe("to an " .. scheme .. " server", function()
      local function srv() return servers[scheme] end

      it("creates the case, and the proxy's own log shows the " .. (tls and "CONNECT" or "request"), function()
        local before = #px.requests()
        local doc = call(srv(), { proxy = px.url })
        assert.is_true(doc.ok, cjson.encode(doc))
        assert.equal(2071, doc.res.data.id)
        local seen = px.requests()
        assert.equal(before + 1, #seen)
        if tls then
          assert.equal("CONNECT 127.0.0.1:" .. srv().port .. " HTTP/1.1", seen[#seen])
          assert.is_nil(srv():last_request().headers.via)
        else                                            -- absolute form: the proxy sees the target
          assert.equal("POST " .. srv().base_url .. PATH .. " HTTP/1.1", seen[#seen])
          assert.matches("tinyproxy", srv():last_request().headers.via)   -- it came through it
        end
        assert.equal(1, #srv():requests())
        assert.equal("acquire.ngx client (" .. srv().base_url .. " via proxy " .. px.url .. ")", doc.client)
      end)

      it("sends 20 calls through it" .. (tls and " on one tunnel" or ""), function()
        local p = proxy.start()                      -- its own: no tunnel pooled before
        finally(p.stop)
        for i = 1, 20 do
          local doc = call(srv(), { proxy = p.url }, { opts = { title = "n" .. i } })
          assert.is_true(doc.ok, cjson.encode(doc))
        end
        -- a tunnel is pooled and reused; tinyproxy closes after each absolute-form request
        assert.equal(tls and 1 or 20, #p.requests())
        assert.equal(tls and 1 or 20, srv():stats().connections)
        assert.equal(20, #srv():requests())
      end)

      -- issue 17, finding 3, on this transport: a 407 from Acquire itself. Inside the tunnel it is
      -- Acquire's (kind http, status 407); through a plain proxy the proxy's. Never resent.
      it("a 407 from Acquire " .. (tls and "inside the tunnel is Acquire's" or "is not retried"), function()
        srv():fault{ action = "status", status = 407, create = true, times = 5 }
        local doc = call(srv(), { proxy = px.url, max_retries = 3 })
        assert.is_false(doc.ok, cjson.encode(doc))
        assert.equal(1, doc.err.attempts)
        assert.equal(1, #srv():requests())
        if tls then
          assert.same({ "http", 407 }, { doc.err.kind, doc.err.status })
          assert.is_nil(doc.err.proxy_status)
        else
          assert.same({ "proxy", 407, false }, { doc.err.kind, doc.err.proxy_status, doc.err.maybe_created })
        end
      end)

      it("answers 407 without credentials (kind proxy, not retried), goes through with them", function()
        local doc = call(srv(), { proxy = authpx.url, max_retries = 2 })
        assert.is_false(doc.ok, cjson.encode(doc))
        assert.same({ "proxy", 407, false, 1 },
                    { doc.err.kind, doc.err.proxy_status, doc.err.maybe_created, doc.err.attempts })
        assert.is_nil(doc.err.status)
        assert.equal("acquire: proxy: proxy " .. authpx.url .. ": answered "
          .. (tls and "CONNECT with 407" or "407 (Proxy Authentication Required)"), doc.text)
        assert.equal(0, #srv():requests())

        doc = call(srv(), { proxy = auth_url, debug = "body" }, { logger = "collect" })
        assert.is_true(doc.ok, cjson.encode(doc))
        local shown = "http://[REDACTED]@127.0.0.1:" .. authpx.port
        assert.equal("acquire.ngx client (" .. srv().base_url .. " via proxy " .. shown .. ")", doc.client)
        assert.equal("attempt 1: POST " .. srv().base_url .. PATH .. " via proxy " .. shown, doc.lines[1][2])
        no_secret(everything(doc), "the answer")
        assert.is_nil(srv():last_request().headers["proxy-authorization"])

        if tls then
          -- other credentials, while a tunnel made with the right ones is pooled: a tunnel of
          -- their own, which tinyproxy refuses (with 401, its answer to wrong credentials)
          local wrong = ("http://%s:wrong@127.0.0.1:%d"):format(USER, authpx.port)
          doc = call(srv(), { proxy = wrong })
          assert.is_false(doc.ok, cjson.encode(doc))
          assert.same({ "proxy", 401, false }, { doc.err.kind, doc.err.proxy_status, doc.err.maybe_created })
          no_secret(everything(doc), "the answer")
          assert.equal(1, #srv():requests())
        end
      end)

      it("reports a dead proxy as kind proxy, retried, nothing sent", function()
        local doc = call(srv(), { proxy = dead, max_retries = 1, debug = true }, { logger = "collect" })
        assert.is_false(doc.ok, cjson.encode(doc))
        assert.same({ "proxy", false, 2 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
        assert.is_nil(doc.err.proxy_status)
        assert.equal("acquire: proxy: proxy " .. dead .. ": could not connect (connection refused)", doc.text)
        assert.equal(0, #srv():requests())
        assert.equal(4, #doc.lines, cjson.encode(doc.lines))
        assert.equal("warn", doc.lines[2][1])
        assert.matches("^attempt 1 failed: acquire: proxy: .*; retrying in %d+%.%d%d s$", doc.lines[2][2])
        assert.same({ "error", "attempt 2 failed: " .. doc.text .. "; giving up" }, doc.lines[4])
      end)

      it("follows the environment nginx hands its workers: proxy = false ignores it, NO_PROXY is honoured",
         function()
        local insecure = tls or nil                -- the certificate names 127.0.0.1, not api.acquire.test
        -- no `env` directive: the dead proxy in nginx's environment never reaches the worker
        assert.is_true(call(srv(), {}).ok)
        -- with them, it does
        local doc = call(srv(), { max_retries = 0 }, { nginx = envnginx })
        assert.same({ false, "proxy" }, { doc.ok, doc.err and doc.err.kind })
        assert.equal("acquire: proxy: proxy " .. dead .. ": could not connect (connection refused)", doc.text)
        assert.matches(" via proxy " .. dead .. "%)$", doc.client)
        assert.is_true(call(srv(), { proxy = false }, { nginx = envnginx }).ok)
        local named = scheme .. "://api.acquire.test:" .. srv().port       -- no_proxy=.acquire.test
        doc = call(srv(), { base_url = named, insecure = insecure }, { nginx = envnginx })
        assert.is_true(doc.ok, cjson.encode(doc))
        assert.equal("acquire.ngx client (" .. named .. ")", doc.client)
        assert.equal(3, #srv():requests())
      end)

      it("never mixes pools: direct and through two proxies, interleaved in one worker", function()
        local p1, p2 = proxy.start(), proxy.start()
        finally(function() p1.stop() p2.stop() end)
        local via = { {}, { proxy = p1.url }, { proxy = p2.url } }
        for _ = 1, 3 do
          for _, config in ipairs(via) do
            local doc = call(srv(), config)
            assert.is_true(doc.ok, cjson.encode(doc))
          end
        end
        local reqs = srv():requests()
        assert.equal(9, #reqs)
        local function conn(i) return reqs[i].connection end
        if tls then                                 -- one tunnel each, one direct connection
          assert.same({ 1, 1 }, { p1.connects(), p2.connects() })
          assert.equal(3, srv():stats().connections)
          for i = 4, 9 do assert.equal(conn(i - 3), conn(i)) end
          assert.is_true(conn(1) ~= conn(2) and conn(2) ~= conn(3) and conn(1) ~= conn(3))
        else                                        -- each request as its client said
          assert.same({ 3, 3 }, { #p1.requests(), #p2.requests() })
          for i = 1, 9 do
            assert.equal(i % 3 ~= 1, reqs[i].headers.via ~= nil, "request " .. i)
          end
          assert.equal(conn(1), conn(4))            -- the direct connection, kept alive
          assert.equal(conn(1), conn(7))
        end
      end)
    end)
  end

  describe("to an https server", function()
    it("verifies TLS through the tunnel, and pools tunnels by verification setting", function()
      local before = px.connects()
      local u = servers.untrusted
      local doc = call(u, { proxy = px.url })
      assert.same({ false, "tls", false, 1 },
                  { doc.ok, doc.err.kind, doc.err.maybe_created, doc.err.attempts })
      assert.matches("^acquire: tls: TLS handshake with 127%.0%.0%.1:%d+ failed: ", doc.text)
      assert.is_true(call(u, { proxy = px.url, insecure = true }).ok)
      doc = call(u, { proxy = px.url })            -- that unverified tunnel is pooled: not for this
      assert.same({ false, "tls" }, { doc.ok, doc.err and doc.err.kind })
      assert.equal(1, u:stats().requests)
      assert.equal(before + 3, px.connects())
    end)

    it("reports a CONNECT the proxy answers 500 (it cannot reach the target) as kind proxy, retried", function()
      local base = "https://127.0.0.1:" .. helper.free_port()
      local doc = call(servers.https, { base_url = base, proxy = px.url, max_retries = 1 })
      assert.same({ false, "proxy", 500, false, 2 },
                  { doc.ok, doc.err.kind, doc.err.proxy_status, doc.err.maybe_created, doc.err.attempts })
      assert.equal("acquire: proxy: proxy " .. px.url .. ": answered CONNECT with 500", doc.text)
    end)

    it("bounds the proxy leg by timeout: a proxy that never answers CONNECT", function()
      local silent = assert(socket.bind("127.0.0.1", 0))   -- the kernel accepts; nobody answers
      finally(function() silent:close() end)
      local _, port = silent:getsockname()
      local t0 = socket.gettime()
      local doc = call(servers.https, { proxy = "http://127.0.0.1:" .. port, timeout = 0.5, max_retries = 3 })
      local elapsed = socket.gettime() - t0
      assert.same({ false, "proxy", false, 1 },
                  { doc.ok, doc.err.kind, doc.err.maybe_created, doc.err.attempts })
      assert.matches(": no answer to CONNECT in time %(timeout 0%.5 s%)$", doc.text)
      assert.is_true(elapsed < 3, "took " .. elapsed .. " s")   -- the 0.5 s timeout, not nginx's or a hang
    end)
  end)

  it("raises on a bad proxy option as acquire.new does", function()
    local doc = call(servers.http, { proxy = "socks5://127.0.0.1:1080" })
    assert.matches("bad option 'proxy'", doc.raised, 1, true)
    doc = call(servers.http, { logger = 42 })
    assert.matches("bad option 'logger'", doc.raised, 1, true)
  end)

  describe("the log", function()
    local srv
    before_each(function() srv = servers.http end)

    it("has a line for the request and one for its answer (debug = true), nothing without debug", function()
      local doc = call(srv, { debug = true }, { logger = "collect" })
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(2, #doc.lines, cjson.encode(doc.lines))
      assert.same({ "debug", "attempt 1: POST " .. srv.base_url .. PATH }, doc.lines[1])
      assert.equal("debug", doc.lines[2][1])
      assert.matches("^attempt 1: 200 in %d+%.%d ms, %d+ bytes$", doc.lines[2][2])
      assert.same({}, call(srv, {}, { logger = "collect" }).lines)
    end)

    it("says why an attempt failed and whether it retries", function()
      srv:fault { action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = 1 }
      local doc = call(srv, { debug = true }, { logger = "collect" })
      assert.is_true(doc.ok, cjson.encode(doc))
      local levels, texts = {}, {}
      for i, l in ipairs(doc.lines) do levels[i], texts[i] = l[1], l[2] end
      assert.same({ "debug", "debug", "warn", "debug", "debug" }, levels)
      assert.matches("^attempt 1: 503 in %d+%.%d ms, 0 bytes$", texts[2])
      assert.equal("attempt 1 failed: acquire: http 503; retrying in 0.00 s", texts[3])
      assert.equal("attempt 2: POST " .. srv.base_url .. PATH, texts[4])
      assert.matches("^attempt 2: 200 in ", texts[5])

      doc = call(srv, { debug = true }, { contact = 1, logger = "collect" })
      assert.same({ "error", "attempt 1 failed: acquire: http 404: Contact not found; giving up" }, doc.lines[3])
    end)

    it("holds neither the key nor the proxy's credentials, even in echoed bodies (debug = \"body\")", function()
      local echo = '{"data":{"id":1,"echo":"test-key ' .. PASS .. '","pad":"' .. ("x"):rep(20000) .. '"}}'
      srv:fault { action = "status", status = 200, body = echo, times = 1 }
      local doc = call(srv, { proxy = auth_url, debug = "body" }, { logger = "collect", opts = { title = "T" } })
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(4, #doc.lines, cjson.encode(doc.lines))
      assert.equal('attempt 1: > {"title":"T"}', doc.lines[2][2])
      local answer = doc.lines[4][2]
      local redacted = echo:gsub("test%-key " .. PASS:gsub("%p", "%%%0"), "[REDACTED] [REDACTED]")
      local want = "attempt 1: < " .. redacted:sub(1, 16384) .. (" (%d more bytes not logged)"):format(#redacted - 16384)
      assert.is_true(want == answer, "the body's line: " .. answer:sub(1, 100) .. " ... " .. answer:sub(-100))
      no_secret(everything(doc), "the answer")
    end)

    it("goes on when the logger raises: the result intact, the line and the error in nginx's log", function()
      local before = #nginx:log()
      local doc = call(srv, { debug = true }, { logger = "raise" })
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(2071, doc.res.data.id)
      assert.equal(2, #doc.lines)                  -- each line reached it, though it raised on each
      doc = call(srv, { debug = true }, { logger = "raise", contact = 1 })
      assert.same({ "http", 404, "Contact not found" }, { doc.err.kind, doc.err.status, doc.err.message })
      assert.equal(3, #doc.lines)
      local log = nginx:log():sub(before + 1)
      local _, raised = log:gsub("acquire: logger raised: [^\n]*this logger raises, key %[REDACTED%]", "")
      assert.equal(5, raised, log)
      helper.contains(log, "acquire: attempt 1 failed: acquire: http 404: Contact not found; giving up")
      no_secret(log, "nginx's log")
    end)

    it("goes to nginx's error log without a logger (the debug lines at ngx.DEBUG)", function()
      srv:fault { action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = 1 }
      local before = #nginx:log()
      assert.is_true(call(srv, { debug = true }).ok)
      local log = nginx:log():sub(before + 1)
      assert.matches("%[warn%][^\n]*acquire: attempt 1 failed: acquire: http 503; retrying in 0%.00 s", log)
      assert.is_nil(log:find("attempt 1: POST", 1, true), log)   -- below this error_log's level (info)
    end)
  end)
end)
