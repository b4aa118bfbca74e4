-- acquire.ngx inside a real nginx (Debian's, with its Lua module), whose handler creates cases
-- against the local Acquire server through cosockets: the same results and errors as the
-- libcurl client (the two are compared call for call), keep-alive pools, retries, TLS, the
-- server's misbehaviours, and 20 concurrent requests on one worker that do not wait for each
-- other; nginx's resolver, silent or answering, and timeout holding the call to its bound; the
-- debug log against a server that echoes the key. The launcher and the handler (POST /case
-- { contact, opts, config } -> { ok, res } | { ok = false, err, text } | { raised }) are
-- spec/nginx.lua's; the raw answers, the local Acquire server's "raw" faults.
local acquire = require "acquire"
local helper = require "spec.helper"
local launcher = require "spec.nginx"
local keys = require "spec.keys"
local cjson = require "cjson"
local socket = require "socket"

local ROOT = helper.repo_root
local SMALL = '{"data":{"id":1}}'

-- ---- the specs ---------------------------------------------------------------------------

describe("acquire.ngx in nginx #ngx", function()
  local srv = helper.server()
  local tls, untrusted, nginx

  local function call(q) return nginx:case(q) end

  -- The same call through the libcurl client.
  local function plain(contact, opts, config)
    local c = srv:client(config)
    local res, err = c:create_case(contact or 597752, opts)
    c:close()
    return res, err
  end

  -- err from nginx and err from libcurl agree on everything but libcurl's code
  local function same_err(doc, err)
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.is_true(doc.mt)                                     -- the module's metatable
    local want = {}
    for k, v in pairs(err) do want[k] = v end
    want.code = nil
    assert.same(want, doc.err)
    assert.equal(tostring(err), doc.text)
  end

  setup(function()
    tls = helper.start_server { tls = true }
    untrusted = helper.start_server { tls = true }
    nginx = launcher.start_cases { base_url = srv.base_url, key = srv.key, trusted = tls.ca_file }
  end)

  teardown(function()
    launcher.stop(nginx)
    for _, s in ipairs { tls, untrusted } do if s then s:stop() end end
  end)

  it("sends the documented request and decodes it as the libcurl client does", function()
    local doc = call('{"opts":' .. helper.fixture("create-case-request.json") .. "}")
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    local res = assert(plain(597752, helper.documented_opts()))
    reqs = srv:requests()
    assert.equal(helper.DOCUMENTED_BODY, reqs[1].body)
    assert.equal(reqs[2].body, reqs[1].body)                     -- the same bytes from both
    assert.equal(helper.API_PATH, reqs[1].path)
    assert.equal("contactId=597752", reqs[1].raw_query)
    assert.equal("Bearer " .. srv.key, reqs[1].headers.authorization)
    assert.equal("127.0.0.1:" .. srv.port, reqs[1].headers.host)
    assert.equal("application/json", reqs[1].headers["content-type"])
    assert.equal(tostring(#helper.DOCUMENTED_BODY), reqs[1].headers["content-length"])
    assert.matches("^lua%-acquire/0%.1%.0 ngx_lua/%d+%.%d+%.%d+$", reqs[1].headers["user-agent"])

    assert.is_true(doc.ok, cjson.encode(doc))
    local got = doc.res
    assert.equal(2071, got.data.id)
    assert.equal(res.data.id, got.data.id)
    assert.equal(597752, got.data.contact.id)
    assert.equal(5, #got.data.contact.visits)
    assert.equal("2402:8100:21f5:3d13:d9da:18ea:aa28:f778", acquire.fields(got.data.contact).ip)
    assert.equal(acquire.fields(res.data.contact).ip, acquire.fields(got.data.contact).ip)
    assert.equal(acquire.null, got.data.contact.company)         -- JSON null survives both ways
    assert.equal(acquire.null, res.data.contact.company)
    assert.same(res, got)                                        -- and everything else
  end)

  it("echoes title and message, and sends what user_agent says", function()
    local doc = call { opts = { title = "Refund", message = "Hi" }, config = { user_agent = "mine/1" } }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.same({ "Refund", "Hi" }, { doc.res.data.title, doc.res.data.description })
    local r = srv:last_request()
    assert.equal('{"title":"Refund","message":{"type":"message","message":"Hi","translateLangKey":""}}', r.body)
    assert.equal("mine/1", r.headers["user-agent"])
  end)

  it("returns the same err tables: 401, 404, HTML 502, 302, 503 without Retry-After", function()
    same_err(call { config = { api_key = "wrong" } }, select(2, plain(nil, nil, { api_key = "wrong" })))
    local doc = call { config = { api_key = "wrong" } }
    assert.same({ "http", 401, "ERROR_UNAUTHORIZED", false, 1 },
                { doc.err.kind, doc.err.status, doc.err.type, doc.err.maybe_created, doc.err.attempts })
    assert.equal("acquire: http 401 ERROR_UNAUTHORIZED: Invalid API key", doc.text)

    doc = call { contact = 1 }
    assert.same({ "http", 404, "Contact not found" }, { doc.err.kind, doc.err.status, doc.err.message })
    same_err(doc, select(2, plain(1)))

    for _, fault in ipairs {
      { action = "html", times = 1 },
      { action = "redirect", times = 1 },
      { action = "status", status = 503, times = 1 },
      { action = "status", status = 500, times = 1 },
    } do
      srv:fault(fault)
      doc = call {}
      srv:fault(fault)
      same_err(doc, select(2, plain()))
    end
    assert.equal(13, srv:stats().requests)                      -- none of them retried
  end)

  it("raises on misuse as create_case does, before sending anything", function()
    local doc = call { contact = "12a" }
    assert.matches("bad argument #1 to 'create_case' %(contactId must be a positive integer, got '12a'%)$",
                   doc.raised)
    assert.matches("^content_by_lua%(nginx%.conf:%d+%):%d+: ", doc.raised)   -- the caller's line
    doc = call { opts = { agentId = "x" } }
    assert.matches("^content_by_lua%(nginx%.conf:%d+%):%d+: ", doc.raised)
    assert.matches("bad field 'agentId' %(integer expected, got string%)$", doc.raised)
    doc = call { opts = { foo = 1 } }
    assert.matches("unknown field 'foo' in opts", doc.raised, 1, true)
    doc = call { config = { bogus = 1 } }
    assert.matches("bad option 'bogus'", doc.raised, 1, true)
    doc = call { config = { base_url = "http://127.0.0.1/x" } }
    assert.matches("bad option 'base_url'", doc.raised, 1, true)
    doc = call { config = { ca_file = "/etc/ssl/certs/ca-certificates.crt" } }
    assert.matches("lua_ssl_trusted_certificate", doc.raised, 1, true)
    assert.equal(0, srv:stats().requests)
  end)

  it("logs each attempt with debug = true, the bodies with debug = \"body\"; a closed client raises", function()
    local doc = call { config = { debug = true }, opts = { title = "T" }, logger = "collect" }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(2, #doc.lines, cjson.encode(doc.lines))
    assert.same({ "debug", "attempt 1: POST " .. srv.base_url .. helper.API_PATH .. "?contactId=597752" },
                doc.lines[1])
    assert.equal("debug", doc.lines[2][1])
    assert.matches("^attempt 1: 200 in %d+%.%d ms, %d+ bytes$", doc.lines[2][2])
    doc = call { config = { debug = "body" }, opts = { title = "T" }, logger = "collect" }
    assert.equal(4, #doc.lines, cjson.encode(doc.lines))
    assert.same({ "debug", 'attempt 1: > {"title":"T"}' }, doc.lines[2])
    assert.matches('^attempt 1: < {\\n +"data": {\\n', doc.lines[4][2])    -- its line breaks as \n
    assert.is_nil(doc.lines[4][2]:find("\n", 1, true))
    assert.same({}, call({ config = { debug = false }, logger = "collect" }).lines)   -- no line without debug
    assert.matches("client is closed$", call({ close = true }).raised)
  end)

  it("a refused port: kind network, maybe_created false, retried", function()
    local url = "http://127.0.0.1:" .. helper.free_port()
    local doc = call { config = { base_url = url, max_retries = 1 } }
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.same({ "network", false, 2 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
    assert.is_nil(doc.err.code)
    assert.is_nil(doc.err.status)
    assert.matches("^acquire: network: could not connect to 127%.0%.0%.1:%d+: ", doc.text)
    local _, err = plain(nil, nil, { base_url = url, max_retries = 1 })
    assert.same({ err.kind, err.maybe_created, err.attempts },
                { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
  end)

  it("keeps one connection to the server alive across requests", function()
    for _ = 1, 5 do assert.is_true(call({}).ok) end
    local reqs = srv:requests()
    assert.equal(5, #reqs)
    for i = 2, 5 do assert.equal(reqs[1].connection, reqs[i].connection) end
    assert.equal(1, srv:stats().connections)
  end)

  it("does not pool a connection the server closes", function()
    srv:fault { action = "close", times = 1 }
    for _ = 1, 3 do assert.is_true(call({}).ok) end
    local reqs = srv:requests()
    assert.equal(2, srv:stats().connections)
    assert.are_not.equal(reqs[1].connection, reqs[2].connection)
    assert.equal(reqs[2].connection, reqs[3].connection)
  end)

  it("follows the retry policy: 503 with Retry-After: 1, then success", function()
    srv:fault { action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 1 }
    local t0 = socket.gettime()
    local doc = call {}
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(2, srv:stats().requests)
    assert.is_true(socket.gettime() - t0 >= 0.9)
  end)

  it("reads chunked responses, and bodies up to max_response_bytes", function()
    local res = assert(plain())
    srv:reset()
    srv:fault { action = "chunked", times = 1 }
    local doc = call {}
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.same(res, doc.res)
    srv:fault { action = "big", size = 2 * 1024 * 1024, times = 1 }
    doc = call {}
    assert.is_true(doc.ok)
    assert.equal(2071, doc.res.data.id)
    assert.is_true(#doc.res.padding > 2000000)
    assert.equal(1, srv:stats().connections)                    -- chunked, big: all kept alive
  end)

  it("refuses a response over max_response_bytes, as the libcurl client does", function()
    local fault = { action = "big", size = 2 * 1024 * 1024, times = 1 }
    local config = { max_response_bytes = 1024 * 1024 }
    srv:fault(fault)
    local doc = call { config = config }
    srv:fault(fault)
    same_err(doc, select(2, plain(nil, nil, config)))
    assert.same({ "http", 200, true }, { doc.err.kind, doc.err.status, doc.err.maybe_created })
    assert.equal("acquire: http 200: response body exceeds max_response_bytes (1048576)", doc.text)
  end)

  it("a cut or reset connection after the request: maybe_created, not retried", function()
    for _, action in ipairs { "truncate", "reset" } do
      srv:reset()
      srv:fault { action = action, times = 1 }
      local doc = call {}
      assert.is_false(doc.ok, cjson.encode(doc))
      srv:fault { action = action, times = 1 }
      local _, err = plain()
      assert.same({ err.kind, err.status, err.maybe_created, 1 },
                  { doc.err.kind, doc.err.status, doc.err.maybe_created, doc.err.attempts })
      assert.equal("network", doc.err.kind)
      assert.is_true(doc.err.maybe_created)
      assert.equal(2, srv:stats().requests)
    end
  end)

  it("times out the whole attempt: a server that hangs or trickles", function()
    for _, fault in ipairs { { action = "hang", times = 1 }, { action = "trickle", interval = 0.2, times = 1 } } do
      srv:reset()
      srv:fault(fault)
      local t0 = socket.gettime()
      local doc = call { config = { timeout = 1 } }
      local took = socket.gettime() - t0
      assert.is_false(doc.ok, cjson.encode(doc))
      assert.same({ "timeout", true, 1 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
      assert.is_true(took >= 0.9 and took < 2.5, fault.action .. " took " .. took .. " s")
    end
  end)

  it("never puts the API key in an error, even when the server echoes it", function()
    local body = cjson.encode { type = "E_" .. srv.key, message = "your key " .. srv.key .. " is odd" }
    local fault = { action = "status", status = 500, body = body, times = 1 }
    srv:fault(fault)
    local doc = call {}
    srv:fault(fault)
    same_err(doc, select(2, plain()))
    assert.equal("acquire: http 500 E_[REDACTED]: your key [REDACTED] is odd", doc.text)
    assert.is_nil(cjson.encode(doc):find(srv.key, 1, true))
  end)

  it("speaks TLS with verification, and pools verified connections apart", function()
    local doc = call { config = { base_url = tls.base_url, api_key = tls.key } }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(2071, doc.res.data.id)

    -- a certificate nginx does not trust (lua_ssl_trusted_certificate names another)
    local u = { base_url = untrusted.base_url, api_key = untrusted.key }
    doc = call { config = u }
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.same({ "tls", false, 1 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
    assert.matches("^acquire: tls: TLS handshake with 127%.0%.0%.1:%d+ failed: ", doc.text)
    u.insecure = true
    assert.is_true(call({ config = u }).ok)
    u.insecure = nil                 -- that unverified connection is pooled: it must not serve this
    doc = call { config = u }
    assert.same({ false, "tls" }, { doc.ok, doc.err and doc.err.kind }, cjson.encode(doc))
    assert.equal(1, untrusted:stats().requests)
  end)

  -- The server's next answers, in order, whatever was asked: { raw = bytes } or { parts =
  -- { bytes, ... } } written 50 ms apart, on a connection kept open unless close = true.
  local function answers(list)
    for _, a in ipairs(list) do
      srv:fault { action = "raw", body = a.raw, chunks = a.parts, close = a.close or false, times = 1 }
    end
  end
  local function ok_answer(headers, body)
    return { raw = "HTTP/1.1 200 OK\r\n" .. headers .. "\r\n" .. (body or SMALL) }
  end

  describe("HTTP/1.1 framing", function()
    it("chunked with extensions and trailers, kept alive", function()
      local chunked = ok_answer("Transfer-Encoding: chunked\r\n",
        '5;name="x"\r\n{"dat\r\n0C \r\na":{"id":1}}\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n')
      answers { chunked, chunked, ok_answer("Content-Length: 17\r\n") }
      for _ = 1, 3 do
        local doc = call {}
        assert.is_true(doc.ok, cjson.encode(doc))
        assert.equal(1, doc.res.data.id)
      end
      assert.equal(1, srv:stats().connections)
    end)

    it("skips 1xx answers; HTTP/1.0 and unframed bodies are read to the end, never pooled", function()
      answers {
        { raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n" .. SMALL },
        { raw = "HTTP/1.0 200 OK\r\nContent-Length: 17\r\n\r\n" .. SMALL },
        { raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" .. SMALL, close = true },
        { raw = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 17\r\n\r\n" .. SMALL },
        ok_answer("Content-Length: 17\r\n"),
      }
      for _ = 1, 5 do
        local doc = call {}
        assert.is_true(doc.ok, cjson.encode(doc))
        assert.equal(1, doc.res.data.id)
      end
      assert.equal(4, srv:stats().connections)
    end)

    it("malformed answers are network errors after the request was sent", function()
      answers {
        { raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", close = true },
        { raw = "HTTP/1.1 200 OK\r\nContent-Length: 17\r\nContent-Length: 18\r\n\r\n" .. SMALL, close = true },
        { raw = "HTTP/1.1 200 OK\r\nX-Big: " .. ("x"):rep(70000) .. "\r\n\r\n", close = true },
        { raw = "SSH-2.0-OpenSSH\r\n", close = true },
        { raw = "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{", close = true },
      }
      for i = 1, 5 do
        local doc = call {}
        assert.is_false(doc.ok, cjson.encode(doc))
        assert.same({ "network", true, 1 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
        assert.equal(i ~= 4 and 200 or nil, doc.err.status)
      end
    end)

    it("max_response_bytes holds for chunked and unframed bodies", function()
      local big = '{"p":"' .. ("x"):rep(2000) .. '"}'
      answers {
        ok_answer("Transfer-Encoding: chunked\r\n", ("%x\r\n%s\r\n0\r\n\r\n"):format(#big, big)),
        { raw = "HTTP/1.1 200 OK\r\n\r\n" .. big, close = true },
        ok_answer("Content-Length: " .. #big .. "\r\n", big),
      }
      for _ = 1, 3 do
        local doc = call { config = { max_response_bytes = 1024 } }
        assert.is_false(doc.ok, cjson.encode(doc))
        assert.equal("acquire: http 200: response body exceeds max_response_bytes (1024)", doc.text)
      end
    end)
  end)

  describe("the debug log, against a server that echoes the key", function()
    it("never holds the key in any form, even split across TCP writes and chunks", function()
      local KEY = "ab/cd+ef=="                                -- JSON writes it ab\/cd+ef==
      local body = '{"data":{"id":1,"echo":"ab\\/cd+ef==","u":"ab\\u002Fcd+ef==",'
        .. '"l":"\\u0061b\\u002fcd\\u002bef=="}}'
      local cut = body:find("cd+", 1, true)                   -- inside the first echo
      local err = '{"type":"E","message":"bad key ab\\/cd+ef=="}'
      answers {
        { parts = { "HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\nX-Echo: ab\\/c",
                    "d+ef==\r\n\r\n" .. body:sub(1, cut), body:sub(cut + 1) } },
        { parts = { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    ("%x\r\n%s\r\n"):format(cut, body:sub(1, cut)),
                    ("%x\r\n%s\r\n0\r\n\r\n"):format(#body - cut, body:sub(cut + 1)) } },
        { parts = { "HTTP/1.1 500 Oops\r\nContent-Length: " .. #err .. "\r\n\r\n" .. err:sub(1, 30),
                    err:sub(31) } },
      }
      local config = { api_key = KEY, debug = "body" }
      local lines = {}
      local function logged(doc)
        for _, l in ipairs(doc.lines) do lines[#lines + 1] = l[2] end
        return doc
      end
      for _ = 1, 2 do
        local doc = logged(call { config = config, logger = "collect" })
        assert.is_true(doc.ok, cjson.encode(doc))
        assert.equal(KEY, doc.res.data.echo)                  -- the caller gets its data as sent
      end
      local doc = logged(call { config = config, logger = "collect" })
      assert.same({ false, 500 }, { doc.ok, doc.err.status })
      assert.equal("acquire: http 500 E: bad key [REDACTED]", doc.text)
      local text = table.concat(lines, "\n")
      assert.matches("attempt 1: < {\"data\"", text, 1, true)  -- the exchanges were logged
      assert.matches("attempt 1: 500 in ", text, 1, true)
      assert.matches("attempt 1: < {\"type\":\"E\"", text, 1, true)
      assert.matches("[REDACTED]", text, 1, true)
      assert.is_nil(text:find(KEY, 1, true), text)
      assert.is_nil(keys.unescape(text):find(KEY, 1, true), text)
      assert.is_nil(text:find("cd+ef", 1, true), text)         -- nor a piece of it
    end)
  end)

  it("connects to an IPv6 literal", function()
    local ok, v6 = pcall(helper.start_server, { host = "::1" })
    if not ok then
      pending("no IPv6 loopback here: " .. tostring(v6))
      return
    end
    finally(function() v6:stop() end)
    local doc = call { config = { base_url = v6.base_url } }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(2071, doc.res.data.id)
  end)

  it("does not block: 20 concurrent requests, each delayed 1.5 s, on one worker, overlap", function()
    -- 1.5 s: on a loaded machine the 20 curls can take a second to start; all still overlap
    srv:fault { action = "delay", seconds = 1.5 }
    local dir = helper.tmpdir()
    local t0 = socket.gettime()
    local _, code = helper.sh(("for i in $(seq 1 20); do curl -s --max-time 10 -d '{}' -o %s/$i '%s/case' & done; wait")
      :format(dir, nginx.url))
    local elapsed = socket.gettime() - t0
    assert.equal(0, code)
    for i = 1, 20 do
      local doc = cjson.decode(helper.read_file(dir .. "/" .. i))
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(2071, doc.res.data.id)
    end
    helper.rmrf(dir)
    local stats = srv:stats()
    assert.equal(20, stats.requests)
    assert.is_true(stats.max_in_flight >= 10, "in flight at once: " .. stats.max_in_flight)
    -- one after the other they would take 30 s; the bound leaves room for a loaded machine
    assert.is_true(elapsed < 10, "20 requests took " .. elapsed .. " s")
  end)

  it("never crashed a handler (nginx's error log)", function()
    local log = nginx:log()
    assert.is_nil(log:find("runtime error", 1, true), log)
    assert.is_nil(log:find("[alert]", 1, true), log)
    assert.is_nil(log:find(srv.key, 1, true))
  end)
end)

describe("acquire.ngx and nginx's resolver #ngx", function()
  local dns, nginx, srv
  local BASE = "http://acquire-dns-test.example:9"     -- never resolved: the server is silent

  setup(function()
    srv = helper.start_server()
    dns = helper.start_dns { ["acquire-dns-ok.example"] = "127.0.0.1" }
    -- resolver_timeout is longer than any timeout below: only acquire.ngx can keep to them
    nginx = launcher.start_cases { base_url = BASE, key = srv.key,
      http = ("  resolver 127.0.0.1:%d ipv6=off;\n  resolver_timeout 4s;"):format(dns.port) }
  end)
  teardown(function()
    launcher.stop(nginx)
    if dns then dns.stop() end
    if srv then srv:stop() end
  end)

  local function timed(config)
    local t0 = socket.gettime()
    local doc = nginx:case({ config = config }, 30)
    return doc, socket.gettime() - t0
  end

  it("timeout bounds the name's resolution: kind timeout, within timeout, no retry past it", function()
    local doc, took = timed { timeout = 2 }
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.same({ "timeout", false, 1 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
    assert.equal("acquire: timeout: connecting to acquire-dns-test.example:9 timed out", doc.text)
    -- under 3.5 s: the resolver's own 4 s did not end it (room for a loaded machine)
    assert.is_true(took >= 1.9 and took < 3.5, "took " .. took .. " s")
    assert.is_true(dns.queries() >= 1, "nginx never asked the DNS server")
  end)

  it("a shorter connect_timeout is retried, within the timeout", function()
    local doc, took = timed { timeout = 2, connect_timeout = 0.5 }
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.same({ "timeout", false }, { doc.err.kind, doc.err.maybe_created })
    assert.is_true(doc.err.attempts >= 2, "attempts: " .. doc.err.attempts)
    assert.is_true(took < 3.5, "took " .. took .. " s")      -- the timeout's 2 s, not the resolver's 4
  end)

  it("a name that resolves: connected by a light thread, then used and pooled by the call", function()
    local base = "http://acquire-dns-ok.example:" .. srv.port
    for _ = 1, 3 do
      local doc = nginx:case { config = { base_url = base, timeout = 2 } }
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(2071, doc.res.data.id)
    end
    assert.equal("acquire-dns-ok.example:" .. srv.port, srv:last_request().headers.host)
    assert.same({ 3, 1 }, { srv:stats().requests, srv:stats().connections })
  end)

  it("leaves nginx sound: its worker answers, and logged no alert", function()
    local doc = nginx:case { config = { base_url = "http://127.0.0.1:" .. helper.free_port(),
                                        max_retries = 0 } }
    assert.same({ false, "network" }, { doc.ok, doc.err.kind })
    local log = nginx:log()
    assert.is_nil(log:find("[alert]", 1, true), log)
    assert.is_nil(log:find("runtime error", 1, true), log)
  end)
end)

describe("examples/nginx.conf #ngx", function()
  -- The example itself, started as `make demo-nginx` starts it: scripts/demo-nginx.sh up writes
  -- it into a directory with its `# CHANGE` lines given this checkout's paths and a port
  -- (spec/30-nginx_doc_spec.lua checks that nothing else differs), and down stops nginx and
  -- removes the directory.
  local SCRIPT = helper.shell_quote(ROOT .. "/scripts/demo-nginx.sh")
  local srv, dir, url, master

  local function post(path, body)
    local chunks = {}
    local _, code = require("socket.http").request {
      url = url .. path, method = "POST",
      source = require("ltn12").source.string(body),
      headers = { ["content-type"] = "application/json", ["content-length"] = #body },
      sink = require("ltn12").sink.table(chunks),
      create = function()
        local s = socket.tcp()
        s:settimeout(15)
        return s
      end,
    }
    return code, table.concat(chunks)
  end

  local function log() return helper.slurp(dir .. "/error.log") end

  setup(function()
    srv = helper.start_server()
    local out, code = helper.sh("cd " .. helper.shell_quote(ROOT) .. " && make -s .tmp/luajit/acquire.so")
    assert(code == 0, "building the LuaJIT module failed:\n" .. out)
    dir = helper.tmpdir()
    local port = helper.free_port()
    url = "http://127.0.0.1:" .. port
    out, code = helper.sh(("ACQUIRE_API_KEY=%s ACQUIRE_BASE_URL=%s %s up %s %d"):format(
      helper.shell_quote(srv.key), helper.shell_quote(srv.base_url), SCRIPT, helper.shell_quote(dir), port))
    assert(code == 0, "scripts/demo-nginx.sh up failed:\n" .. out)
    master = tonumber(helper.slurp(dir .. "/nginx.pid"):match("%d+"))
  end)
  teardown(function()
    if dir then helper.sh(SCRIPT .. " down " .. helper.shell_quote(dir)) end
    if srv then srv:stop() end
  end)

  it("is a whole nginx.conf, with what differs per machine on its CHANGE lines", function()
    local conf = helper.read_file(ROOT .. "/examples/nginx.conf")
    for _, want in ipairs { "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;", "events {",
                            "env ACQUIRE_API_KEY;", "env ACQUIRE_BASE_URL;", "resolver_timeout 5s;",
                            "lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
                            '"/usr/local/share/lua/5.1/?.lua;;";    # CHANGE',
                            '"/usr/local/lib/lua/5.1/?.so;;";       # CHANGE',
                            "/etc/resolv.conf", "listen 8080;" } do
      helper.contains(conf, want)
    end
    -- what only the demo needs is not in the example: no checkout path, no user, no pid, no include
    for line in conf:gmatch("[^\n]+") do
      local directive = line:gsub("#.*", "")
      assert.is_nil(directive:find(ROOT, 1, true), line)
      assert.is_nil(directive:match("^%s*user%s"), line)
      assert.is_nil(directive:match("^%s*pid%s"), line)
      assert.is_nil(directive:match("^%s*include%s"), line)
      assert.is_nil(directive:match("127%.0%.0%.53"), line)
    end
  end)

  it("creates cases at ACQUIRE_BASE_URL, answering as its handler says", function()
    local code, out = post("/cases?contact=597752", '{"title":"Refund"}')
    assert.equal(200, code, out .. log())
    assert.same({ id = 2071, status = "active" }, cjson.decode(out))
    assert.equal('{"title":"Refund"}', srv:last_request().body)
    assert.equal("Bearer " .. srv.key, srv:last_request().headers.authorization)
    code, out = post("/cases?contact=1", "{}")
    assert.equal(422, code, out)
    assert.same({ error = "http", status = 404, maybe_created = false }, cjson.decode(out))
    code, out = post("/cases?contact=597752", '{"agentId":"x"}')
    assert.equal(400, code, out)
    assert.matches("bad field 'agentId'", out, 1, true)
    for _, bad in ipairs { "", "abc", "-5", "1e3" } do
      code = post("/cases?contact=" .. bad, "{}")
      assert.equal(400, code, bad)
    end
    code, out = post("/cases?contact=9007199254740993", "{}")     -- digits, passed on exactly
    assert.equal(422, code, out)
    assert.equal("contactId=9007199254740993", srv:last_request().raw_query)
    assert.is_nil(log():find("[alert]", 1, true))
  end)

  it("is stopped by down: master and workers gone, its directory removed", function()
    local kids = helper.slurp(("/proc/%d/task/%d/children"):format(master, master))
    assert.is_truthy(kids:match("%d+"), "no worker under nginx " .. master)
    local out, code = helper.sh(SCRIPT .. " down " .. helper.shell_quote(dir))
    assert.equal(0, code, out)
    for pid in (master .. " " .. kids):gmatch("%d+") do
      assert.is_nil(io.open("/proc/" .. pid .. "/stat"), "process " .. pid .. " is still there")
    end
    assert.is_nil(io.open(dir .. "/nginx.pid"))
    assert.is_nil(io.open(dir))
    dir = nil
  end)
end)
