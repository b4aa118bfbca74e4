-- The fault matrix: every way the network or the API can fail, against the
-- local Acquire server (or a loopback listener made for the purpose). Each row
-- checks the err kind and status, maybe_created, how many requests the server
-- received (never a duplicate), and how long the call took.
local acquire = require "acquire"
local helper = require "spec.helper"
local socket = require "socket"

local CONTACT = 597752
local SLACK = 0.5            -- timeouts hold within +0.5 s
-- where the call would otherwise never end (a hang, a trickle of many seconds): room for a
-- loaded machine, still far below what the fault alone would take
local HANG_SLACK = 1.5

local srv

-- Runs create_case and returns res, err, elapsed seconds.
local function timed(c, contact, opts)
  local t0 = socket.gettime()
  local res, err = c:create_case(contact or CONTACT, opts)
  local dt = socket.gettime() - t0
  c:close()
  return res, err, dt
end

local function requests() return srv:stats().requests end

local function assert_err(err, kind, status, maybe_created)
  assert.is_table(err)
  assert.equal(kind, err.kind)
  assert.equal(status, err.status)
  assert.equal(maybe_created, err.maybe_created)
  helper.not_contains(tostring(err), srv.key)
end

describe("fault matrix", function()
  srv = helper.server()

  describe("before anything is sent: retried with backoff", function()
    it("refused port: network, code 7, tried 1 + max_retries times", function()
      local c = acquire.new{ base_url = "http://127.0.0.1:" .. helper.free_port(),
                             api_key = "k", max_retries = 2 }
      local res, err, dt = timed(c)
      assert.is_nil(res)
      assert_err(err, "network", nil, false)
      assert.equal(7, err.code)
      assert.equal(3, err.attempts)
      assert.is_true(dt < 0.5 + 1.0 + SLACK, "backoff is capped by 0.5 s then 1 s: " .. dt)
    end)

    it("unresolvable host (.invalid): network, code 6, retried", function()
      local c = acquire.new{ base_url = "http://acquire-test.invalid", api_key = "k",
                             max_retries = 1, connect_timeout = 2 }
      local res, err = timed(c)
      assert.is_nil(res)
      assert_err(err, "network", nil, false)
      assert.equal(6, err.code)
      assert.equal(2, err.attempts)
    end)

    it("connect timeout (a listener whose backlog is full): timeout, retried, within connect_timeout", function()
      local port, close = helper.unanswered_port()
      local c = acquire.new{ base_url = "http://127.0.0.1:" .. port, api_key = "k",
                             connect_timeout = 1, max_retries = 1 }
      local res, err, dt = timed(c)
      close()
      assert.is_nil(res)
      assert_err(err, "timeout", nil, false)
      assert.equal(28, err.code)
      assert.equal(2, err.attempts)
      assert.is_true(dt >= 1.95 and dt < 2 + 0.5 + SLACK, "two 1 s connect timeouts and one backoff: " .. dt)
    end)
  end)

  describe("after the request was sent: never sent again", function()
    it("a server that accepts and never answers: timeout after `timeout`", function()
      srv:fault{ action = "hang" }
      local res, err, dt = timed(srv:client{ timeout = 1 })
      assert.is_nil(res)
      assert_err(err, "timeout", nil, true)
      assert.equal(28, err.code)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
      assert.is_true(dt >= 0.95 and dt < 1 + HANG_SLACK, "timeout = 1 took " .. dt)
    end)

    it("a response that trickles past the timeout: timeout, the status seen", function()
      srv:fault{ action = "trickle", interval = 0.2 }
      local res, err, dt = timed(srv:client{ timeout = 1 })
      assert.is_nil(res)
      assert_err(err, "timeout", 200, true)
      assert.equal(1, requests())
      assert.is_true(dt >= 0.95 and dt < 1 + HANG_SLACK, "timeout = 1 took " .. dt)
    end)

    it("reset after the request: network, once", function()
      srv:fault{ action = "reset" }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "network", nil, true)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
    end)

    it("reset on a reused connection: libcurl does not resend it either", function()
      local c = srv:client()
      assert.is_table(c:create_case(CONTACT))
      srv:fault{ action = "reset", times = 1 }
      local res, err = c:create_case(CONTACT)
      c:close()
      assert.is_nil(res)
      assert_err(err, "network", nil, true)
      -- 42: the prereq guard aborted the resend (libcurl 7.80+); 65: it could not rewind
      assert.is_true(err.code == 42 or err.code == 65, "code " .. tostring(err.code))
      helper.contains(err.message, "not sent again")
      assert.equal(2, requests())              -- one success, one reset: no third
    end)

    it("a body shorter than its Content-Length: network, status 200", function()
      srv:fault{ action = "truncate" }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "network", 200, true)
      assert.equal(18, err.code)
      assert.equal(1, requests())
    end)
  end)

  describe("answers", function()
    it("invalid JSON with 200: decode, the case exists", function()
      srv:fault{ action = "invalid_json" }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "decode", 200, true)
      assert.equal("<html>not json", err.body)
      assert.equal(1, requests())
    end)

    it("an HTML 502 from a proxy: http 502, not retried", function()
      srv:fault{ action = "html" }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "http", 502, true)
      assert.is_nil(err.type)
      helper.contains(err.body, "502 Bad Gateway")
      assert.equal(1, requests())
    end)

    it("401: http, ERROR_UNAUTHORIZED, nothing created", function()
      local res, err = timed(srv:client{ api_key = "wrong-key" })
      assert.is_nil(res)
      assert_err(err, "http", 401, false)
      assert.equal("ERROR_UNAUTHORIZED", err.type)
      helper.not_contains(tostring(err), "wrong-key")
      assert.equal(1, requests())
    end)

    it("403: http, ERROR_UNAUTHORIZED_ACCESS", function()
      local res, err = timed(srv:client{ api_key = srv.readonly_key })
      assert.is_nil(res)
      assert_err(err, "http", 403, false)
      assert.equal("ERROR_UNAUTHORIZED_ACCESS", err.type)
      assert.equal(1, requests())
    end)

    it("404: http, unknown contact", function()
      local res, err = timed(srv:client(), 1)
      assert.is_nil(res)
      assert_err(err, "http", 404, false)
      assert.equal("Contact not found", err.message)
      assert.equal(1, requests())
    end)

    it("500: http, ERROR_SERVER_ERROR, never retried", function()
      srv:fault{ action = "status", status = 500 }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "http", 500, true)
      assert.equal("ERROR_SERVER_ERROR", err.type)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
    end)

    it("a 302 is not followed", function()
      srv:fault{ action = "redirect" }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "http", 302, false)
      assert.equal(1, requests())
      assert.equal(helper.API_PATH, srv:last_request().path)
    end)

    it("a chunked response decodes", function()
      srv:fault{ action = "chunked" }
      local res = timed(srv:client())
      assert.equal(2071, res.data.id)
      assert.equal(5, #res.data.contact.visits)
    end)

    it("a gzip response: Accept-Encoding sent, libcurl decodes", function()
      srv:fault{ action = "gzip" }
      local res = timed(srv:client())
      assert.equal(2071, res.data.id)
      helper.contains(srv:last_request().headers["accept-encoding"], "gzip")
    end)

    it("a response over max_response_bytes: http, cut off", function()
      local res, err = timed(srv:client{ max_response_bytes = 1000 })
      assert.is_nil(res)
      assert_err(err, "http", 200, true)
      helper.contains(err.message, "max_response_bytes")
      assert.equal(1, requests())
    end)
  end)

  describe("throttling and maintenance: Retry-After honoured", function()
    for _, status in ipairs{ 429, 503 } do
      it(status .. " with Retry-After: 1, then success: two requests, one case", function()
        srv:fault{ action = "status", status = status, headers = { ["Retry-After"] = "1" }, times = 1 }
        local res, err, dt = timed(srv:client())
        assert.is_nil(err)
        assert.equal(2071, res.data.id)
        assert.equal(2, requests())
        assert.is_true(dt >= 0.95 and dt < 1 + SLACK, "waited " .. dt)
      end)
    end

    it("Retry-After as an HTTP date is honoured too", function()
      local at = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = at }, times = 1 }
      local res, _, dt = timed(srv:client())
      assert.equal(2071, res.data.id)
      assert.equal(2, requests())
      assert.is_true(dt >= 0.9 and dt < 2 + SLACK, "waited " .. dt)
    end)

    it("Retry-After above 30 s: given up at once and returned", function()
      srv:fault{ action = "status", status = 429, headers = { ["Retry-After"] = "60" }, times = 1 }
      local res, err, dt = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "http", 429, false)
      assert.equal(60, err.retry_after)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
      assert.is_true(dt < SLACK)
    end)

    it("503 without Retry-After: not retried", function()
      srv:fault{ action = "status", status = 503, times = 1 }
      local res, err = timed(srv:client())
      assert.is_nil(res)
      assert_err(err, "http", 503, false)
      assert.equal(1, requests())
    end)

    it("max_retries = 0 turns retries off", function()
      srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "1" }, times = 1 }
      local res, err = timed(srv:client{ max_retries = 0 })
      assert.is_nil(res)
      assert.equal(503, err.status)
      assert.equal(1, requests())
    end)
  end)
