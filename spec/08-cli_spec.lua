-- bin/acquire-case, run as a process against the local Acquire server
-- (spec/server/): what it prints, what it sends, how it exits.
local cjson = require "cjson"
local helper = require "spec.helper"

local ENDPOINT = helper.API_PATH
local CONTACT = "597752"
local IP = "2402:8100:21f5:3d13:d9da:18ea:aa28:f778"
local LAST_VISIT = "https://5mkg3t.uat.env.acquire.io/simulate"

-- Temporary files a spec wrote (--json, --key-file), removed in teardown.
local temps = {}
local function tmpfile(content)
  temps[#temps + 1] = helper.tmpfile(content or "")
  return temps[#temps]
end

-- Every key any run was given; none may appear in any output (checked
-- after each run, and again over all of them at the end).
local keys_used = {}
local outputs = {}

-- run(args [, env [, stdin]]) -> { code, out, err }: bin/acquire-case with only the
-- ACQUIRE_* variables of env (helper.run_cli).
local function run(args, env, stdin)
  if env and env.ACQUIRE_API_KEY then keys_used[env.ACQUIRE_API_KEY] = true end
  local r = helper.run_cli(args, { env = env, stdin = stdin })
  assert.is_number(r.code, "the CLI did not exit: " .. r.out .. r.err)
  for key in pairs(keys_used) do
    assert.is_nil(r.out:find(key, 1, true), "the key is on stdout: " .. r.out)
    assert.is_nil(r.err:find(key, 1, true), "the key is on stderr: " .. r.err)
  end
  outputs[#outputs + 1] = r
  return r
end

local function one_line(s)
  assert.is_truthy(s:match("^[^\n]+\n$"), "expected one line, got: " .. s)
  return s
end

local contains, excludes = helper.contains, helper.not_contains

describe("bin/acquire-case", function()
  local srv = helper.server()
  local env

  setup(function()
    keys_used[srv.key] = true
    env = { ACQUIRE_API_KEY = srv.key, ACQUIRE_BASE_URL = srv.base_url }
  end)

  teardown(function()
    for _, p in ipairs(temps) do os.remove(p) end
  end)

  local function with(extra)
    local e = {}
    for k, v in pairs(env) do e[k] = v end
    for k, v in pairs(extra) do e[k] = v or nil end
    return e
  end

  local function nothing_sent()
    assert.same({}, srv:requests())
  end

  describe("creates the case", function()
    it("and prints the whole response as JSON", function()
      local r = run({ CONTACT, "--title", "Printer on fire" }, env)
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      local res = cjson.decode(r.out)
      assert.equal(2071, res.data.id)
      assert.equal("Printer on fire", res.data.title)
      assert.equal("active", res.data.status)
      assert.equal(5, #res.data.contact.visits)
      assert.equal(LAST_VISIT, res.data.contact.visits[5].url)
      assert.is_nil(r.out:find("\\/", 1, true))          -- URLs are not escaped

      local reqs = srv:requests()
      assert.equal(1, #reqs)
      assert.equal("POST", reqs[1].method)
      assert.equal(ENDPOINT, reqs[1].path)
      assert.equal(CONTACT, reqs[1].query.contactId)
      assert.equal("Bearer " .. srv.key, reqs[1].headers.authorization)
      assert.equal('{"title":"Printer on fire"}', reqs[1].body)
    end)

    it("and prints a summary with --output summary", function()
      local r = run({ CONTACT, "--title=Summary please", "--output", "summary" }, env)
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal(table.concat({
        "case: 2071",
        "status: active",
        "title: Summary please",
        "contact: 597752",
        "name: -",
        "ip: " .. IP,
        "countryId: 517",
        "visits: 5",
        "last visit: " .. LAST_VISIT,
      }, "\n") .. "\n", r.out)
    end)

    it("sending every flag in the API's order, as compact JSON", function()
      local r = run({ "--base-url", srv.base_url, CONTACT,
        "--title", "Refund", "--message", "I'm reopening the \"closed\" case",
        "--source=firstMessage", "--channel", "chat",
        "--agent", "25", "--route-agent=0",
        "--mention", "00", "--mention=42",
        "--field", "plan=gold", "--field", "city=", "--field=note=a=b" }, env)
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal('{"title":"Refund","source":"firstMessage","mentionUsers":["00","42"],'
        .. '"message":{"type":"message","message":"I\'m reopening the \\"closed\\" case","translateLangKey":""},'
        .. '"channel":"chat","routeAgentId":0,"agentId":25,'
        .. '"fields":{"city":"","note":"a=b","plan":"gold"}}', srv:last_request().body)
      assert.equal("Refund", cjson.decode(r.out).data.title)
    end)

    it("with no flag, sending {}", function()
      local r = run({ CONTACT }, env)
      assert.equal(0, r.code, r.err)
      assert.equal("{}", srv:last_request().body)
    end)
  end)

  describe("--json", function()
    local OPTS = '{"title":"from json","source":"json","message":{"type":"message",'
      .. '"message":"json message","translateLangKey":""},"mentionUsers":["1","2"],'
      .. '"isFromCobrowse":true,"agentId":3,"fields":{"plan":"free","city":"Paris"}}'

    it("reads opts from a file; flags override its keys", function()
      local file = tmpfile(OPTS)
      local r = run({ CONTACT, "--json", file, "--title", "from flag", "--mention", "9",
                      "--field", "plan=gold" }, env)
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal('{"title":"from flag","source":"json","mentionUsers":["9"],'
        .. '"message":{"type":"message","message":"json message","translateLangKey":""},'
        .. '"agentId":3,"isFromCobrowse":true,"fields":{"city":"Paris","plan":"gold"}}',
        srv:last_request().body)
      assert.equal("from flag", cjson.decode(r.out).data.title)
    end)

    it("reads opts from standard input with -", function()
      local r = run({ CONTACT, "--json=-", "--agent", "7", "--output", "summary" }, env, OPTS)
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal('{"title":"from json","source":"json","mentionUsers":["1","2"],'
        .. '"message":{"type":"message","message":"json message","translateLangKey":""},'
        .. '"agentId":7,"isFromCobrowse":true,"fields":{"city":"Paris","plan":"free"}}',
        srv:last_request().body)
      contains(r.out, "title: from json\n")
    end)

    it("reopens a case with threadId and sessionId, written exactly", function()
      local r = run({ CONTACT, "--json", "-" }, env,
        '{"title":"string","threadId":1683,"sessionId":3711819272}')
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal('{"title":"string","threadId":1683,"sessionId":3711819272}',
        srv:last_request().body)
      assert.equal(1694, cjson.decode(r.out).data.id)
    end)

    it("turns JSON null into acquire.null", function()
      local r = run({ CONTACT, "--json", "-" }, env, '{"fields":{"plan":null}}')
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal('{"fields":{"plan":null}}', srv:last_request().body)
    end)

    it("that is not JSON is a usage error; nothing is sent", function()
      local r = run({ CONTACT, "--json", "-" }, env, "{title: nope")
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "not valid JSON")
      nothing_sent()
    end)

    it("that is not an object is a usage error", function()
      local r = run({ CONTACT, "--json", "-" }, env, '"a string"')
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "JSON object expected")
      nothing_sent()
    end)

    it("with a field of the wrong type: the module's message, exit 2, nothing sent", function()
      local r = run({ CONTACT, "--json", "-" }, env, '{"agentId":"seven"}')
      assert.equal(2, r.code, r.err)
      assert.equal("", r.out)
      assert.equal("acquire-case: bad field 'agentId' (integer expected, got string)\n", r.err)
      nothing_sent()
    end)

    it("with an unknown field: exit 2, nothing sent", function()
      local r = run({ CONTACT, "--json", "-" }, env, '{"foo":1}')
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "unknown field 'foo' in opts")
      nothing_sent()
    end)

    it("from a missing file: exit 2", function()
      local r = run({ CONTACT, "--json", "/nonexistent/opts.json" }, env)
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "/nonexistent/opts.json")
      nothing_sent()
    end)
  end)

  describe("the key", function()
    it("is read from the first line of --key-file, trailing whitespace stripped", function()
      local file = tmpfile(srv.key .. " \t\r\nsecond line\n")
      local r = run({ CONTACT, "--key-file", file },
        { ACQUIRE_BASE_URL = srv.base_url })
      assert.equal("", r.err)
      assert.equal(0, r.code, r.err)
      assert.equal("Bearer " .. srv.key, srv:last_request().headers.authorization)
    end)

    it("from --key-file wins over ACQUIRE_API_KEY", function()
      local file = tmpfile(srv.key .. "\n")
      local r = run({ CONTACT, "--key-file=" .. file },
        with({ ACQUIRE_API_KEY = "not-the-key-0123" }))
      assert.equal(0, r.code, r.err)
      assert.equal("Bearer " .. srv.key, srv:last_request().headers.authorization)
    end)

    it("from an empty --key-file is refused", function()
      local r = run({ CONTACT, "--key-file", tmpfile("\n") }, { ACQUIRE_BASE_URL = srv.base_url })
      assert.equal(2, r.code, r.err)
      one_line(r.err)
      nothing_sent()
    end)

    it("from a missing --key-file is refused", function()
      local r = run({ CONTACT, "--key-file", "/nonexistent/key" }, { ACQUIRE_BASE_URL = srv.base_url })
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "--key-file")
      nothing_sent()
    end)

    it("is never taken from --key, in either form", function()
      for _, args in ipairs({ { "--key", srv.key, CONTACT }, { CONTACT, "--key=" .. srv.key },
                              { CONTACT, "--api-key", srv.key } }) do
        local r = run(args, env)
        assert.equal(2, r.code, r.err)
        assert.equal("", r.out)
        contains(one_line(r.err), "ACQUIRE_API_KEY")
        contains(r.err, "--key-file")
        excludes(r.err, srv.key)
      end
      nothing_sent()
    end)

    it("missing is a usage error", function()
      local r = run({ CONTACT, "--title", "x" }, { ACQUIRE_BASE_URL = srv.base_url })
      assert.equal(2, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "ACQUIRE_API_KEY")
      nothing_sent()
    end)
  end)

  describe("a proxy's credentials", function()
    local proxy = require "spec.proxy"

    it("are never taken from --proxy: a password there is refused, exit 2, neither echoed", function()
      local pass = "s3cret-proxy-pass"
      for _, args in ipairs({
        { "--proxy", "http://user:" .. pass .. "@127.0.0.1:3128", CONTACT },
        { CONTACT, "--proxy=http://user:" .. pass .. "@127.0.0.1:3128" },
        { "--proxy", "user:" .. pass .. "@127.0.0.1:3128", CONTACT },           -- no scheme: curl's too
        { "--proxy", "http://user:@127.0.0.1:3128", CONTACT, "--key-file", "/nonexistent" },
      }) do
        local r = run(args, env)
        assert.equal(2, r.code, r.err)
        assert.equal("", r.out)
        contains(r.err, "--proxy with a password is refused")
        contains(r.err, "--proxy-file")
        excludes(r.err, pass)
        excludes(r.err, "127.0.0.1:3128")
      end
      nothing_sent()
    end)

    it("come from --proxy-file (the URL on its first line) or the environment, and show nowhere", function()
      local px = proxy.start{ auth = proxy.USER .. ":" .. proxy.PASS }
      local ok, err = pcall(function()
        local url = ("http://%s:%s@127.0.0.1:%d"):format(proxy.USER, proxy.PASS, px.port)
        local file = helper.tmpfile(url .. "\r\n")
        temps[#temps + 1] = file
        local r = run({ "--proxy-file", file, CONTACT }, env)
        assert.equal(0, r.code, r.err)
        assert.equal(1, #px.requests())
        proxy.no_secret(r.out .. r.err, "the output")
        r = run({ CONTACT }, with{ http_proxy = url })                         -- curl's variable
        assert.equal(0, r.code, r.err)
        assert.equal(2, #px.requests())
        r = run({ "--proxy-file", file, "--no-proxy", CONTACT }, env)
        assert.equal(2, r.code)
        contains(r.err, "--proxy-file excludes --proxy and --no-proxy")
        local empty = helper.tmpfile("\n")
        temps[#temps + 1] = empty
        r = run({ "--proxy-file", empty, CONTACT }, env)
        assert.equal(2, r.code)
        contains(r.err, "the first line is empty")
        r = run({ "--proxy", ("http://127.0.0.1:%d"):format(px.port), CONTACT }, env)   -- no password: taken
        assert.equal(4, r.code)                                                -- the proxy wants one: 407
        assert.equal(3, #px.requests())
      end)
      px.stop()
      assert(ok, err)
    end)
  end)

  describe("the server", function()
    it("is found through --base-url before ACQUIRE_BASE_URL", function()
      local r = run({ "--base-url", srv.base_url, CONTACT },
        with({ ACQUIRE_BASE_URL = "http://127.0.0.1:" .. helper.free_port() }))
      assert.equal(0, r.code, r.err)
      assert.equal(1, #srv:requests())
    end)

    it("missing (no account, no base URL) is a usage error", function()
      local r = run({ CONTACT }, { ACQUIRE_API_KEY = srv.key })
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "--account")
    end)

    it("given as a bad --account is a usage error", function()
      local r = run({ "--account", "evil.com/x?", CONTACT }, { ACQUIRE_API_KEY = srv.key })
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "account_id")
    end)
  end)

  describe("usage", function()
    it("--help prints the usage on stdout and exits 0", function()
      local r = run({ "--help" }, {})
      assert.equal(0, r.code, r.err)
      assert.equal("", r.err)
      contains(r.out, "Usage: acquire-case")
      contains(r.out, "--key-file")
      contains(run({ "-h" }, {}).out, "Usage: acquire-case")
    end)

    it("every option of --help is in the synopses of README.md and doc/acquire-case.md", function()
      local help = run({ "--help" }, {}).out
      local readme = helper.read_file(helper.repo_root .. "/README.md")
      local doc = helper.read_file(helper.repo_root .. "/doc/acquire-case.md")
      local readme_synopsis = readme:match("## Command line: `acquire%-case`%s*```\n(.-)```")
      local doc_synopsis = doc:match("## SYNOPSIS%s*```\n(.-)```")
      assert.is_string(readme_synopsis, "no synopsis under README's Command line")
      assert.is_string(doc_synopsis, "no synopsis in doc/acquire-case.md")
      local n = 0
      for opt in help:gmatch("\n  (%-%-[%a-]+)") do
        n = n + 1
        if opt ~= "--help" then
          local word = "[%[%s]" .. opt:gsub("%-", "%%-") .. "[%s%]]"
          assert.is_truthy(readme_synopsis:find(word), opt .. " is not in README's synopsis")
          assert.is_truthy(doc_synopsis:find(word), opt .. " is not in doc/acquire-case.md's synopsis")
        end
      end
      assert.is_true(n >= 16, "options found in --help: " .. n)
    end)

    it("an unknown option exits 2 with a hint", function()
      local r = run({ CONTACT, "--frobnicate" }, env)
      assert.equal(2, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "--frobnicate")
      contains(r.err, "--help")
      nothing_sent()
    end)

    it("a bad contact id exits 2 with the module's message; nothing is sent", function()
      for _, id in ipairs({ "12a", "0", "-5x", "" }) do
        local r = run({ "--", id }, env)
        assert.equal(2, r.code, r.err)
        assert.equal("", r.out)
        contains(one_line(r.err), "contactId must be a positive integer")
      end
      nothing_sent()
    end)

    it("no contact id, or two, exit 2", function()
      assert.equal(2, run({ "--title", "x" }, env).code)
      assert.equal(2, run({ CONTACT, "42" }, env).code)
      nothing_sent()
    end)

    it("--agent and --route-agent take digits only", function()
      for _, args in ipairs({ { "--agent", "7x" }, { "--agent", "-1" }, { "--route-agent=1.5" },
                              { "--route-agent", "" } }) do
        table.insert(args, 1, CONTACT)
        local r = run(args, env)
        assert.equal(2, r.code, r.err)
        contains(one_line(r.err), "non-negative integer")
      end
      nothing_sent()
    end)

    it("--field needs KEY=VALUE", function()
      local r = run({ CONTACT, "--field", "plan" }, env)
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "KEY=VALUE")
      nothing_sent()
    end)

    it("an option without its value exits 2", function()
      local r = run({ CONTACT, "--title" }, env)
      assert.equal(2, r.code, r.err)
      contains(one_line(r.err), "--title")
      nothing_sent()
    end)

    it("--output takes json or summary", function()
      local r = run({ CONTACT, "--output", "yaml" }, env)
      assert.equal(2, r.code, r.err)
      one_line(r.err)
      nothing_sent()
    end)
  end)

  describe("failures", function()
    it("401 (wrong key): exit 3, one line naming the status, not the key", function()
      local wrong = "wrong-key-5f3e2a"
      local r = run({ CONTACT }, with({ ACQUIRE_API_KEY = wrong }))
      assert.equal(3, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "401")
      excludes(r.err, wrong)
      excludes(r.err, srv.key)
      assert.equal(1, #srv:requests())
    end)

    it("404 (unknown contact): exit 3", function()
      local r = run({ "1" }, env)
      assert.equal(3, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "404")
    end)

    it("500: exit 5, one line, the case may exist", function()
      srv:fault{ action = "status", status = 500, times = 1 }
      local r = run({ CONTACT, "--title", "x" }, env)
      assert.equal(5, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "500")
      contains(r.err, "may have been created")
      assert.equal(1, #srv:requests())                     -- a 500 is not retried
    end)

    it("403 (read-only key): exit 3", function()
      keys_used[srv.readonly_key] = true
      local r = run({ CONTACT }, with({ ACQUIRE_API_KEY = srv.readonly_key }))
      assert.equal(3, r.code, r.err)
      assert.equal("acquire: http 403 ERROR_UNAUTHORIZED_ACCESS: This API key may not create cases\n", r.err)
    end)

    it("400: exit 3", function()
      srv:fault{ action = "status", status = 400, times = 1,
                 body = '{"type":"ERROR_INVALID_INPUT","message":"bad input"}' }
      local r = run({ CONTACT }, env)
      assert.equal(3, r.code, r.err)
      assert.equal("acquire: http 400 ERROR_INVALID_INPUT: bad input\n", r.err)
    end)

    it("a 200 that is not JSON: exit 5", function()
      srv:fault{ action = "invalid_json", times = 1 }
      local r = run({ CONTACT }, env)
      assert.equal(5, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "acquire: decode:")
    end)

    it("an HTML 502 from a proxy: exit 5", function()
      srv:fault{ action = "html", status = 502, times = 1 }
      local r = run({ CONTACT }, env)
      assert.equal(5, r.code, r.err)
      contains(one_line(r.err), "502")
    end)

    it("a redirect (not followed): exit 5", function()
      srv:fault{ action = "redirect", times = 1 }
      local r = run({ CONTACT }, env)
      assert.equal(5, r.code, r.err)
      contains(one_line(r.err), "302")
    end)

    it("a reset after the request was sent: exit 4, the case may exist", function()
      srv:fault{ action = "reset", times = 1 }
      local r = run({ CONTACT }, env)
      assert.equal(4, r.code, r.err)
      contains(one_line(r.err), "acquire: network:")
      contains(r.err, "may have been created")
      assert.equal(1, #srv:requests())
    end)

    it("a refused connection: exit 4", function()
      local r = run({ CONTACT }, with({ ACQUIRE_BASE_URL = "http://127.0.0.1:" .. helper.free_port() }))
      assert.equal(4, r.code, r.err)
      assert.equal("", r.out)
      contains(one_line(r.err), "acquire: network:")
    end)
  end)

  describe("--batch", function()
    -- The result lines, in input order (the command writes each as its item finishes).
    local function results(out)
      local list = {}
      for line in out:gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
      table.sort(list, function(a, b) return (a.line or a.row) < (b.line or b.row) end)
      return list
    end

    it("creates one case a line, one JSON result a line naming its line", function()
      local input = "597752\n\n{\"contactId\": 597752, \"title\": \"from json\"}\n1\n597752\n"
      local r = run({ "--batch", "--concurrency", "2", "--title", "flag" }, env, input)
      assert.equal(3, r.code)                    -- one item rejected by the API (404)
      local list = results(r.out)
      assert.equal(4, #list)
      assert.same({ 1, 3, 4, 5 }, { list[1].line, list[2].line, list[3].line, list[4].line })
      assert.same({ true, true, false, true }, { list[1].ok, list[2].ok, list[3].ok, list[4].ok })
      assert.equal(2071, list[1].id)
      assert.equal(404, list[3].http_status)
      assert.equal("acquire: http 404: Contact not found", list[3].error)
      assert.is_false(list[3].maybe_created)
      local bodies = {}
      for _, q in ipairs(srv:requests()) do bodies[#bodies + 1] = q.body end
      table.sort(bodies)
      assert.same({ '{"title":"flag"}', '{"title":"flag"}', '{"title":"flag"}', '{"title":"from json"}' }, bodies)
      assert.equal("", r.err)                    -- no progress bar: stderr is not a terminal
    end)

    it("a Ctrl-C landing inside one of its own checks (a line's decode, a request's build) stops the "
       .. "batch as any Ctrl-C does, never taken for that check's failure", function()
      -- the interpreter's SIGINT hook, at a chosen call: the first call of the check's function
      -- made by a pcall (where a Ctrl-C could be taken for the check's own error)
      local hook = [[
        local which, armed = os.getenv("SPEC_INTERRUPT_AT"), true
        debug.sethook(function()
          if not armed then return end
          local f, by = debug.getinfo(2, "f").func, debug.getinfo(3, "f")
          if not by or by.func ~= pcall then return end
          local a = package.loaded.acquire
          local hit = which == "build" and a and f == a.build_request
          if which == "decode" and f ~= require then
            for l = 4, 6 do
              local i = debug.getinfo(l, "S")
              if i and i.source:find("cli/decode.lua", 1, true) then hit = true end
            end
          end
          if hit then armed = false; io.stderr:write("[hook fired]\n"); error("interrupted!") end
        end, "c")]]
      local input = {}
      for i = 1, 20 do input[i] = ('{"contactId": 597752, "title": "item %d"}'):format(i) end
      for _, at in ipairs{ "decode", "build" } do
        local e = with{ SPEC_INTERRUPT_AT = at, LUA_CPATH = "./?.so;;", LUA_PATH = "./lua/?.lua;;" }
        local r = helper.run({ helper.interpreter(), "-e", hook, "bin/acquire-case", "--batch" },
          { env = e, stdin = table.concat(input, "\n") .. "\n" })
        contains(r.err, "[hook fired]")                    -- (the Ctrl-C landed where it was aimed)
        assert.equal(130, r.code, at .. ": " .. r.err)
        contains(r.err, "interrupted")
        excludes(r.err, "not a JSON object")
        excludes(r.err, "internal error")
      end
    end)

    it("skips a UTF-8 byte order mark at the start of line input, as --csv does", function()
      local r = run({ "--batch" }, env, "\239\187\191597752\n{\"contactId\": 597752}\n")
      assert.equal(0, r.code, r.err)
      assert.same({ 1, 2 }, { results(r.out)[1].line, results(r.out)[2].line })
      assert.equal(2, #srv:requests())
    end)

    it("exits 0 when every case was created, and honours --concurrency", function()
      -- each answer takes 0.5 s: ample time for the second transfer to reach
      -- the server while the first waits, even on a loaded machine
      srv:fault{ action = "delay", seconds = 0.5 }
      local r = run({ "--batch", "--concurrency", "2" }, env, "597752\n597752\n597752\n597752\n")
      assert.equal(0, r.code)
      assert.equal(4, #results(r.out))
      assert.equal(2, srv:stats().max_in_flight)
    end)

    it("refuses a bad line before anything is sent, naming it", function()
      local r = run({ "--batch" }, env, "597752\nabc\n")
      assert.equal(2, r.code)
      contains(r.err, "line 2: contactId must be a positive integer")
      nothing_sent()
      r = run({ "--batch" }, env, "597752\n{not json\n")
      assert.equal(2, r.code)
      contains(r.err, "line 2: not a JSON object")
      r = run({ "--batch" }, env, '{"contactId": 597752, "agentId": "x"}\n')
      assert.equal(2, r.code)
      contains(r.err, "line 1: bad field 'agentId'")
      nothing_sent()
    end)

    it("takes no CONTACT_ID, and --concurrency only with --batch", function()
      assert.equal(2, run({ "--batch", CONTACT }, env, "").code)
      assert.equal(2, run({ CONTACT, "--concurrency", "2" }, env).code)
      nothing_sent()
    end)

    it("writes contactId as a string: the digits the request carried, whatever the line held", function()
      -- a number, a string, leading zeros, an exponent: one contact, 597752, sent and named alike
      local input = table.concat({ "597752", "000597752", '{"contactId": 597752}', '{"contactId": "597752"}',
                                   '{"contactId": "00597752"}', '{"contactId": 5.97752e5}',
                                   '{"contactId": 597752.0}', "1" }, "\n") .. "\n"
      local r = run({ "--batch" }, env, input)
      assert.equal(3, r.code, r.err)                              -- contact 1: 404
      local n = 0
      for line in r.out:gmatch("[^\n]+") do
        n = n + 1
        -- in the text itself: a JSON string of digits, never a number
        assert.is_truthy(line:match('^{"line":%d+,"contactId":"%d+",'), line)
        local res = cjson.decode(line)                            -- lines come as items finish
        assert.equal(res.line < 8 and "597752" or "1", res.contactId, line)
      end
      assert.equal(8, n)
      for _, q in ipairs(srv:requests()) do
        assert.is_truthy(q.raw_query == "contactId=597752" or q.raw_query == "contactId=1", q.raw_query)
      end
    end)

    it("names the case's status case_status and the HTTP status http_status, never one key for both", function()
      local r = run({ "--batch" }, env, "597752\n1\n")
      local list = results(r.out)
      assert.same({ line = 1, contactId = "597752", ok = true, id = 2071, case_status = "active" }, list[1])
      assert.same({ line = 2, contactId = "1", ok = false, kind = "http", http_status = 404,
                    error = "acquire: http 404: Contact not found", maybe_created = false }, list[2])
      srv:fault{ action = "status", status = 500, times = 1 }
      r = run({ "--batch" }, env, "597752\n")
      assert.equal(5, r.code)
      list = results(r.out)
      assert.equal(500, list[1].http_status)
      assert.is_true(list[1].maybe_created)
      assert.is_nil(list[1].status)
      assert.is_nil(list[1].case_status)
      -- no answer at all: no http_status
      r = run({ "--batch" }, with { ACQUIRE_BASE_URL = "http://127.0.0.1:" .. helper.free_port() }, "597752\n")
      assert.equal(4, r.code)
      list = results(r.out)
      assert.same({ false, "network" }, { list[1].ok, list[1].kind })
      assert.is_nil(list[1].http_status)
      assert.is_nil(list[1].status)
    end)

    it("refuses --output summary (exit 2, nothing sent); --output json is its default", function()
      local r = run({ "--batch", "--output", "summary" }, env, "597752\n")
      assert.equal(2, r.code)
      assert.equal("", r.out)
      assert.equal("acquire-case: --output summary does not go with --batch (it writes one JSON result a line)"
        .. " (see 'acquire-case --help')\n", r.err)
      assert.equal(2, run({ "--batch", "--output=text" }, env, "597752\n").code)
      nothing_sent()
      r = run({ "--batch", "--output", "json" }, env, "597752\n")
      assert.equal(0, r.code, r.err)
      assert.equal('{"line":1,"contactId":"597752","ok":true,"id":2071,"case_status":"active"}\n', r.out)
    end)
  end)

  describe("numbers a double cannot carry", function()
    -- lua-cjson decodes every JSON number as a double, exact only up to 2^53:
    -- 9007199254740993 would become ...992, another contact. Each id either
    -- reaches the server in exactly its digits, or is refused (exit 2, the
    -- field named, nothing sent): never rounded.
    local INT64 = math.type ~= nil and math.maxinteger == 9223372036854775807
    local IDS = {   -- name, digits, carried as a 64-bit integer
      { "2^53+1", "9007199254740993", true },
      { "2^63-1", "9223372036854775807", true },
      { "2^64", "18446744073709551616", false },
      { "-(2^53+1)", "-9007199254740993", false },
    }

    -- The result lines, in input order (the command writes each as its item finishes).
    local function results(out)
      local list = {}
      for line in out:gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
      table.sort(list, function(a, b) return (a.line or a.row) < (b.line or b.row) end)
      return list
    end

    -- The requests whose raw query or body contain text.
    local function sent_with(reqs, text)
      local found = {}
      for _, q in ipairs(reqs) do
        if ("?" .. q.raw_query .. "&"):find(text, 1, true) or q.body:find(text, 1, true) then
          found[#found + 1] = q
        end
      end
      return found
    end

    -- r exited 2 naming each of what (and the digits) with nothing sent, or
    -- the digits reached the server as text (once). Returns "refused" or "sent".
    local function exact_or_refused(r, what, digits, text, label)
      if r.code == 2 then
        one_line(r.err)
        for _, w in ipairs(what) do contains(r.err, w) end
        contains(r.err, digits)
        assert.equal("", r.out)
        nothing_sent()
        return "refused"
      end
      local reqs = srv:requests()
      assert.is_true(#reqs >= 1, label .. ": nothing sent, exit " .. r.code .. ": " .. r.err)
      assert.equal(1, #sent_with(reqs, text), label .. ": " .. text .. " not sent exactly once")
      return "sent"
    end

    it("a --batch contactId arrives in its exact digits on every Lua, or is refused", function()
      for _, id in ipairs(IDS) do
        srv:reset()
        local r = run({ "--batch" }, env, '597752\n{"contactId": ' .. id[2] .. '}\n')
        local got = exact_or_refused(r, { "line 2: contactId" }, id[2], "?contactId=" .. id[2] .. "&", id[1])
        -- the module takes a contact id as digits, up to 2^63-1, on every Lua
        assert.equal(id[3] and "sent" or "refused", got, id[1])
        if got == "sent" then
          assert.equal(3, r.code, r.err)                    -- that contact does not exist: 404
          local list = results(r.out)
          assert.equal(id[2], list[2].contactId)            -- the result names it exactly too
          assert.is_false(list[2].ok)
          assert.equal(2, #srv:requests())
        end
      end
    end)

    it("a --batch threadId arrives exactly where Lua has 64-bit integers, else is refused", function()
      for _, id in ipairs(IDS) do
        srv:reset()
        local r = run({ "--batch" }, env,
          '597752\n{"contactId": 597752, "threadId": ' .. id[2] .. ', "sessionId": 1}\n')
        local got = exact_or_refused(r, { "line 2: ", "threadId" }, id[2], '"threadId":' .. id[2] .. ",", id[1])
        if id[2]:sub(1, 1) == "-" and got == "refused" then
          -- refused by the CLI (no integer for it) or by the module (negative)
          assert.is_truthy(r.err:find("cannot be carried exactly", 1, true)
            or r.err:find("non-negative integer expected", 1, true), r.err)
        end
        assert.equal(INT64 and id[3] and "sent" or "refused", got, id[1])
      end
    end)

    it("--json threadId and sessionId: exact where Lua has 64-bit integers, else refused", function()
      for _, field in ipairs({ "threadId", "sessionId" }) do
        for _, id in ipairs(IDS) do
          srv:reset()
          local other = field == "threadId" and "sessionId" or "threadId"
          local r = run({ CONTACT, "--json", "-" }, env,
            ('{"%s": %s, "%s": 1}'):format(field, id[2], other))
          local got = exact_or_refused(r, { field }, id[2], '"' .. field .. '":' .. id[2], field .. " " .. id[1])
          if got == "refused" and id[3] then
            assert.equal("acquire-case: --json -: " .. field .. " " .. id[2]
              .. " cannot be carried exactly (integers beyond 2^53: this Lua has no 64-bit integers)\n",
              r.err)
          end
          assert.equal(INT64 and id[3] and "sent" or "refused", got, field .. " " .. id[1])
          if got == "sent" then assert.equal(0, r.code, r.err) end
        end
      end
    end)

    it("mentionUsers: numbers are sent as their digits (a string) on every Lua", function()
      for _, id in ipairs(IDS) do
        srv:reset()
        local r = run({ CONTACT, "--json", "-" }, env, '{"mentionUsers": [7, ' .. id[2] .. ']}')
        assert.equal(0, r.code, r.err)
        assert.equal('{"mentionUsers":["7","' .. id[2] .. '"]}', srv:last_request().body)
      end
    end)

    it("--agent and --route-agent digits: exact, or refused where Lua has no 64-bit integers", function()
      for _, flag in ipairs({ "--agent", "--route-agent" }) do
        local key = flag == "--agent" and "agentId" or "routeAgentId"
        for _, digits in ipairs({ "9007199254740993", "9223372036854775807", "18446744073709551616" }) do
          srv:reset()
          local r = run({ CONTACT, flag, digits }, env)
          local got = exact_or_refused(r, { flag }, digits, '"' .. key .. '":' .. digits .. "}", flag)
          assert.equal(INT64 and digits ~= "18446744073709551616" and "sent" or "refused", got, flag .. " " .. digits)
        end
        srv:reset()
        assert.equal(0, run({ CONTACT, flag, "0009007199254740992" }, env).code)
        assert.equal('{"' .. key .. '":9007199254740992}', srv:last_request().body)
      end
    end)

    it("a fraction or exponent where an integer is wanted: the module refuses it, unless it is one", function()
      local function refused(line, what)
        local r = run({ "--batch" }, env, '{"contactId": 597752, ' .. line .. '}\n')
        assert.equal(2, r.code, line .. ": " .. r.err)
        contains(one_line(r.err), "line 1: " .. what)
        nothing_sent()
        return r.err
      end
      refused('"agentId": 1.5', "bad field 'agentId' (integer expected")
      refused('"threadId": 2e-1', "bad field 'threadId' (integer expected")
      -- not integers, but their doubles are: the CLI refuses them
      contains(refused('"agentId": 9007199254740992.5', "agentId 9007199254740992.5 cannot be carried exactly"),
        "a double rounds it to one")
      refused('"routeAgentId": 1.0000000000000001', "routeAgentId 1.0000000000000001 cannot be carried exactly")
      refused('"threadId": 1e400', "threadId 1e400 cannot be carried exactly")
      refused('"mentionUsers": [1, 0.5e-400]', "mentionUsers[2] 0.5e-400 cannot be carried exactly")
      -- integers written with a fraction or an exponent are integers
      local r = run({ "--batch" }, env, '{"contactId": 597752, "agentId": 1e3, "routeAgentId": 25.0}\n')
      assert.equal(0, r.code, r.err)
      assert.equal('{"routeAgentId":25,"agentId":1000}', srv:last_request().body)
      srv:reset()
      r = run({ CONTACT, "--json", "-" }, env, '{"threadId": 9.007199254740993e15, "sessionId": 90071992547409930e-1}')
      if INT64 then
        assert.equal(0, r.code, r.err)
        assert.equal('{"threadId":9007199254740993,"sessionId":9007199254740993}', srv:last_request().body)
      else
        assert.equal(2, r.code, r.err)
        contains(one_line(r.err), "--json -: threadId 9.007199254740993e15 cannot be carried exactly")
        nothing_sent()
      end
    end)

    it("custom fields and unknown nesting are held to the same rule", function()
      local r = run({ CONTACT, "--json", "-" }, env,
        '{"fields": {"small": 9007199254740992, "big": 9007199254740993, "f": 0.1, "s": "9007199254740993"}}')
      if INT64 then
        assert.equal(0, r.code, r.err)
        assert.equal('{"fields":{"big":9007199254740993,"f":0.1,"s":"9007199254740993","small":9007199254740992}}',
          srv:last_request().body)
      else
        assert.equal(2, r.code, r.err)
        contains(one_line(r.err), "fields.big 9007199254740993 cannot be carried exactly")
        nothing_sent()
      end
    end)

    it("digits inside strings and keys are left alone", function()
      local r = run({ "--batch" }, env,
        '{"contactId": "9007199254740993", "title": "9007199254740993 \\" 1e400", "fields": {"18446744073709551616": "x"}}\n')
      assert.equal(3, r.code, r.err)
      local q = srv:last_request()
      assert.equal("contactId=9007199254740993", q.raw_query)
      assert.equal('{"title":"9007199254740993 \\" 1e400","fields":{"18446744073709551616":"x"}}', q.body)
    end)

    it("ids in the answer print exactly: --output json, summary and --batch results", function()
      local body = '{"data":{"id":123456789012345,"status":"active","contact":{"id":987654321098765}}}'
      local function answer()
        srv:fault{ action = "status", status = 200, body = body, content_type = "application/json", times = 1 }
      end
      answer()
      local r = run({ CONTACT }, env)
      assert.equal(0, r.code, r.err)
      contains(r.out, '"id":123456789012345')
      contains(r.out, '"id":987654321098765')
      answer()
      r = run({ CONTACT, "--output", "summary" }, env)
      contains(r.out, "case: 123456789012345\n")
      contains(r.out, "contact: 987654321098765\n")
      answer()
      r = run({ "--batch" }, env, '{"contactId": 597752}\n')
      assert.equal(0, r.code, r.err)
      assert.equal('{"line":1,"contactId":"597752","ok":true,"id":123456789012345,"case_status":"active"}\n', r.out)
    end)

    it("random ids of every size: the same digits arrive, or exit 2 and nothing is sent", function()
      local seed = tonumber(os.getenv("ACQUIRE_CLI_SEED") or "") or os.time()
      math.randomseed(seed)
      local why = " (seed " .. seed .. ": ACQUIRE_CLI_SEED=" .. seed .. " repeats this run)"
      local TWO64 = "18446744073709551616"
      local function below_or_at(a, b)             -- digits, no leading zeros
        return #a < #b or (#a == #b and a <= b)
      end
      local function random_digits()
        local n = math.random(1, 20)
        while true do
          local t = { tostring(math.random(1, 9)) }
          for i = 2, n do t[i] = tostring(math.random(0, 9)) end
          local s = table.concat(t)
          if below_or_at(s, TWO64) then return s end
        end
      end
      local FIELDS = { "contactId", "threadId", "sessionId", "agentId", "routeAgentId", "mentionUsers" }
      local entries, seen = {}, {}
      local edges = { "9007199254740991", "9007199254740992", "9007199254740993", "9007199254740994",
                      "9223372036854775807", "9223372036854775808", "18446744073709551615", TWO64 }
      for i = 1, 40 do
        local digits = edges[i] or random_digits()
        if not seen[digits] then
          seen[digits] = true
          local field = FIELDS[math.random(1, #FIELDS)]
          local e = { digits = digits, field = field }
          if field == "contactId" then
            e.line = '{"contactId": ' .. digits .. '}'
            e.text, e.contact = "?contactId=" .. digits .. "&", digits
          elseif field == "mentionUsers" then
            e.line = '{"contactId": 597752, "mentionUsers": [' .. digits .. ']}'
            e.text, e.contact = '"mentionUsers":["' .. digits .. '"]', "597752"
          else
            e.line = '{"contactId": 597752, "' .. field .. '": ' .. digits .. '}'
            e.text, e.contact = '"' .. field .. '":' .. digits .. "}", "597752"
          end
          entries[#entries + 1] = e
        end
      end
      local refused = 0
      while true do
        srv:reset()
        local input = {}
        for i, e in ipairs(entries) do input[i] = e.line end
        local r = run({ "--batch", "--concurrency", "4" }, env, table.concat(input, "\n") .. "\n")
        if r.code == 2 then
          -- one line refused: named, with its field and digits; nothing sent
          local k = tonumber(r.err:match("line (%d+):") or "")
          assert.is_number(k, "exit 2 without a line: " .. r.err .. why)
          local e = entries[k]
          contains(one_line(r.err), e.field)
          contains(r.err, e.digits)
          assert.same({}, srv:requests(), "something was sent" .. why)
          assert.is_false(below_or_at(e.digits, "9007199254740992"),
            e.field .. " " .. e.digits .. " is exact in a double, yet refused" .. why)
          table.remove(entries, k)
          refused = refused + 1
        else
          assert.is_true(r.code == 0 or r.code == 3, "exit " .. r.code .. ": " .. r.err .. why)
          local reqs = srv:requests()
          assert.equal(#entries, #reqs, why)
          local list = results(r.out)
          assert.equal(#entries, #list, why)
          for i, e in ipairs(entries) do
            assert.equal(1, #sent_with(reqs, e.text), e.field .. " " .. e.digits .. " did not arrive exactly" .. why)
            assert.equal(e.contact, list[i].contactId, why)
          end
          break
        end
      end
      assert.is_true(#entries > 0, why)
    end)
  end)

  it("never prints a key it was given, on stdout or stderr", function()
    for _, r in ipairs(outputs) do
      for key in pairs(keys_used) do
        excludes(r.out, key)
        excludes(r.err, key)
      end
    end
  end)
end)
