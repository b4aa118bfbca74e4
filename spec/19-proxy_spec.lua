-- Proxies and the log, for the libcurl client: a real proxy (Debian's tinyproxy, spec/proxy.lua)
-- between the client and the local Acquire server, over http and over https; the `proxy` option
-- and the environment it stands for; the `logger` and `debug` options. acquire.ngx's side is
-- spec/20-ngx_proxy_spec.lua.
local helper = require "spec.helper"
local proxy = require "spec.proxy"
local acquire = require "acquire"

local CONTACT = 597752
local USER, PASS, no_secret = proxy.USER, proxy.PASS, proxy.no_secret

-- Every line a logger got, as "level: line".
local function recorder()
  local lines = {}
  return lines, function(level, line) lines[#lines + 1] = level .. ": " .. line end
end

for _, tls in ipairs{ false, true } do
  describe("through a proxy to an " .. (tls and "https" or "http") .. " server", function()
    local srv, px, authpx
    setup(function()
      srv = helper.start_server{ tls = tls }
      px = proxy.start()
      authpx = proxy.start{ auth = USER .. ":" .. PASS }
    end)
    teardown(function()
      if px then px.stop() end
      if authpx then authpx.stop() end
      if srv then srv:stop() end
    end)
    before_each(function() srv:reset() end)

    it("creates the case, and the proxy's own log shows the " .. (tls and "CONNECT" or "request"), function()
      local before = #px.requests()
      local c = srv:client{ proxy = px.url }
      local res = assert(c:create_case(CONTACT, { title = "via proxy" }))
      assert.equal(2071, math.floor(res.data.id))
      local seen = px.requests()
      -- one request, or (under valgrind's pace, a connect timeout: nothing sent) a retry's too
      assert.is_true(#seen >= before + 1 and #seen <= before + 3, #seen - before .. " requests")
      if tls then
        assert.equal("CONNECT 127.0.0.1:" .. srv.port .. " HTTP/1.1", seen[#seen])
      else                                    -- absolute-form: the proxy sees the target
        assert.equal("POST " .. srv.base_url .. helper.API_PATH .. "?contactId="
          .. CONTACT .. " HTTP/1.1", seen[#seen])
      end
      assert.equal(1, #srv:requests())
      c:close()
    end)

    it("sends 20 calls through it" .. (tls and " on one tunnel" or ""), function()
      local before = #px.requests()
      local c = srv:client{ proxy = px.url }
      for i = 1, 20 do assert(c:create_case(CONTACT, { title = "n" .. i })) end
      local seen = px.requests()
      -- tinyproxy closes after each absolute-form request; a tunnel stays open
      assert.equal(tls and 1 or 20, #seen - before)
      assert.equal(20, #srv:requests())
      c:close()
    end)

    -- issue 17, finding 3: whose 407 is it? Decided by stage (policy.c): inside the tunnel it
    -- is Acquire's (kind http, never resent); through a plain proxy the proxy's (kind proxy,
    -- not retried). Either way: one POST, one case at most, nothing sent again.
    it("a 407 from Acquire " .. (tls and "inside the tunnel is Acquire's" or "through a plain proxy is not retried"),
      function()
        srv:fault{ action = "status", status = 407, create = true, times = 5,
                   headers = { ["Proxy-Authenticate"] = 'Basic realm="acquire"' } }
        local c = srv:client{ proxy = px.url, max_retries = 3 }
        local res, err = c:create_case(CONTACT, { title = "407" })
        assert.is_nil(res)
        assert.equal(1, err.attempts)
        assert.equal(1, #srv:requests())             -- never sent twice
        if tls then
          assert.equal("http", err.kind)
          assert.equal(407, err.status)
          assert.is_nil(err.proxy_status)
        else
          assert.equal("proxy", err.kind)
          assert.equal(407, err.proxy_status)
          assert.is_false(err.maybe_created)
        end
        c:close()
      end)

    if tls then
      it("verifies Acquire's certificate end to end, through the tunnel", function()
        local c = acquire.new{ base_url = srv.base_url, api_key = srv.key, proxy = px.url }
        local res, err = c:create_case(CONTACT)
        assert.is_nil(res)
        assert.equal("tls", err.kind)                -- the server's self-signed certificate
        assert.is_false(err.maybe_created)
        assert.equal(0, #srv:requests())
        c:close()
        c = acquire.new{ base_url = srv.base_url, api_key = srv.key, proxy = px.url, insecure = true }
        assert(c:create_case(CONTACT))
        c:close()
      end)
    end

    if tls then
      it("a CONNECT the proxy answers 5xx is kind proxy, retried; so is a tunnel it closes", function()
        local dead = "https://127.0.0.1:" .. helper.free_port()    -- tinyproxy: 500 Unable to connect
        local c = acquire.new{ base_url = dead, api_key = srv.key, proxy = px.url, max_retries = 1 }
        local res, err = c:create_case(CONTACT)
        assert.is_nil(res)
        assert.equal("proxy", err.kind)
        assert.equal(500, err.proxy_status)
        assert.is_false(err.maybe_created)
        assert.equal(2, err.attempts)
        c:close()
        -- a proxy that says yes to CONNECT, then closes the tunnel: 2 connections, then it exits
        local port = helper.free_port()
        local script = helper.tmpfile(([[
          local socket = require "socket"
          local s = assert(socket.bind("127.0.0.1", %d))
          for _ = 1, 2 do
            local conn = s:accept()
            repeat local line = conn:receive("*l") until line == nil or line == ""
            conn:send("HTTP/1.1 200 Connection established\r\n\r\n")
            conn:close()
          end
        ]]):format(port))
        local child = helper.spawn({ helper.interpreter(), script },
          { env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } })
        for _ = 1, 200 do
          local probe = require("socket").tcp()
          local up = probe:connect("127.0.0.1", port)
          probe:close()
          if up then break end
          require("socket").sleep(0.01)
        end
        -- that probe was one of the two connections
        c = srv:client{ proxy = "http://127.0.0.1:" .. port, max_retries = 0 }
        res, err = c:create_case(CONTACT)
        child.wait(5)
        os.remove(script)
        assert.is_nil(res)
        assert.equal("proxy", err.kind)
        helper.contains(err.message, "the tunnel closed before TLS to Acquire was up")
        assert.is_false(err.maybe_created)
        assert.equal(0, #srv:requests())
        c:close()
      end)
    end

    it("answers 407 without credentials: kind proxy, nothing reached Acquire, not retried", function()
      local c = srv:client{ proxy = authpx.url, max_retries = 2 }
      local res, err = c:create_case(CONTACT, { title = "x" })
      assert.is_nil(res)
      assert.equal("proxy", err.kind)
      assert.equal(407, err.proxy_status)
      assert.is_false(err.maybe_created)
      assert.is_nil(err.status)
      assert.equal(1, err.attempts)
      helper.contains(tostring(err), "proxy " .. authpx.url)
      assert.equal(0, #srv:requests())
      c:close()
    end)

    it("goes through with the credentials, which show nowhere", function()
      local lines, logger = recorder()
      local url = ("http://%s:%s@127.0.0.1:%d"):format(USER, PASS, authpx.port)
      local c = srv:client{ proxy = url, debug = "body", logger = logger }
      assert(c:create_case(CONTACT, { title = "with credentials" }))
      helper.contains(tostring(c), " via proxy http://[REDACTED]@127.0.0.1:" .. authpx.port)
      no_secret(tostring(c), "tostring(client)")
      no_secret(table.concat(lines, "\n"), "the log")
      helper.contains(lines[1], " via proxy http://[REDACTED]@127.0.0.1:" .. authpx.port)
      local _, err = srv:client{ proxy = url, base_url = srv.base_url, api_key = "wrong" }
        :create_case(CONTACT)
      no_secret(tostring(err) .. (err.body or "") .. (err.message or ""), "err")
      c:close()
    end)

    it("reports a dead proxy as kind proxy, retried, and nothing sent", function()
      local dead = proxy.dead()
      local lines, logger = recorder()
      local c = srv:client{ proxy = dead, max_retries = 1, debug = true, logger = logger }
      local res, err = c:create_case(CONTACT)
      assert.is_nil(res)
      assert.equal("proxy", err.kind)
      assert.is_false(err.maybe_created)
      assert.equal(2, err.attempts)
      helper.contains(err.message, "proxy " .. dead .. ": could not connect")
      assert.equal(0, #srv:requests())
      assert.matches("^warn: attempt 1 failed: acquire: proxy: .*; retrying in %d+%.%d%d s$", lines[2])
      assert.matches("^error: attempt 2 failed: acquire: proxy: .*; giving up$", lines[4])
      c:close()
    end)

    it("proxy = false ignores a dead proxy in the environment; NO_PROXY is honoured; nil follows it",
       function()
      local var = tls and "https_proxy" or "http_proxy"
      local code = ([[
        local acquire = require "acquire"
        local c = acquire.new{ base_url = %q, api_key = %q, ca_file = %s, max_retries = 0,
                               proxy = %s }
        local res, err = c:create_case(%d)
        print(res and "created" or tostring(err))
      ]])
      local function run(p, env)
        local _, out, errout = helper.run_lua(code:format(srv.base_url, srv.key,
          srv.ca_file and ("%q"):format(srv.ca_file) or "nil", p, CONTACT), { env = env })
        return out .. errout
      end
      local dead = proxy.dead()
      helper.contains(run("nil", { [var] = dead }), "acquire: proxy: proxy " .. dead)
      helper.contains(run("false", { [var] = dead }), "created")
      helper.contains(run("nil", { [var] = dead, NO_PROXY = "localhost,127.0.0.1" }), "created")
      helper.contains(run("nil", { [var] = dead, no_proxy = "*" }), "created")
      local before = #px.requests()
      helper.contains(run("nil", { [var] = px.url }), "created")         -- the environment's
      assert.equal(before + 1, #px.requests())
      if not tls then                         -- curl's rule: HTTP_PROXY is never read
        helper.contains(run("nil", { HTTP_PROXY = dead }), "created")
      end
      helper.contains(run("nil", { ALL_PROXY = dead }), "acquire: proxy: proxy " .. dead)
    end)
  end)
end

describe("the proxy option", function()
  it("takes http://[user[:password]@]host:port and nothing else", function()
    for _, bad in ipairs{ "https://h:1", "socks5://h:1", "http://h", "http://h:0", "http://h:70000",
                          "http://h:1/path", "http://@h:1", "http://u@:1", "h:1", "", "http://u:p@h:1?x",
                          "http://a b:c@h:1", "http://u:%zz@h:1", "http://u:a%00b@h:1", true, 1 } do
      local msg = helper.raises(acquire.new, { base_url = "http://x", api_key = "k", proxy = bad })
      helper.contains(msg, "bad option 'proxy'")
    end
  end)

  it("a bad proxy in the environment raises naming the variable", function()
    local _, out, err = helper.run_lua([[
      print(pcall(require("acquire").new, { base_url = "https://x", api_key = "k" }))
    ]], { env = { https_proxy = "socks5://127.0.0.1:1080" } })
    helper.contains(out .. err, "bad proxy in environment variable 'https_proxy'")
  end)

  it("decodes any credentials, sends them as Basic, shows them nowhere (generator)", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    math.randomseed(seed)
    local function b64(s)
      local t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
      return ((s:gsub(".", function(x)
        local r, b = "", x:byte()
        for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
        return r
      end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
        if #x < 6 then return "" end
        local c = 0
        for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
        return t:sub(c + 1, c + 1)
      end) .. ({ "", "==", "=" })[#s % 3 + 1])
    end
    for round = 1, 300 do
      local function word(min)
        local t = {}
        for i = 1, math.random(min, 12) do t[i] = string.char(math.random(1, 255)) end
        return table.concat(t)
      end
      local user, pass = word(1), word(4)
      local function enc(s)                      -- unreserved bytes raw or escaped, the rest escaped
        return (s:gsub(".", function(ch)
          if ch:match("[%w%-%._~]") and math.random() < 0.7 then return ch end
          return ("%%%02" .. (math.random() < 0.5 and "x" or "X")):format(ch:byte())
        end))
      end
      local url = ("http://%s:%s@127.0.0.1:3128"):format(enc(user), enc(pass))
      local ok, cfg = pcall(acquire.config, { base_url = "https://x.example", api_key = "k", proxy = url })
      assert(ok, ("seed %d round %d: %s raised %s"):format(seed, round, url, tostring(cfg)))
      assert.equal("Basic " .. b64(user .. ":" .. pass), cfg.proxy.authorization,
        ("seed %d round %d"):format(seed, round))
      assert.equal("http://[REDACTED]@127.0.0.1:3128", cfg.proxy.display)
      local text = tostring(acquire.new{ base_url = "https://x.example", api_key = "k", proxy = url })
      for _, secret in ipairs{ pass, b64(user .. ":" .. pass) } do
        assert(not text:find(secret, 1, true), ("seed %d round %d: %q in %q"):format(seed, round, secret, text))
      end
      local line = "echo " .. pass .. " and " .. url .. " and " .. cfg.proxy.authorization
      local red = acquire.redact(line, (table.unpack or unpack)(cfg.secrets))
      -- a password under 6 bytes is redacted where it stands only (the URL, the token): README
      assert(not red:find(url, 1, true) and not red:find(cfg.proxy.authorization, 1, true)
        and (#pass < 6 or not red:find(pass, 1, true) and not red:find(enc(pass), 1, true)),
        ("seed %d round %d: %q"):format(seed, round, red))
    end
  end)
end)

describe("the log", function()
  local srv = helper.server()

  it("says nothing without debug, even with a logger", function()
    local lines, logger = recorder()
    assert(srv:client{ logger = logger }:create_case(CONTACT))
    assert.same({}, lines)
  end)

  it("gives a line per step for a success, a retry and a failure; no body without debug = \"body\"", function()
    local lines, logger = recorder()
    local c = srv:client{ debug = true, logger = logger, max_retries = 1 }
    srv:fault{ action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = 1 }
    assert(c:create_case(CONTACT, { title = "T" }))
    local url = srv.base_url .. helper.API_PATH .. "?contactId=" .. CONTACT
    assert.equal("debug: attempt 1: POST " .. url, lines[1])
    assert.matches("^debug: attempt 1: 503 in %d+%.%d ms, %d+ bytes$", lines[2])
    assert.matches("^warn: attempt 1 failed: acquire: http 503.*; retrying in 0%.00 s$", lines[3])
    assert.equal("debug: attempt 2: POST " .. url, lines[4])
    assert.matches("^debug: attempt 2: 200 in %d+%.%d ms, %d+ bytes$", lines[5])
    assert.equal(5, #lines)
    srv:fault{ action = "status", status = 422, body = '{"message":"no"}' }
    assert.is_nil(c:create_case(CONTACT))
    assert.matches("^error: attempt 1 failed: acquire: http 422: no; giving up$", lines[#lines])
  end)

  it("adds the bodies, one line each, with debug = \"body\"", function()
    local lines, logger = recorder()
    assert(srv:client{ debug = "body", logger = logger }:create_case(CONTACT, { title = "a\nb" }))
    assert.equal('debug: attempt 1: > {"title":"a\\nb"}', lines[2])
    assert.matches('^debug: attempt 1: < {\\n +"data": {\\n', lines[4])   -- CR, LF written \r, \n
    for _, l in ipairs(lines) do assert.is_nil(l:find("\n", 1, true)) end
  end)

  it("prefixes a batch's lines with the item", function()
    local lines, logger = recorder()
    local res = srv:client{ debug = true, logger = logger }:create_cases({ { CONTACT }, { CONTACT } })
    assert.equal(2, #res)
    local items = {}
    for _, l in ipairs(lines) do items[#items + 1] = l:match("^debug: item (%d): attempt 1: POST ") end
    table.sort(items)
    assert.same({ "1", "2" }, items)
  end)

  it("survives a logger that raises: the call's result stands, the line goes to stderr", function()
    local status, out, err = helper.run_lua(([[
      local acquire = require "acquire"
      local n = 0
      local c = acquire.new{ base_url = %q, api_key = %q, debug = true,
                             logger = function(level, line) n = n + 1; error("logger broke " .. %q) end }
      local res = c:create_case(%d)
      print(res and res.data and "created", n)
      c = acquire.new{ base_url = %q, api_key = %q, debug = true }
      c = acquire.new{ base_url = %q, api_key = %q, debug = true,
                       logger = function() return c:create_case(1) end }
      print(c:create_case(%d) and "created again")
    ]]):format(srv.base_url, srv.key, srv.key, CONTACT, srv.base_url, srv.key, srv.base_url, srv.key,
               CONTACT))
    assert.equal(0, status, err)
    assert.equal("created\t2\ncreated again\n", out)
    helper.contains(err, "acquire: logger raised: ")
    helper.contains(err, "logger broke [REDACTED]")       -- the key it raised with, redacted
    helper.contains(err, "acquire: debug: attempt 1: POST ")
    helper.contains(err, "a client cannot be used from its own logger")
  end)
end)

describe("acquire-case", function()
  local srv = helper.server()

  it("--proxy URL goes through it; --no-proxy ignores the environment's; credentials show nowhere",
     function()
    local px = proxy.start{ auth = proxy.USER .. ":" .. proxy.PASS }
    local ok, err = pcall(function()
      local env = { ACQUIRE_API_KEY = srv.key }
      local url = ("http://%s:%s@127.0.0.1:%d"):format(proxy.USER, proxy.PASS, px.port)
      local file = helper.tmpfile(url .. "\n")               -- a password never on argv: --proxy-file
      local r = helper.run_cli({ "--base-url", srv.base_url, "--proxy-file", file, tostring(CONTACT) }, { env = env })
      assert.equal(0, r.code, r.err)
      assert.equal(1, #px.requests())
      local dead = proxy.dead()
      env.http_proxy = dead
      r = helper.run_cli({ "--base-url", srv.base_url, "--no-proxy", tostring(CONTACT) }, { env = env })
      assert.equal(0, r.code, r.err)
      r = helper.run_cli({ "--base-url", srv.base_url, tostring(CONTACT) }, { env = env })
      assert.equal(4, r.code)                                 -- the dead proxy: a network-class failure
      helper.contains(r.err, "proxy " .. dead)
      env.http_proxy = nil
      local wrong = ("http://%s:wrong-%s@127.0.0.1:%d"):format(proxy.USER, proxy.PASS, px.port)
      helper.write_file(file, wrong .. "\n")
      r = helper.run_cli({ "--base-url", srv.base_url, "--proxy-file", file, tostring(CONTACT) }, { env = env })
      assert.are_not.equal(0, r.code)
      proxy.no_secret(r.out .. r.err, "the CLI's output")
      r = helper.run_cli({ "--base-url", srv.base_url, "--proxy", "socks5://h:1", tostring(CONTACT) }, { env = env })
      assert.equal(2, r.code)
      helper.contains(r.err, "bad option 'proxy'")
      r = helper.run_cli({ "--base-url", srv.base_url, "--proxy", url, "--no-proxy", tostring(CONTACT) },
        { env = env })
      assert.equal(2, r.code)
      os.remove(file)
    end)
    px.stop()
    assert(ok, err)
  end)
end)