end)

describe("TLS against the local server", function()
  local tls
  setup(function() tls = helper.start_server{ tls = true } end)
  teardown(function() tls:stop() end)

  it("fails verification without ca_file: tls, nothing sent, not retried", function()
    local c = acquire.new{ base_url = tls.base_url, api_key = tls.key }
    local res, err = c:create_case(CONTACT)
    c:close()
    assert.is_nil(res)
    assert.equal("tls", err.kind)
    assert.is_false(err.maybe_created)
    assert.equal(1, err.attempts)
    assert.equal(0, tls:stats().requests)
  end)

  it("succeeds with ca_file", function()
    local c = acquire.new{ base_url = tls.base_url, api_key = tls.key, ca_file = tls.ca_file }
    local res = c:create_case(CONTACT)
    c:close()
    assert.equal(2071, res.data.id)
  end)

  it("succeeds with insecure = true (never do this in production)", function()
    local c = acquire.new{ base_url = tls.base_url, api_key = tls.key, insecure = true }
    local res = c:create_case(CONTACT)
    c:close()
    assert.equal(2071, res.data.id)
  end)

  it("https to a plain-HTTP port fails, never silently succeeds", function()
    local plain = helper.start_server()
    local c = acquire.new{ base_url = "https://127.0.0.1:" .. plain.port, api_key = plain.key,
                           max_retries = 0 }
    local res, err = c:create_case(CONTACT)
    c:close()
    local seen = plain:stats().requests
    plain:stop()
    assert.is_nil(res)
    assert.equal("tls", err.kind)
    assert.equal(0, seen)
  end)
end)
