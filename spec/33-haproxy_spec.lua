-- acquire.haproxy inside a real haproxy (Debian's 2.6, Lua 5.3), whose Lua service creates cases
-- against the local Acquire server over core.tcp: the same results and errors as the libcurl
-- client, reconcile after a 500 that created the case, timeouts holding the call to its bound,
-- several requests at once that do not wait for each other, the log's lines, TLS (verified only
-- through an HAProxy `server` line reached by `via`; connect_ssl only with insecure = true), and
-- misuse raising before anything is sent. The launcher and the service are spec/haproxy.lua's.
local helper = require "spec.helper"
local launcher = require "spec.haproxy"
local cjson = require "cjson"
local socket = require "socket"

describe("acquire.haproxy in haproxy #haproxy", function()
  local srv = helper.server()
  local tls, untrusted, h

  local function call(q, timeout) return h:case(q, timeout) end

  local function plain(contact, opts, config)
    local c = srv:client(config)
    local res, err = c:create_case(contact or 597752, opts)
    c:close()
    return res, err
  end

  -- err from haproxy and err from libcurl agree on everything but libcurl's code
  local function same_err(doc, err)
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.is_true(doc.mt)
    local want = {}
    for k, v in pairs(err) do want[k] = v end
    want.code = nil
    assert.same(want, doc.err)
    assert.equal(tostring(err), doc.text)
  end

  setup(function()
    tls = helper.start_server { tls = true }
    untrusted = helper.start_server { tls = true }
    -- two listeners the driver reaches by `via`: HAProxy speaks TLS to the server, verified
    -- with the trusted server's certificate as its CA; the second points at the server whose
    -- certificate that CA did not sign
    h = launcher.start_cases { base_url = srv.base_url, key = srv.key, ports = 3, extra = function(hp)
      local line = "listen %s\n  mode tcp\n  bind 127.0.0.1:%d\n"
        .. "  server s 127.0.0.1:%d ssl verify required ca-file %s verifyhost 127.0.0.1\n"
      return line:format("verified", hp.ports[2], tls.port, tls.ca_file)
        .. line:format("unverifiable", hp.ports[3], untrusted.port, tls.ca_file)
    end }
  end)

  teardown(function()
    launcher.stop(h)
    for _, s in ipairs { tls, untrusted } do if s then s:stop() end end
  end)

  it("creates a case: the documented request, decoded as the libcurl client decodes it", function()
    local doc = call('{"opts":' .. helper.fixture("create-case-request.json") .. "}")
    local res = assert(plain(597752, helper.documented_opts()))
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.equal(helper.DOCUMENTED_BODY, reqs[1].body)
    assert.equal(reqs[2].body, reqs[1].body)
    assert.equal("/api/v1/crm/messenger/chat/create", reqs[1].path)
    assert.equal("contactId=597752", reqs[1].raw_query)
    assert.equal("Bearer " .. srv.key, reqs[1].headers.authorization)
    assert.equal("127.0.0.1:" .. srv.port, reqs[1].headers.host)
    assert.matches("^lua%-acquire/0%.1%.0 haproxy/2%.%d+", reqs[1].headers["user-agent"])
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.same(res, doc.res)
    assert.equal("acquire.haproxy client (http://127.0.0.1:" .. srv.port .. ")", doc.client)
  end)

  it("finds the contact's cases", function()
    assert.is_true(call({ opts = { title = "found" } }).ok)
    local doc = call { find = true }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(1, #doc.res)
    assert.equal("found", doc.res[1].title)
  end)

  it("returns the same err tables: 401, 404, HTML 502, 503, chunked and to-the-close bodies", function()
    same_err(call { config = { api_key = "wrong" } }, select(2, plain(nil, nil, { api_key = "wrong" })))
    local doc = call { contact = 1 }
    assert.same({ "http", 404, "Contact not found", false, 1 },
                { doc.err.kind, doc.err.status, doc.err.message, doc.err.maybe_created, doc.err.attempts })
    same_err(doc, select(2, plain(1)))
    for _, fault in ipairs {
      { action = "html", times = 1 },
      { action = "status", status = 503, times = 1 },
      { action = "status", status = 500, times = 1 },
    } do
      srv:fault(fault)
      doc = call {}
      srv:fault(fault)
      same_err(doc, select(2, plain()))
    end
    local res = assert(plain())
    srv:fault { action = "chunked", times = 1 }
    doc = call {}
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.same(res.data.contact, doc.res.data.contact)
    srv:fault { action = "raw", times = 1, body = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
      .. "Connection: close\r\n\r\n{\"data\":{\"id\":1}}" }               -- a body to the close
    doc = call {}
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(1, doc.res.data.id)
  end)

  it("a 500 after the server created the case: reconcile finds it, sent once", function()
    srv:fault { action = "status", status = 500, create = true, times = 1 }
    local doc = call { opts = { title = "lost-500" }, config = { reconcile = 0, max_retries = 0 } }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.is_true(doc.res.reconciled)
    assert.equal("lost-500", doc.res.data.title)
    assert.equal(1, #srv:cases())
    srv:fault { action = "status", status = 500, create = true, times = 1 }
    doc = call { opts = { title = "lost-again" }, config = { max_retries = 0 } }  -- no reconcile
    assert.same({ "http", 500, true }, { doc.err.kind, doc.err.status, doc.err.maybe_created })
  end)

  it("timeout bounds the whole call: a slow answer is a timeout, maybe created", function()
    srv:fault { action = "delay", seconds = 4, times = 1 }
    local t0 = socket.gettime()
    local doc = call { config = { timeout = 1, max_retries = 2 } }
    local took = socket.gettime() - t0
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.same({ "timeout", true, 1 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
    assert.matches("^acquire: timeout: ", doc.text)
    assert.is_true(took < 3.5, "took " .. took .. " s")      -- not the 4 s of the server's delay
  end)

  it("a refused port: kind network, maybe_created false, retried", function()
    local url = "http://127.0.0.1:" .. helper.free_port()
    local doc = call { config = { base_url = url, max_retries = 1 } }
    assert.is_false(doc.ok, cjson.encode(doc))
    assert.same({ "network", false, 2 }, { doc.err.kind, doc.err.maybe_created, doc.err.attempts })
    assert.matches("^acquire: network: could not connect to 127%.0%.0%.1:%d+: ", doc.text)
  end)

  it("several requests at once: each waits on the network, none on another", function()
    local N = 6
    srv:fault { action = "delay", seconds = 1, times = N }
    local body = cjson.encode { opts = { title = "parallel" } }
    local req = ("POST /case HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(#body, body)
    local t0 = socket.gettime()
    local socks = {}
    for i = 1, N do
      socks[i] = assert(socket.tcp())
      socks[i]:settimeout(20)
      assert(socks[i]:connect("127.0.0.1", h.port))
      assert(socks[i]:send(req))
    end
    for i = 1, N do
      local out = assert(socks[i]:receive("*a"))
      socks[i]:close()
      local doc = cjson.decode(out:match("\r\n\r\n(.*)$"))
      assert.is_true(doc.ok, out)
    end
    local took = socket.gettime() - t0
    assert.equal(N, #srv:cases())
    assert.is_true(took < N - 1, ("%d requests delayed 1 s each took %.2f s"):format(N, took))
  end)

  it("logs each attempt with debug = true to the logger, and to HAProxy's log without one", function()
    local doc = call { config = { debug = true }, opts = { title = "T" }, logger = "collect" }
    assert.is_true(doc.ok, cjson.encode(doc))
    assert.equal(2, #doc.lines, cjson.encode(doc.lines))
    assert.same({ "debug", "attempt 1: POST " .. srv.base_url
      .. "/api/v1/crm/messenger/chat/create?contactId=597752" }, doc.lines[1])
    assert.matches("^attempt 1: 200 in %d+%.%d ms, %d+ bytes$", doc.lines[2][2])
    assert.same({}, call({ config = { debug = false }, logger = "collect" }).lines)
    doc = call { config = { debug = true }, logger = "raise" }     -- a raising logger: the call goes on
    assert.is_true(doc.ok, cjson.encode(doc))
    local log = h:log()
    assert.matches("acquire: logger raised: [^\n]*this logger raises, key %[REDACTED%]", log)
    assert.is_nil(log:find(srv.key, 1, true))
    helper.contains(log, "acquire: attempt 1: POST " .. srv.base_url)
  end)

  it("raises on misuse before sending anything", function()
    local function raised(q, want)
      local doc = call(q)
      assert(doc.raised, cjson.encode(doc))
      helper.contains(doc.raised, want)
      return doc.raised
    end
    local r = raised({ contact = "12a" }, "bad argument #1 to 'create_case' (contactId must be a positive integer, got '12a')")
    assert.matches("^[^\n]*service%.lua:%d+: ", r)               -- the caller's line
    raised({ opts = { agentId = "x" } }, "bad field 'agentId' (integer expected, got string)")
    raised({ opts = { foo = 1 } }, "unknown field 'foo' in opts")
    raised({ config = { bogus = 1 } }, "bad option 'bogus'")
    raised({ config = { ca_file = "/etc/ssl/certs/ca-certificates.crt" } }, "bad option 'ca_file'")
    raised({ config = { via = 7 } }, "bad option 'via'")
    raised({ config = { proxy = "http://127.0.0.1:3128" } }, "bad option 'proxy' (not supported by acquire.haproxy")
    raised({ config = { base_url = tls.base_url } }, "cannot verify a certificate")
    raised({ config = { base_url = "http://acquire.example:80" } }, "resolves no host name")
    raised({ close = true }, "client is closed")
    assert.equal(0, srv:stats().requests)
  end)

  describe("TLS", function()
    before_each(function() tls:reset(); untrusted:reset() end)

    it("verified through `via`: HAProxy's server line checks the certificate", function()
      local doc = call { config = { base_url = tls.base_url, via = "127.0.0.1:" .. h.ports[2] } }
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(1, tls:stats().requests)
      assert.equal("acquire.haproxy client (https://127.0.0.1:" .. tls.port .. " via 127.0.0.1:"
        .. h.ports[2] .. ")", doc.client)
      assert.equal("127.0.0.1:" .. tls.port, tls:last_request().headers.host)
    end)

    it("a certificate the server line cannot verify: no request reaches the server", function()
      local doc = call { config = { base_url = untrusted.base_url, via = "127.0.0.1:" .. h.ports[3],
                                    max_retries = 0 } }
      assert.is_false(doc.ok, cjson.encode(doc))
      assert.equal("network", doc.err.kind)
      assert.is_true(doc.err.maybe_created)   -- the listener took the bytes: they may have gone on
      assert.equal(0, untrusted:stats().requests)
    end)

    it("insecure = true: connect_ssl, unverified as asked", function()
      local doc = call { config = { base_url = untrusted.base_url, insecure = true } }
      assert.is_true(doc.ok, cjson.encode(doc))
      assert.equal(1, untrusted:stats().requests)
    end)
  end)
end)
