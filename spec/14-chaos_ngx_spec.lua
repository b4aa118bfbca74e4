-- Chaos through acquire.ngx: the same invariant as 11-chaos_spec.lua (spec/chaos.lua checks it),
-- with the bytes moved by cosockets inside a real nginx. The handler takes { markers = {...},
-- config = {...}, contacts = {...}?, messages = {...}?, shared = name? }, runs one create_case per marker in
-- light threads at once (so pooled connections are shared and reused across behaviours), and
-- answers each result as JSON. Then the same with config.reconcile = 0 (n/2 calls).
-- Then CHAOS_NGX_PROXY_CALLS (default 100) through the hostile proxy (spec/server/chaos_proxy.py),
-- half over http (absolute-form), half over https (a CONNECT tunnel; the target may answer 407).
--   CHAOS_SEED=n, CHAOS_NGX_CALLS=n (default 300), CHAOS_READ_CHAOS=p (default 0.1)
local chaos = require "spec.chaos"
local nginx = require "spec.nginx"
local cjson = require "cjson"

local SEED = chaos.SEED
local CALLS = tonumber(os.getenv("CHAOS_NGX_CALLS")) or 300
local PROXY_CALLS = tonumber(os.getenv("CHAOS_NGX_PROXY_CALLS")) or 100
local READ_CHAOS = chaos.READ_CHAOS
local CONTACT = 597752
local PER_CONTACT = chaos.PER_CONTACT

local HANDLER = [[
  local cjson = require "cjson"
  ngx.req.read_body()
  local q = cjson.decode(ngx.req.get_body_data())
  -- q.shared: one client for every request that names it (kept in the worker), so its claims
  -- span requests; else a client of this request's own
  local store = package.loaded["spec.chaos_clients"] or {}
  package.loaded["spec.chaos_clients"] = store
  local client = q.shared and store[q.shared] or require("acquire.ngx").new(q.config)
  if q.shared then store[q.shared] = client end
  local threads, out = {}, {}
  local function opt(list, i)
    local v = list and list[i]
    if v == cjson.null then return nil end
    return v
  end
  for i, m in ipairs(q.markers) do
    threads[i] = ngx.thread.spawn(function()
      local contact = opt(q.contacts, i) or 597752
      local opts = { title = m, message = opt(q.messages, i) }
      ngx.update_time()
      local t0 = ngx.now()
      local ok, res, err = pcall(client.create_case, client, contact, opts)
      ngx.update_time()
      local r = { marker = m, elapsed = ngx.now() - t0 }
      if not ok then
        r.raised = tostring(res)
      elseif res then
        local d = type(res.data) == "table" and res.data or {}
        r.res = { data = { id = d.id, title = d.title, description = d.description,
                           contactId = d.contactId }, reconciled = res.reconciled }
      else
        local copy = {}
        for k, v in pairs(err) do copy[k] = v end
        r.err, r.text = copy, tostring(err)
      end
      return r
    end)
  end
  for i, th in ipairs(threads) do
    local ok, r = ngx.thread.wait(th)
    out[i] = ok and r or { marker = q.markers[i], raised = tostring(r) }
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(out))
]]

-- err as the handler saw it: its fields, and tostring as it printed
local function err_of(r)
  if type(r.err) ~= "table" then return nil end
  for k, v in pairs(r.err) do if v == cjson.null then r.err[k] = nil end end
  return setmetatable(r.err, { __tostring = function() return r.text end })
end

-- Runs calls markers in requests of 1-12 calls at once; { path, marker, elapsed, bound, res, err }.
local function run(n, cfg, prefix, count, bound, extra)
  local calls, done = {}, 0
  while done < count do
    local k = math.min(count - done, math.random(1, 12))
    local q = { markers = {}, config = cfg }
    for i = 1, k do
      q.markers[i] = ("%s-%d-%d"):format(prefix, SEED, done + i)
      if extra then extra(q, i, done + i) end
    end
    done = done + k
    local code, text = n:post("/cases", cjson.encode(q), 30)
    assert(code == 200, ("nginx answered %s: %s (seed %d)"):format(tostring(code), tostring(text), SEED))
    for _, r in ipairs(cjson.decode(text)) do
      if type(r.res) == "table" and r.res.reconciled == cjson.null then r.res.reconciled = nil end
      calls[#calls + 1] = { path = "acquire.ngx", marker = r.marker, elapsed = r.elapsed,
                            bound = bound, res = r.res, err = err_of(r),
                            raised = r.raised ~= cjson.null and r.raised or nil }
    end
  end
  return calls
