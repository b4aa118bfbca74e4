-- The reliability audit's findings, one describe each (issue: "a case is never created
-- twice"), against the local Acquire server and child processes. The chaos spec
-- (11-chaos_spec.lua) checks the invariant over random server behaviours; these pin the
-- cases the audit found. Generators are seeded from SPEC_SEED (or the clock); the seed is in
-- every failure message.
local acquire = require "acquire"
local helper = require "spec.helper"
local keys = require "spec.keys"
local socket = require "socket"

local CONTACT = 597752
local SEED = tonumber(os.getenv("SPEC_SEED")) or os.time()
math.randomseed(SEED)

local srv
local function requests() return srv:stats().requests end

-- s holds key in no form a reader could see: neither raw nor once unescaped.
local function assert_no_key(s, key, context)
  if s:find(key, 1, true) or keys.unescape(s):find(key, 1, true) then
    error(("the key %q is readable in %q (%s, seed %d)"):format(key, s, context or "", SEED), 2)
  end
end

describe("reliability", function()
  srv = helper.server()

  describe("1: an answer libcurl rejects, after the whole POST was read", function()
    local GARBAGE = { "hello there", "HTTP/1.2 200 OK", "HTTP/1.1 abc", "FOO/1.1 200 OK", "\1\2\3\4" }

    it("create_case: sent once, maybe_created, whatever libcurl's code says", function()
      for _, line in ipairs(GARBAGE) do
        srv:reset()
        srv:fault{ action = "raw", body = line .. "\r\n\r\n", times = 3 }
        local res, err = srv:client():create_case(CONTACT)
        assert.is_nil(res)
        assert.is_true(err.maybe_created, line .. ": " .. tostring(err))
        assert.equal(1, err.attempts)
        assert.equal(1, requests(), line)
      end
    end)

    it("create_cases: each item sent once, each maybe_created", function()
      srv:fault{ action = "raw", body = "hello there\r\n\r\n", times = 9 }
      local results = srv:client():create_cases({ { CONTACT }, { CONTACT }, { CONTACT } })
      for i = 1, 3 do
        assert.is_true(results[i].err.maybe_created, tostring(results[i].err))
        assert.equal(1, results[i].err.attempts)
      end
      assert.equal(3, requests())
    end)

    it("acquire-case: exit 4, once, and says the case may exist", function()
      srv:fault{ action = "raw", body = "HTTP/1.2 200 OK\r\n\r\n", times = 3 }
      local r = helper.run_cli({ tostring(CONTACT) },
        { env = { ACQUIRE_BASE_URL = srv.base_url, ACQUIRE_API_KEY = srv.key }, merge = true })
      assert.equal(4, r.code, r.out)
      helper.contains(r.out, "may have been created")
      assert.equal(1, requests())
    end)
  end)

  describe("2, 3: re-entering the client from on_progress", function()
    -- run in a child with a time limit: a hang fails instead of stalling the suite
    local function child(body)
      return helper.run_lua(([[
        local acquire = require "acquire"
        local c = acquire.new{ base_url = %q, api_key = %q, timeout = 5 }
        %s
      ]]):format(srv.base_url, srv.key, body))
    end

    it("close() raises a clear error; nothing hangs; the client stays usable", function()
      local status, out, err = child([[
        local ok, msg = pcall(c.create_cases, c, { { 597752 }, { 597752 }, { 597752 } }, {
          concurrency = 1, on_progress = function() c:close() end })
        print(ok, msg)
        print(c:create_case(597752) ~= nil)
        c:close()
        print(pcall(c.create_case, c, 597752))
      ]])
      assert.equal(0, status, err)
      assert.truthy(out:match("^false\t[^\n]*acquire: cannot close a client while its create_cases runs"), out)
      helper.contains(out, "\ntrue\n")
      helper.contains(out, "client is closed")
    end)

    it("create_cases inside on_progress raises; create_case works and loses nothing", function()
      local status, out, err = child([[
        local inner = {}
        local results = c:create_cases({ { 597752, { title = "a" } }, { 597752, { title = "b" } } }, {
          concurrency = 1,
          on_progress = function(done)
            local ok, msg = pcall(c.create_cases, c, { { 597752 } })
            print("nested", ok, msg)
            local res = c:create_case(597752, { title = "inner" .. done })
            inner[#inner + 1] = res and res.data.title
          end })
        print("outer", results[1].res.data.title, results[2].res.data.title)
        print("inner", inner[1], inner[2])
      ]])
      assert.equal(0, status, err)
      helper.contains(out, "nested\tfalse\tacquire: create_cases is already running on this client")
      helper.contains(out, "outer\ta\tb")
      helper.contains(out, "inner\tinner1\tinner2")
      assert.equal(4, requests())
    end)

    it("the same through acquire.create_cases and the configured client", function()
      local status, out, err = child(([[
        acquire.configure{ base_url = %q, api_key = %q }
        local r = acquire.create_cases({ { 597752 }, { 597752 } }, { on_progress = function()
          print("nested", pcall(acquire.create_cases, { { 597752 } }))
        end })
        print("done", #r, r[1].res ~= nil, r[2].res ~= nil)
      ]]):format(srv.base_url, srv.key))
      assert.equal(0, status, err)
      helper.contains(out, "nested\tfalse\tacquire: create_cases is already running")
      helper.contains(out, "done\t2\ttrue\ttrue")
    end)
  end)

  describe("4: the key cannot be split or escaped around", function()
    it("acquire.redact: a generated key, echoed in generated JSON escapings, never readable", function()
      for n = 1, 3000 do
        local key = keys.random()
        local text = {}
        for _ = 1, math.random(1, 4) do
          text[#text + 1] = keys.junk()
          text[#text + 1] = keys.encode(key)
        end
        text[#text + 1] = keys.junk()
        text = table.concat(text)
        local out = acquire.redact(text, key)
        assert_no_key(out, key, "case " .. n .. " of " .. text)
        helper.contains(out, "[REDACTED]")
      end
    end)

    it("acquire.redact leaves text without the key as it was", function()
      for _ = 1, 500 do
        local key = keys.random()
        local text = keys.junk() .. key:sub(1, 1) .. keys.junk() .. key:sub(2, -2) .. keys.junk()
        if not keys.unescape(text):find(key, 1, true) and not text:find(key, 1, true) then
          local out = acquire.redact(text, key)
          -- only a cut key at the very end may be redacted beyond the text's own
          if out ~= text then
            assert.equal(text:sub(1, #out - #"[REDACTED]"), out:sub(1, -#"[REDACTED]" - 1), "seed " .. SEED)
          end
        end
      end
    end)

    it("err.body: a server that echoes the key JSON-escaped (PHP writes \\/)", function()
      local key = "ab/cd+ef=="
      local body = '{"message":"bad key ab\\/cd+ef==","auth":"Bearer \\u0061b\\/cd\\u002Bef=="}'
      local res, err = acquire.decode_response(401, nil, body, key)
      assert.is_nil(res)
      assert_no_key(err.body, key)
      assert_no_key(err.message, key)
      assert_no_key(tostring(err), key)
      srv:fault{ action = "status", status = 401, body = body }
      local c = acquire.new{ base_url = srv.base_url, api_key = key }
      res, err = c:create_case(CONTACT)
      assert.is_nil(res)
      assert_no_key(err.body, key)
    end)

    it("the debug log: a key the server echoes across reads, raw and escaped, never whole", function()
      -- the body is logged whole after the transfer, one line: a key cut between reads is
      -- redacted as one
      local key = srv.key
      for round = 1, 6 do
        local forms = { key, keys.encode(key) }
        local echoed = forms[round % 2 + 1]
        local body = '{"echo":"' .. echoed .. '","pad":"' .. ("x"):rep(math.random(0, 40)) .. '"}'
        local head = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: "
          .. #body .. "\r\nConnection: close\r\n\r\n"
        local cut = #head + #'{"echo":"' + math.random(1, #echoed - 1)     -- inside the echo
        local raw = head .. body
        srv:reset()
        srv:fault{ action = "raw", chunks = { raw:sub(1, cut), raw:sub(cut + 1) }, interval = 0.1 }
        local status, out, err = helper.run_lua(([[
          local c = require("acquire").new{ base_url = %q, api_key = %q, debug = "body", max_retries = 0 }
          local _, e = c:create_case(597752)
          print(e.status)
        ]]):format(srv.base_url, key))
        assert.equal(0, status, err)
        assert.equal("400\n", out)
        helper.contains(err, "acquire: debug: attempt 1: < {\"echo\":\"[REDACTED]\",\"pad\"")
        assert_no_key(err, key, ("round %d, cut at %d"):format(round, cut))
      end
    end)
  end)

  describe("5: retry_after takes any integer attempt", function()
    local throttled = select(2, acquire.decode_response(429, { ["Retry-After"] = "1" }, ""))

    it("gives up past max_retries, however large the attempt", function()
      assert.equal(1, acquire.retry_after(throttled, 1))
      assert.equal(1, acquire.retry_after(throttled, 10, 10))
      for _, attempt in ipairs { 11, 2 ^ 31 - 1, 2 ^ 31, 2 ^ 32, 2 ^ 53 } do
        assert.is_nil(acquire.retry_after(throttled, attempt), tostring(attempt))
        assert.is_nil(acquire.retry_after(throttled, attempt, 10), tostring(attempt))
      end
      if math.maxinteger then
        assert.is_nil(acquire.retry_after(throttled, math.maxinteger))
      end
    end)

    it("raises on what is no attempt", function()
      assert.has_error(function() acquire.retry_after(throttled, 0) end)
      assert.has_error(function() acquire.retry_after(throttled, 1.5) end)
      assert.has_error(function() acquire.retry_after(throttled, 0 / 0) end)
      assert.has_error(function() acquire.retry_after(throttled, 1, 11) end)
    end)
  end)

  describe("6: a Retry-After that is no date is no Retry-After", function()
    local MON = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }
    local DAY = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" }

    it("the audit's date: a 429 with it is not retried", function()
      srv:fault{ action = "status", status = 429, headers = { ["Retry-After"] = "Sun, 99 Nov 1994 99:99:99 GMT" } }
      local res, err = srv:client():create_case(CONTACT)
      assert.is_nil(res)
      assert.is_nil(err.retry_after)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
    end)

    it("generated impossible dates are ignored; generated real ones are read", function()
      for n = 1, 500 do
        local y, m, d = math.random(1990, 2090), math.random(12), math.random(28)
        local hh, mm, ss = math.random(0, 23), math.random(0, 59), math.random(0, 59)
        local field = math.random(6)
        local good = ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format(DAY[math.random(7)], d, MON[m], y, hh, mm, ss)
        local bad = ({
          function() return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format("Sun", math.random(32, 99), MON[m], y, hh, mm, ss) end,
          function() return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format("Sun", d, MON[m], y, math.random(24, 99), mm, ss) end,
          function() return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format("Sun", d, MON[m], y, hh, math.random(60, 99), ss) end,
          function() return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format("Sun", d, MON[m], y, hh, mm, math.random(61, 99)) end,
          function() return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format("Xyz", d, MON[m], y, hh, mm, ss) end,
          function()
            local short = ({ "Feb", "Apr", "Jun", "Sep", "Nov" })[math.random(5)]
            return ("%s, 31 %s %04d %02d:%02d:%02d GMT"):format("Sun", short, y, hh, mm, ss)
          end,
        })[field]()
        local _, e = acquire.decode_response(429, { ["Retry-After"] = bad }, "")
        assert.is_nil(e.retry_after, ("%s read as %s (case %d, seed %d)"):format(bad, tostring(e.retry_after), n, SEED))
        assert.is_nil(acquire.retry_after(e, 1), bad)
        _, e = acquire.decode_response(429, { ["Retry-After"] = good }, "")
        assert.is_number(e.retry_after, ("%s not read (seed %d)"):format(good, SEED))
      end
      local _, e = acquire.decode_response(503, { ["Retry-After"] = "Sun, 29 Feb 2032 10:00:00 GMT" }, "")
      assert.is_number(e.retry_after)                  -- a leap day
      _, e = acquire.decode_response(503, { ["Retry-After"] = "Sun, 29 Feb 2031 10:00:00 GMT" }, "")
      assert.is_nil(e.retry_after)
    end)
  end)

  describe("7: ids past 2^53 (the module's part; the CLI's is in 08-cli_spec)", function()
    local cfg = { base_url = "http://127.0.0.1:9", api_key = "k" }

    it("a float id past 2^53 may be a rounded neighbour: refused, never sent", function()
      for _, v in ipairs { 2 ^ 53 + 2, 2 ^ 60, 2 ^ 62 } do
        helper.contains(helper.raises(acquire.build_request, v, nil, cfg), "contactId must be a positive integer")
        helper.contains(helper.raises(acquire.build_request, 1, { threadId = v }, cfg), "bad field 'threadId'")
        helper.contains(helper.raises(acquire.build_request, 1, { mentionUsers = { v } }, cfg), "mentionUsers")
      end
      assert.equal("9007199254740992", acquire.build_request(2 ^ 53, nil, cfg).url:match("contactId=(%d+)"))
    end)

    it("digit strings carry a contactId exactly, on every Lua", function()
      for _, digits in ipairs { "9007199254740993", "9223372036854775807" } do
        assert.equal(digits, acquire.build_request(digits, nil, cfg).url:match("contactId=(%d+)$"))
      end
      helper.raises(acquire.build_request, "9223372036854775808", nil, cfg)
    end)
  end)

  describe("10: only lua-cjson's own parse errors are decode errors", function()
    it("an error raised inside the decoder propagates (the interpreter's interrupt)", function()
      local decode_response = acquire.decode_response
      debug.sethook(function()                     -- as lua.c's SIGINT hook: at the next call
        local caller = debug.getinfo(3, "f")
        if caller and caller.func == decode_response then error("interrupted!") end
      end, "c")
      local ok, msg = pcall(acquire.decode_response, 200, nil, '{"data":{"id":1}}')
      debug.sethook()
      assert.is_false(ok)
      helper.contains(tostring(msg), "interrupted!")
    end)

    it("Ctrl-C during a slow call stops the script", function()
      srv:fault{ action = "delay", seconds = 1.5 }
      local path = helper.tmpfile(([[
        local c = require("acquire").new{ base_url = %q, api_key = %q }
        local res, err = c:create_case(597752)
        print("still running", res, err)
      ]]):format(srv.base_url, srv.key))
      finally(function() os.remove(path) end)
      local child = helper.spawn({ helper.interpreter(), path },
        { env = { LUA_CPATH = "./?.so;;", LUA_PATH = "./?.lua;./lua/?.lua;;" } })
      -- Ctrl-C once the server holds the request (the call is under way), however long the
      -- child took to start
      local deadline = socket.gettime() + 30
      while srv:stats().requests == 0 and not child.done() and socket.gettime() < deadline do
        socket.sleep(0.01)
      end
      child.kill("INT")
      local r = child.wait(30)
      local status, out = r.code, r.out .. r.err
      assert.are_not.equal(0, status, out)
      helper.not_contains(out, "still running")
      helper.contains(out, "interrupted")
    end)

    it("parse errors are still decode errors", function()
      local res, err = acquire.decode_response(200, nil, "<html>")
      assert.is_nil(res)
      assert.equal("decode", err.kind)
      assert.is_true(err.maybe_created)
    end)
  end)

  describe("11: fork()", function()
    local posix = helper.testposix()

    -- parent calls, forks; the child calls (or only closes) and exits; the parent calls again
    local function fork_round(s, child_action)
      local c = acquire.new{ base_url = s.base_url, api_key = s.key, ca_file = s.ca_file }
      local res = assert(c:create_case(CONTACT, { title = "parent-1" }))
      assert.equal("parent-1", res.data.title)
      local parent_conn = s:last_request().connection
      local out = helper.tmpfile()
      local pid = posix.fork()
      if pid == 0 then
        local ok, msg = pcall(function()
          local text = "closed"
          if child_action == "call" then
            local r, e = c:create_case(CONTACT, { title = "child" })
            text = r and r.data.title or tostring(e)
          end
          c:close()
          local fh = io.open(out, "w")
          fh:write(text)
          fh:close()
        end)
        posix._exit(ok and 0 or (io.stderr:write(tostring(msg), "\n") and 3))
      end
      assert.equal(0, posix.waitpid(pid))
      local child_said = helper.read_file(out)
      os.remove(out)
      res = assert(c:create_case(CONTACT, { title = "parent-2" }))
      c:close()
      return child_said, res, parent_conn
    end

    -- fn(server) against the suite's server, or a TLS one started (and stopped) for it
    local function against(tls, fn)
      local s = tls and helper.start_server{ tls = true } or srv
      local ok, e = pcall(fn, s)
      if tls then s:stop() end
      if not ok then error(e, 0) end
    end

    for _, tls in ipairs { false, true } do
      local what = tls and "https" or "http"

      it(what .. ": the child gets its own answer on its own connection; the parent keeps its", function()
        against(tls, function(s)
          local child_said, res, parent_conn = fork_round(s, "call")
          assert.equal("child", child_said)
          assert.equal("parent-2", res.data.title)
          local reqs = s:requests()
          assert.equal(3, #reqs)
          assert.are_not.equal(parent_conn, reqs[2].connection)   -- the child's
          assert.equal(parent_conn, reqs[3].connection)           -- undisturbed
        end)
      end)

      it(what .. ": a child that only closes the client leaves the parent's connection be", function()
        against(tls, function(s)
          local child_said, res, parent_conn = fork_round(s, "close")
          assert.equal("closed", child_said)
          assert.equal("parent-2", res.data.title)
          local reqs = s:requests()
          assert.equal(2, #reqs)
          assert.equal(parent_conn, reqs[2].connection)
        end)
      end)
    end
  end)

  describe("12: descriptors and ca_file", function()
    it("out of file descriptors says EMFILE, and nothing was sent", function()
      local status, out, err = helper.run_lua(([[
        local c = require("acquire").new{ base_url = %q, api_key = %q, max_retries = 0 }
        local files = {}
        while true do
          local f = io.open("/dev/null")
          if not f then break end
          files[#files + 1] = f
        end
        local res, e = c:create_case(597752)
        print(res, e.kind, e.errno, e.maybe_created, tostring(e))
      ]]):format(srv.base_url, srv.key), { prefix = "ulimit -n 64;" })
      assert.equal(0, status, err)
      helper.contains(out, "nil\tnetwork\t24\tfalse\t")
      helper.contains(out, "EMFILE")
      assert.equal(0, requests())
    end)

    it("a ca_file with no certificate in it raises in acquire.new", function()
      local dir = helper.tmpdir()
      local files = {
        empty = "",
        garbage = "\0\1\2 not a certificate",
        key_only = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
        broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
      }
      for name, text in pairs(files) do
        local path = helper.write_file(dir .. "/" .. name, text)
        local msg = helper.raises(acquire.new, { base_url = srv.base_url, api_key = "k", ca_file = path })
        helper.contains(msg, "bad option 'ca_file'")
        helper.contains(msg, "no PEM certificate")
      end
      helper.contains(helper.raises(acquire.new, { base_url = srv.base_url, api_key = "k", ca_file = dir }),
                      "a directory")
      helper.rmrf(dir)
      assert.equal(0, requests())
    end)
  end)
end)