end

describe("chaos through acquire.ngx #ngx #chaos", function()
  local srv, n, cfg

  setup(function()
    math.randomseed(SEED)
    srv = chaos.start(SEED)
    cfg = chaos.client_config(srv)
    cfg.debug = nil
    n = nginx.start(function(ngx_)
      return nginx.config(ngx_, { http = ([[
  server {
    listen 127.0.0.1:%d;
    location = /cases { content_by_lua_block { %s } }
  }]]):format(ngx_.port, HANDLER) })
    end)
  end)
  teardown(function()
    if n then nginx.stop(n) end
    if srv then srv:stop() end
  end)

  it("never created twice, maybe_created whenever it may be (seed " .. SEED .. ")", function()
    chaos.reset(srv)
    -- acquire.ngx's timeout bounds the whole call, retries included
    local calls = run(n, cfg, "chaos-ngx", CALLS, cfg.timeout + chaos.SLACK)
    local ok, why = chaos.check(calls, chaos.log(srv), SEED)
    assert(ok, why)
  end)

  describe("with config.reconcile = 0", function()
    local rcfg
    setup(function()
      rcfg = {}
      for k, v in pairs(cfg) do rcfg[k] = v end
      rcfg.reconcile = 0
    end)
    local function bound() return chaos.reconcile_bound(rcfg) end
    local function check(calls, pinned) return chaos.check_reconciled(srv, calls, SEED, pinned) end

    it("a processed request succeeds or says maybe_created; a reconciled success is the case "
       .. "the server created (seed " .. SEED .. ")", function()
      chaos.reset(srv)
      chaos.config(srv, { read_chaos = READ_CHAOS })
      local calls = run(n, rcfg, "chaos-ngx-rec", math.floor(CALLS / 2), bound(), function(q, i, k)
        q.contacts = q.contacts or {}
        q.messages = q.messages or {}
        q.contacts[i] = CONTACT + 1 + math.floor(k / PER_CONTACT)
        local r = math.random(3)
        q.messages[i] = r == 2 and ("ngx message %d \226\156\147 \"q\""):format(k)
          or r == 3 and { message = ("ngx table message %d"):format(k) } or cjson.null
      end)
      check(calls)
    end)

    -- Identical content: calls sharing contact, title and message, on one client shared across
    -- requests. By default a group's members go at once in light threads: a lookup then waits for
    -- the other calls of that content still on their way (their cases are not claimed before their
    -- answers come), or says "ambiguous" (acquire.ngx's in-flight count). CHAOS_NGX_SAME_AT_ONCE=0
    -- sends them in successive requests to nginx instead.
    local AT_ONCE = os.getenv("CHAOS_NGX_SAME_AT_ONCE") ~= "0"
    it("identical content" .. (AT_ONCE and ", members at once" or ", members one after another")
       .. ": no case reported twice, each the server's for that content (seed " .. SEED .. ")", function()
      chaos.reset(srv)
      chaos.config(srv, { read_chaos = READ_CHAOS })
      local calls, g, total = {}, 0, math.floor(CALLS / 4)
      local function post(q)
        local code, text = n:post("/cases", cjson.encode(q), 30)
        assert(code == 200, ("nginx answered %s: %s (seed %d)"):format(tostring(code), tostring(text), SEED))
        for i, r in ipairs(cjson.decode(text)) do
          if type(r.res) == "table" and r.res.reconciled == cjson.null then r.res.reconciled = nil end
          calls[#calls + 1] = { path = "acquire.ngx same", marker = r.marker, contact = q.contacts[i],
                                elapsed = r.elapsed, bound = bound(), res = r.res, err = err_of(r),
                                raised = r.raised ~= cjson.null and r.raised or nil }
        end
      end
      while #calls < total do
        local posts = {}
        for _ = 1, math.random(1, 4) do
          g = g + 1
          local title, contact = ("chaos-ngx-same-%d-%d"):format(SEED, g), CONTACT + 20 + g % 5
          local msg = math.random(2) == 1 and ("same %d"):format(g) or cjson.null
          for j = 1, math.random(1, 4) do
            local k = AT_ONCE and 1 or j
            posts[k] = posts[k] or { markers = {}, contacts = {}, messages = {}, config = rcfg,
                                     shared = "same-" .. SEED }
            local q = posts[k]
            local i = #q.markers + 1
            q.markers[i], q.contacts[i], q.messages[i] = title, contact, msg
          end
        end
        for _, q in ipairs(posts) do post(q) end
      end
      local ok, why = chaos.check_shared(calls, chaos.log(srv), SEED)
      assert(ok, why)
    end)

    if AT_ONCE then
      it("identical content at once, pinned: one member's request never processed, the other's case "
         .. "created and its answer slow: the first is not handed the second's case", function()
        chaos.reset(srv)
        -- whichever arrives first is answered slowly (trickle, ~0.25 s), the other reset unread
        chaos.force(srv, { { answer = "ok", delivery = "trickle" }, { delivery = "headers_only_rst" } })
        local title = "chaos-ngx-same-pinned-" .. SEED
        local q = { markers = { title, title }, contacts = { CONTACT, CONTACT }, config = rcfg }
        local code, text = n:post("/cases", cjson.encode(q), 30)
        assert(code == 200, text)
        local calls = {}
        for i, r in ipairs(cjson.decode(text)) do
          if type(r.res) == "table" and r.res.reconciled == cjson.null then r.res.reconciled = nil end
          calls[i] = { path = "acquire.ngx same pinned", marker = r.marker, contact = CONTACT, elapsed = r.elapsed,
                       bound = bound(), res = r.res, err = err_of(r) }
        end
        local ok, why = chaos.check_shared(calls, chaos.log(srv), SEED)
        assert(ok, why)
      end)
    end

    chaos.pinned_lookups(it, function() return srv end, SEED, function(name)
      return run(n, rcfg, "chaos-ngx-" .. name, 1, bound())
    end)
  end)

  it("never crashed a handler (nginx's error log)", function()
    local log = n:log()
    assert.is_nil(log:find("%[error%]") and log:find("lua entry thread aborted"), log)
    assert.is_nil(log:find("%[alert%]"), log)
  end)
end)

for _, mode in ipairs{ { name = "plain", tls = false }, { name = "tunnel", tls = true } } do
  describe("chaos through acquire.ngx and a hostile proxy, " .. mode.name .. " #ngx #chaos #proxy", function()
    local srv, p, n, cfg

    setup(function()
      math.randomseed(SEED + 3)
      srv = chaos.start(SEED + 3, { tls = mode.tls })
      p = chaos.start_proxy(SEED + 3)
      cfg = chaos.client_config(srv, p.url)
      cfg.debug, cfg.ca_file = nil, nil
      n = nginx.start(function(ngx_)
        return nginx.config(ngx_, { http = ([[
  lua_ssl_trusted_certificate %s;
  lua_ssl_verify_depth 2;
  server {
    listen 127.0.0.1:%d;
    location = /cases { content_by_lua_block { %s } }
  }]]):format(srv.ca_file or "/etc/ssl/certs/ca-certificates.crt", ngx_.port, HANDLER) })
      end)
    end)
    teardown(function()
      if n then nginx.stop(n) end
      if p then p:stop() end
      if srv then srv:stop() end
    end)

    it("never sent again once received, kind \"proxy\" only when the target received nothing, "
       .. "a 407 from the target is kind \"http\" (seed " .. SEED .. ")", function()
      chaos.reset(srv)
      chaos.proxy_reset(p)
      if mode.tls then chaos.config(srv, { answers = { s407 = 3 } }) end
      local calls = run(n, cfg, "chaos-ngx-proxy-" .. mode.name, math.floor(PROXY_CALLS / 2), cfg.timeout + chaos.SLACK)
      local plog = chaos.proxy_log(p)
      local log = chaos.log(srv)
      if os.getenv("CHAOS_VERBOSE") then
        io.stderr:write("\n", chaos.tally(log), "\n", chaos.proxy_tally(plog), "\n")
      end
      local ok, why = chaos.check(calls, log, SEED, nil, { proxy = true, plog = plog })
      assert(ok, why)
    end)

    it("never crashed a handler (nginx's error log)", function()
      local log = n:log()
      assert.is_nil(log:find("%[error%]") and log:find("lua entry thread aborted"), log)
      assert.is_nil(log:find("%[alert%]"), log)
    end)
  end)
end
