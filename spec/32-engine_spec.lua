-- The call engine (acquire.engine, src/call.c) driven with invented observations and a fake
-- clock: no server, no I/O. A seeded GENERATOR (SPEC_SEED, or the time; the seed is in every
-- failure message, with the options and the steps of the failing call) draws engines (max_retries
-- 0..5, reconcile off/0/true, timeout, debug, no proxy / a plain proxy / a tunnel) and, for
-- ENGINE_CALLS calls (default 3000), what the driver saw at each step, and checks the reliability
-- promise against a model of the policy written here from src/policy.c, src/response.c and
-- doc/reliability.md:
--
--   An observation of a POST "reached" Acquire when it is an answer of Acquire's (a status and a
--   whole body, not the plain proxy's 407), or a failure off the proxy's leg with sent = true.
--   It "may have created" the case when it reached Acquire and is not an answer that says
--   nothing was created: 3xx, 4xx (a 407 included, through a tunnel), 429 and 503 say so; a 2xx
--   that does not decode to a table, a 5xx but 503, a cut or lost answer do not. A proxy-leg
--   failure (stage proxy_*, or a 407 through a plain proxy) reached nothing.
--   Retried (policy.c): a failure that may not have created the case and is kind network or
--   timeout (backoff: full jitter below min(0.5 * 2^(n-1), 8) s), a proxy-leg failure but a 4xx
--   from the proxy (backoff), a 429/503 with a readable Retry-After up to 30 s (that long); never
--   past the call's deadline (first step + timeout) and at most max_retries times. A lookup's
--   GET is a read: its failures never "may have created", so a GET sent=true is retried.
--
-- Invariants: a POST is sent again only after an observation from which the case cannot exist;
-- at most max_retries + 1 POSTs, err.attempts their number; err.maybe_created exactly when the
-- last POST may have created the case; kind/status/proxy_status by whose answer it was; retried
-- exactly when the policy says (backoff near the deadline either way); reconcile's GETs only
-- after a maybe_created failure, never a POST after one, exactly one free matching case ->
-- res.reconciled, claimed ids settle nothing twice; no SEND at or after its deadline, no retry
-- wait ending past it; the key and the proxy's password in no err string and no log line;
-- call:next after "done" raises; misuse raises at create_case. Then three fixed sequences
-- driven over real sockets (luasocket) against the local Acquire server, beside the C client.
local acquire = require "acquire"
local cjson = require "cjson"
local helper = require "spec.helper"
local socket = require "socket"

local SEED = tonumber(os.getenv("SPEC_SEED")) or os.time()
local CALLS = tonumber(os.getenv("ENGINE_CALLS")) or 3000
local KEY = "k3ySPEC31x" .. string.format("%d", SEED) .. "q"
local PXPASS = "pxPASS31z" .. string.format("%d", SEED) .. "w"
local W0 = 1700000000                     -- the fake wall clock: W0 + the fake monotonic clock
local CREATE = helper.API_PATH .. "?contactId="
local LIST = "/api/v1/crm/objects/case?where=contactId%%7Ceq%%7C%d&limit=100&page=%d"
local RA_CAP, SKEW, NULL = 30, 300, cjson.null
local fmt, concat, floor = string.format, table.concat, math.floor
local unpack_ = table.unpack or unpack

-- Park-Miller in doubles: the same draws on every Lua
local STATS = {}                          -- what the generator reached: each must be reached
local function seen(what) STATS[what] = (STATS[what] or 0) + 1 end

local function rng(seed)
  local x = seed % 2147483646 + 1
  local r = {}
  function r.float() x = x * 16807 % 2147483647; return (x - 1) / 2147483646 end
  function r.int(a, b) return a + floor(r.float() * (b - a + 1)) end
  function r.pick(t) return t[r.int(1, #t)] end
  function r.chance(p) return r.float() < p end
  return r
end

-- ---- failures: the seed, the call, its options and its steps ----------------------------

local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return fmt("%q", #v > 60 and v:sub(1, 60) .. "..." or v) end
  if type(v) ~= "table" or depth > 1 then return tostring(v) end
  local keys, out = {}, {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local val = v[k]
    if val == nil then val = v[tonumber(k)] end
    out[#out + 1] = k .. "=" .. show(val, depth + 1)
  end
  return "{" .. concat(out, ", ") .. "}"
end

local Ctx = {}
Ctx.__index = Ctx

function Ctx:fail(msg, ...)
  local args = { ... }
  for i = 1, select("#", ...) do args[i] = show(args[i]) end
  error(fmt("SPEC_SEED=%d call %d: " .. msg, SEED, self.n, unpack_(args, 1, select("#", ...)))
        .. "\n  options: " .. show(self.options) .. "\n  steps:\n    " .. concat(self.trace, "\n    "), 0)
end

function Ctx:check(cond, msg, ...)
  if not cond then self:fail(msg, ...) end
end

function Ctx:step(s) self.trace[#self.trace + 1] = s end

-- every string in v (an err, deep), tostring(err) too
local function strings(v, out, met)
  out, met = out or {}, met or {}
  if type(v) == "string" then out[#out + 1] = v
  elseif type(v) == "table" and not met[v] then
    met[v] = true
    for k, x in pairs(v) do strings(k, out, met); strings(x, out, met) end
    local mt = getmetatable(v)
    if mt and mt.__tostring then out[#out + 1] = tostring(v) end
  end
  return out
end

function Ctx:no_secrets(where, v)
  for _, s in ipairs(strings(v)) do
    self:check(not s:find(KEY, 1, true), "the API key in %s: %s", where, s)
    local px = self.options.proxy and self.options.proxy:find(PXPASS, 1, true)   -- a secret here
    self:check(not (px and s:find(PXPASS, 1, true)), "the proxy's password in %s: %s", where, s)
  end
end

-- ---- the model ---------------------------------------------------------------------------

-- Retry-After as response.c reads it: { lo, hi } seconds (an HTTP date is measured against
-- time(NULL) when it is decoded: a second may pass), or nil when unreadable.
local function parse_ra(v, dated)
  if v == nil then return nil end
  local t = v:match("^[ \t]*(.-)[ \t]*$")
  if t:match("^%d+$") then
    local n = tonumber(t)
    if n >= 1e9 then return nil end
    return { lo = n, hi = n }
  end
  if dated then return { lo = math.max(0, dated - 2), hi = math.max(0, dated) } end
  return nil
end

-- What an observation of one attempt is, for the policy: { success, res } or { kind, status,
-- proxy_status, maybe, retry = nil | "backoff" | { lo, hi } }.
local function classify(obs, mode, get)
  local stage = obs.stage
  local c
  if stage and stage:find("^proxy") then
    local ps = obs.proxy_status
    c = { kind = "proxy", proxy_status = ps, maybe = false, proxy = true }
    if not (ps and ps >= 400 and ps < 500) then c.retry = "backoff" end
    return c
  end
  if mode == "plain" and obs.status == 407 then        -- the proxy's, answered or cut
    return { kind = "proxy", proxy_status = 407, maybe = false, proxy = true }
  end
  if obs.status and obs.body then                      -- Acquire's whole answer
    local s = obs.status
    if s >= 200 and s < 300 then
      local ok, v = pcall(cjson.decode, obs.body)
      if ok and type(v) == "table" then return { success = true, res = v } end
      c = { kind = "decode", status = s, maybe = true }
    else
      local ra = parse_ra(obs.headers and obs.headers["retry-after"], obs.dated)
      c = { kind = "http", status = s, maybe = s >= 500 and s ~= 503, ra = ra }
      if (s == 429 or s == 503) and ra then c.retry = ra end
    end
  else
    c = { kind = obs.too_large and "http" or obs.timeout and "timeout"
                 or stage == "tls" and "tls" or "network",
          status = obs.status, maybe = obs.sent and true or false }
    if c.kind == "network" or c.kind == "timeout" then c.retry = "backoff" end
  end
  if get then c.maybe = false end                      -- a read creates nothing
  if c.maybe then c.retry = nil end
  return c
end

-- May (can) and must the engine retry after failure c on attempt n at time t (deadline d)?
local function retry_rule(c, n, max_retries, t, d)
  local r = { can = false, must = false }
  if not c.retry or n > max_retries then return r end
  if c.retry == "backoff" then
    r.lo, r.hi = 0, math.min(0.5 * 2 ^ (n - 1), 8)
    r.can, r.must = t < d, t + r.hi < d
  else
    r.lo, r.hi = c.retry.lo, c.retry.hi
    r.can = r.lo <= RA_CAP and t + r.lo < d
    r.must = r.hi <= RA_CAP and t + r.hi < d
  end
  return r
end

local function iso(at) return os.date("!%Y-%m-%dT%H:%M:%S", floor(at)) .. ".000Z" end

-- Does listed case cs match filter f (title/description: a string, NULL or nil; since, before)?
local function matches(cs, cid, f)
  if f.since and cs._at < f.since - SKEW then return false end
  if f.before and cs._at > f.before + SKEW then return false end
  for _, k in ipairs({ "title", "description" }) do
    local want, got = f[k], cs[k]
    if want == NULL then
      if got ~= nil and got ~= NULL then return false end
    elseif want ~= nil and got ~= want then
      return false
    end
  end
  return cs.contactId == cid
end

-- The pages of a contact's case list as the engine reads them: { pages, count }
-- -> the pages read and the matching cases, each once, in order.
local function reading(list, cid, f)
  local found, ids, p = {}, {}, 0
  while true do
    local cases = list.pages[p + 1] or {}
    for _, cs in ipairs(cases) do
      if matches(cs, cid, f) and not ids[cs.id] then ids[cs.id] = true; found[#found + 1] = cs end
    end
    local more = #cases >= 100 and (list.count == nil or (p + 1) * 100 < list.count) and p + 1 < 10
    if not more then return p + 1, found end
    p = p + 1
  end
end

local function page_body(list, p)
  local out = {}
  for i, cs in ipairs(list.pages[p + 1] or {}) do
    local t = {}
    for k, v in pairs(cs) do if k ~= "_at" then t[k] = v end end
    out[i] = t
  end
  local d = { page = p, limit = 100, data = out }
  d.count = list.count
  return cjson.encode({ data = d })
end

-- ---- the generator -----------------------------------------------------------------------

local DETAILS = { "connection refused", "reset by peer", "could not connect: key " .. KEY,
                  "proxy said " .. PXPASS, "timed out" }
local ERR_BODIES = { '{"type":"ERROR_NOT_FOUND","message":"Contact not found"}',
                     '{"message":"bad key ' .. KEY .. '"}', "<html>502 Bad Gateway</html>", "" }
local BAD_2XX = { "", "<html>ok</html>", '{"data":', "null", '"a string"', "42" }

local function draw_engine(r)
  local o = { api_key = KEY }
  local scheme = r.pick({ "http", "https" })
  o.base_url = scheme .. "://127.0.0.1:" .. r.int(1025, 65000)
  local px = r.pick({ "none", "none", "plain", "auth" })
  if px == "plain" then o.proxy = "http://127.0.0.1:9"
  elseif px == "auth" then o.proxy = "http://spec31:" .. PXPASS .. "@127.0.0.1:9" end
  o.max_retries = r.int(0, 5)
  local rc = r.pick({ "off", "off", "zero", "true" })
  if rc == "zero" then o.reconcile = 0 elseif rc == "true" then o.reconcile = true end
  o.timeout = r.pick({ 0.5, 2, 10, 30, 60 })
  o.debug = r.pick({ true, "body" })
  local mode = "none"
  if acquire.config(o).proxy then mode = scheme == "https" and "tunnel" or "plain" end
  return o, { mode = mode, scheme = scheme, rwait = rc == "true" and 1 or rc == "zero" and 0 or nil }
end

local function retry_after(r)
  local k = r.int(1, 8)
  if k == 1 then return nil end
  if k <= 4 then return tostring(r.pick({ 0, 0, 1, 2, 5, 29, 30, 31, 120 })) end
  if k == 5 then return r.pick({ "-1", "1.5", "soon", "", " 3 ", "Sun, 99 Nov 1994 99:99:99 GMT" }) end
  local d = r.pick({ 0, 3, 10, 45, 300 })
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + d), d
end

local function answer(status, body, ra, dated)
  return { status = status, body = body, headers = { ["retry-after"] = ra }, sent = true, dated = dated }
end

-- What one attempt of a POST (or a GET: get) came to.
local function draw_obs(r, env, _, success_body)
  local mode, k = env.mode, r.int(1, 20)
  if k <= 4 then return answer(r.pick({ 200, 201 }), success_body()) end
  if k == 5 then return answer(200, r.pick(BAD_2XX)) end
  if k == 6 then return answer(r.pick({ 400, 401, 403, 404, 409, 422, 301, 302 }), r.pick(ERR_BODIES), retry_after(r)) end
  if k <= 9 then return answer(r.pick({ 429, 503, 429, 503, 500 }), r.pick(ERR_BODIES), retry_after(r)) end
  if k == 10 then return answer(r.pick({ 500, 502, 504 }), r.pick(ERR_BODIES), retry_after(r)) end
  if k == 11 then return answer(407, r.pick(ERR_BODIES)) end
  local o = { detail = r.chance(0.8) and r.pick(DETAILS) or nil }
  if k <= 13 then
    o.stage, o.sent, o.timeout = mode == "plain" and "proxy_connect" or "connect", false, r.chance(0.3)
    if mode == "tunnel" then o.stage = r.pick({ "connect", "proxy_connect" }) end
  elseif k == 14 then
    o.stage, o.sent, o.timeout = env.scheme == "https" and "tls" or "connect", r.chance(0.2), r.chance(0.4)
  elseif k == 15 then
    o.stage, o.sent, o.timeout = "send", r.chance(0.5), r.chance(0.3)
  elseif k == 16 then
    o.stage, o.sent, o.timeout = "recv", r.chance(0.9), r.chance(0.5)
    if r.chance(0.3) then o.status = r.pick({ 200, 503, 429, 407 }) end   -- a cut answer
  elseif k == 17 then
    o.stage, o.sent, o.too_large, o.status = "recv", true, true, 200
  elseif mode == "none" then
    o.stage, o.sent = "recv", true
  else
    o.stage = mode == "tunnel" and r.pick({ "proxy_connect", "proxy_answer", "proxy_tunnel", "proxy" })
              or r.pick({ "proxy_connect", "proxy" })
    o.sent, o.timeout = r.chance(0.3), r.chance(0.2)
    if o.stage == "proxy_answer" then o.proxy_status = r.pick({ 407, 403, 502, 503 }) end
  end
  return o
end

-- A contact's case list for a lookup: matching cases (fresh, or ids already claimed),
-- cases that miss by title, description, date or contact, on one page or two.
local function draw_list(r, env, cid, f, want)
  local cases, n = {}, 0
  local function add(id, title, desc, at, contact)
    n = n + 1
    cases[n] = { id = id, contactId = contact or cid, title = title, description = desc, _at = floor(at),
                 dateCreated = iso(at) }
    return cases[n]
  end
  local title, desc = f.title, f.description
  if title == nil or title == NULL then title = NULL end
  local ok_at = (f.since or W0) + 1
  local nmatch = r.pick({ 0, 1, 1, 1, 2, 2, 3 })
  for _ = 1, nmatch do add(env.next_id(), title, desc, ok_at) end
  if #env.claimed > 0 and r.chance(0.4) then add(r.pick(env.claimed), title, desc, ok_at) end
  for _ = 1, r.int(0, 4) do
    local k = r.int(1, 5)
    if k == 1 then add(env.next_id(), "other title", desc, ok_at)
    elseif k == 2 then add(env.next_id(), title, "other text", ok_at)
    elseif k == 3 then add(env.next_id(), title, desc, ok_at - 5000)
    elseif k == 4 then add(env.next_id(), title, desc, (f.before or ok_at) + 5000)
    else add(env.next_id(), title, desc, ok_at, cid + 1) end
  end
  for i = n, 2, -1 do local j = r.int(1, i); cases[i], cases[j] = cases[j], cases[i] end
  local shape = r.int(1, 4)
  if shape == 1 or want == "one" then return { pages = { cases }, count = n } end
  local p0 = {}
  local cut = r.int(0, n)
  for i = 1, cut do p0[i] = cases[i] end
  while #p0 < 100 do p0[#p0 + 1] = { id = env.next_id(), contactId = cid, title = "filler",
                                                         _at = ok_at, dateCreated = iso(ok_at) } end
  local p1 = {}
  for i = cut + 1, n do p1[#p1 + 1] = cases[i] end
  if shape == 2 then return { pages = { p0, p1 }, count = 100 + #p1 } end
  if shape == 3 then                                   -- no count; a match listed on both pages
    if cut > 0 then p1[#p1 + 1] = cases[1] end
    return { pages = { p0, p1 } }
  end
  return { pages = { p0, p1 }, count = 100 }           -- count says one page: page 1 is never read
end

-- One call driven to its end, checked at every step.
local function run_call(ctx, r, eng, env, lines)
  local o, rc = ctx.options, env.rwait
  local cid = r.pick({ 11, 12, 13 })
  local find = r.chance(0.15)
  local opts, filter, call
  if find then
    filter = r.pick({ false, { title = "T1" }, { title = "T1", description = NULL }, { description = "m" },
                      { since = W0 + env.clock - 100 } })
    ctx:step(fmt("find_cases(%d, %s)", cid, show(filter or nil)))
    call = eng:find_cases(cid, filter or nil)
  else
    opts = { title = r.pick({ "T1", "T2", nil }) }
    local m = r.int(1, 4)
    if m == 2 then opts.message = "m" elseif m == 3 then opts.message = "my key is " .. KEY end
    ctx:step(fmt("create_case(%d, %s)", cid, show(opts)))
    call = eng:create_case(cid, opts)
  end
  local first = #lines
  local t = env.clock
  local posts, gets, body = 0, 0, nil
  local phase = find and "lookup" or "post"
  local started, deadline, look_f, list, page, n_attempt = W0 + t, t + o.timeout, nil, nil, 0, 0
  local last, last_get, last_post, reconciled_wait = nil, nil, nil, false
  local function success_body()
    local id = env.next_id()
    return cjson.encode({ data = { id = id, contactId = cid, title = opts and opts.title } })
  end
  if find then
    local f = filter or {}
    look_f = { title = f.title, description = f.description, since = f.since, before = f.before }
  end
  local action, a, b = call:next({ now = t, wall = W0 + t })
  while true do
    ctx:step(fmt("t=%.3f -> %s %s", t, action, action == "send" and a.method .. " " .. a.url
                 .. " deadline=" .. tostring(a.deadline) or show(a)))
    -- what the engine may do after the last observation
    local rule
    if type(last) == "table" and not last.success then
      rule = retry_rule(last, n_attempt, o.max_retries, t, deadline)
    end
    if action == "wait" then
      ctx:check(type(a) == "number" and a >= 0, "a wait of %s", a)
      if last and last.maybe and phase == "post" then        -- reconcile's wait
        ctx:check(rc ~= nil, "a wait after a maybe_created failure with reconcile off")
        ctx:check(a == rc, "reconcile's wait is %s s, not %s", a, rc)
        reconciled_wait = true
        seen("reconcile wait")
        phase = "lookup"
        t = t + a
        deadline = t + o.timeout
        look_f = { title = opts.title or NULL, description = opts.message or NULL, since = started, before = W0 + t }
        page, n_attempt, last = 0, 0, nil
      else
        ctx:check(rule and rule.can, "a retry wait after %s (attempt %s of %s, t=%s, deadline %s)",
                  last, n_attempt, o.max_retries + 1, t, deadline)
        ctx:check(a >= rule.lo - 1e-9 and a <= rule.hi + 1e-9, "a wait of %s s, outside [%s, %s]", a, rule.lo, rule.hi)
        ctx:check(t + a < deadline, "the wait ends at %s, past the deadline %s", t + a, deadline)
        t = t + a
        last = "waited"
        seen(rule.lo == 0 and "retry after backoff" or "retry after Retry-After")
      end
      action, a, b = call:next({ now = t, wall = W0 + t })
    elseif action == "send" then
      if rule then ctx:check(rule.can, "sent again after %s (attempt %s, max_retries %s)", last, n_attempt, o.max_retries) end
      if last ~= nil and last ~= "waited" then
        ctx:check(last.success and phase == "lookup", "a send with no wait after a failure: %s", last)
      end
      ctx:check(a.deadline and math.abs(a.deadline - deadline) < 1e-6, "send's deadline %s, not %s", a.deadline, deadline)
      ctx:check(t < a.deadline, "a send at %s, at or past its deadline %s", t, a.deadline)
      if a.method == "POST" then
        ctx:check(phase == "post", "a POST in the %s phase (reconcile never sends the POST again)", phase)
        ctx:check(posts < o.max_retries + 1, "POST number %s with max_retries %s", posts + 1, o.max_retries)
        if posts > 0 then                            -- the last one said: the case cannot exist
          ctx:check(not last_get and not last_post.success and not last_post.maybe,
                    "a POST again after %s, which may have created the case", last_post)
        end
        ctx:check(a.url == o.base_url .. CREATE .. cid, "POST to %s", a.url)
        body = body or a.body
        ctx:check(type(a.body) == "string" and a.body == body, "the POST's body changed: %s", a.body)
        posts, n_attempt = posts + 1, n_attempt + 1
        local obs = draw_obs(r, env, false, success_body)
        local c = classify(obs, env.mode, false)
        last_post, last = c, c
        t = obs.timeout and a.deadline or t + r.float() * math.min(a.deadline - t, 3)
        obs.now, obs.wall, obs.elapsed = t, W0 + t, 0.01
        ctx:step("  saw " .. show(obs))
        action, a, b = call:next(obs)
      else
        ctx:check(a.method == "GET", "a %s", a.method)
        ctx:check(phase == "lookup", "a GET in the %s phase", phase)
        if not find then
          ctx:check(reconciled_wait, "a lookup with no reconcile wait before it")
          ctx:check(last_post and last_post.maybe, "a lookup after %s, which was no maybe_created failure", last_post)
        end
        if last and last.success then page = page + 1; n_attempt = 0 end
        ctx:check(a.url == o.base_url .. fmt(LIST, cid, page), "GET %s, not page %s", a.url, page)
        if page > 0 then seen("a second page") end
        list = list or draw_list(r, env, cid, look_f, find and nil)
        gets, n_attempt = gets + 1, n_attempt + 1
        local obs
        if r.chance(0.8) then obs = answer(200, page_body(list, page))
        else obs = draw_obs(r, env, true, function() return page_body(list, page) end) end
        local c = classify(obs, env.mode, true)
        last, last_get = c, c
        t = obs.timeout and a.deadline or t + r.float() * math.min(a.deadline - t, 1)
        obs.now, obs.wall, obs.elapsed = t, W0 + t, 0.01
        ctx:step("  saw " .. show(obs))
        action, a, b = call:next(obs)
      end
    else
      ctx:check(action == "done", "action %s", action)
      break
    end
  end
  env.clock = t
  ctx:step(fmt("done %s %s", show(a), show(b)))
  -- what it came to
  if type(last) == "table" and not last.success then
    local rule = retry_rule(last, n_attempt, o.max_retries, t, deadline)
    if last.retry and n_attempt <= o.max_retries and not rule.must then seen("given up at the deadline") end
    ctx:check(not rule.must, "gave up after %s on attempt %s of %s, t=%s, deadline %s", last, n_attempt,
              o.max_retries + 1, t, deadline)
  end
  local ok, e = pcall(call.next, call, { now = t })
  ctx:check(not ok and tostring(e):find("over", 1, true), "call:next after done: %s", e)
  local mine = {}
  for i = first + 1, #lines do mine[#mine + 1] = lines[i] end
  ctx:no_secrets("a log line", mine)
  local npost, nget = 0, 0
  for _, l in ipairs(mine) do
    if l:find("^debug attempt %d+: POST ") then npost = npost + 1 end
    if l:find("^debug attempt %d+: GET ") then nget = nget + 1 end
  end
  ctx:check(npost == posts and nget == gets, "%s POST and %s GET lines for %s and %s", npost, nget, posts, gets)
  if find then
    ctx:check(posts == 0, "find_cases sent a POST")
    local _, found = reading(list or { pages = {} }, cid, look_f)
    seen(a ~= nil and "find_cases: cases" or "find_cases: err")
    if a ~= nil then
      ctx:check(last and last.success, "a result after %s", last)
      ctx:check(#a == #found, "%s cases found, the model %s", #a, #found)
      for i, cs in ipairs(found) do ctx:check(a[i] and a[i].id == cs.id, "case %s is %s, not %s", i, a[i], cs.id) end
    else
      ctx:no_secrets("err", b)
      ctx:check(b.kind == last.kind, "err.kind %s, not %s", b.kind, last.kind)
      ctx:check(b.maybe_created == false, "a lookup's err.maybe_created is %s", b.maybe_created)
      ctx:check(b.attempts == n_attempt, "err.attempts %s, not %s", b.attempts, n_attempt)
    end
    return
  end
  ctx:check(posts >= 1, "no POST")
  ctx:check(gets == 0 or (rc and last_post.maybe), "%s GETs after %s (reconcile %s)", gets, last_post, rc)
  if a ~= nil then                                    -- res
    ctx:check(type(a) == "table", "res %s", a)
    if last_post.success then
      ctx:check(gets == 0, "a lookup after a success")
      local id = last_post.res.data and last_post.res.data.id
      ctx:check((a.data and a.data.id) == id, "res.data.id %s, not %s", a.data and a.data.id, id)
      seen("created")
      if type(id) == "number" then env.claimed[#env.claimed + 1] = id; env.taken[id] = true end
    else
      ctx:check(a.reconciled == true, "res after %s without reconciled", last_post)
      local _, found = reading(list, cid, look_f)
      local free = {}
      for _, cs in ipairs(found) do if not env.taken[cs.id] then free[#free + 1] = cs.id end end
      ctx:check(#free == 1 and a.data.id == free[1], "reconciled with %s; free matching cases %s",
                a.data.id, free)
      env.claimed[#env.claimed + 1] = a.data.id
      env.taken[a.data.id] = true
      seen("reconciled")
    end
    return
  end
  local err = b
  ctx:no_secrets("err", err)
  seen("err " .. err.kind .. (err.maybe_created and ", maybe_created" or ""))
  if err.reconcile then seen("reconcile: " .. err.reconcile) end
  if err.taken then seen("reconcile: taken") end
  if err.status == 407 then seen("407 through a tunnel: http") end
  if err.proxy_status == 407 and env.mode == "plain" then seen("407 through a plain proxy: proxy") end
  ctx:check(not last_post.success, "nil, err after a success")
  ctx:check(err.attempts == posts, "err.attempts %s, %s POSTs", err.attempts, posts)
  ctx:check(err.maybe_created == last_post.maybe, "err.maybe_created %s, the model %s after %s",
            err.maybe_created, last_post.maybe, last_post)
  ctx:check(err.kind == last_post.kind, "err.kind %s, not %s", err.kind, last_post.kind)
  if last_post.kind == "proxy" then
    ctx:check(err.maybe_created == false, "a proxy-leg failure with maybe_created")
    ctx:check(err.status == nil, "a proxy failure with status %s", err.status)
    if last_post.proxy_status then
      ctx:check(err.proxy_status == last_post.proxy_status, "proxy_status %s, not %s", err.proxy_status, last_post.proxy_status)
    end
  elseif last_post.status then
    ctx:check(err.status == last_post.status, "err.status %s, not %s", err.status, last_post.status)
  end
  if last_post.ra and last_post.kind == "http" then
    ctx:check(err.retry_after and err.retry_after >= last_post.ra.lo and err.retry_after <= last_post.ra.hi,
              "err.retry_after %s, not in %s", err.retry_after, last_post.ra)
  end
  if rc and last_post.maybe then
    ctx:check(gets >= 1, "no lookup after a maybe_created failure with reconcile %s", rc)
    if last_get and not last_get.success then
      ctx:check(err.reconcile == "lookup failed" and type(err.lookup) == "table"
                and err.lookup.kind == last_get.kind and err.lookup.maybe_created == false,
                "after a failed lookup: reconcile %s, lookup %s", err.reconcile, err.lookup)
    else
      local _, found = reading(list, cid, look_f)
      local free, taken = {}, {}
      for _, cs in ipairs(found) do
        if env.taken[cs.id] then taken[#taken + 1] = cs.id else free[#free + 1] = cs.id end
      end
      ctx:check(#free ~= 1, "one free matching case (%s), and no res", free)
      if #free == 0 then
        ctx:check(err.reconcile == "not found", "err.reconcile %s, none free", err.reconcile)
      else
        ctx:check(err.reconcile == "ambiguous" and #err.candidates == #free, "err.reconcile %s, candidates %s; free %s",
                  err.reconcile, err.candidates, free)
        for i, id in ipairs(free) do ctx:check(err.candidates[i] == id, "candidates %s, not %s", err.candidates, free) end
      end
      ctx:check(#taken == (err.taken and #err.taken or 0), "err.taken %s, not %s", err.taken, taken)
    end
  else
    ctx:check(gets == 0 and err.reconcile == nil, "reconcile %s after %s", err.reconcile, last_post)
  end
end

describe("the call engine (acquire.engine), driven with invented observations", function()
  it("keeps the reliability promise over " .. CALLS .. " generated calls (SPEC_SEED=" .. SEED .. ")", function()
    local r = rng(SEED)
    local n, ids = 0, 100000
    while n < CALLS do
      local options, env = draw_engine(r)
      local lines = {}
      local eng = acquire.engine(options, function(level, text) lines[#lines + 1] = level .. " " .. text end)
      env.clock, env.claimed, env.taken = r.float() * 100, {}, {}
      env.next_id = function() ids = ids + 1; return ids end
      for _ = 1, r.int(1, 4) do
        n = n + 1
        local ctx = setmetatable({ n = n, options = options, trace = {} }, Ctx)
        run_call(ctx, r, eng, env, lines)
      end
    end
    local want = { "retry after backoff", "retry after Retry-After", "reconcile wait", "a second page",
                   "given up at the deadline", "find_cases: cases", "find_cases: err", "created",
                   "reconciled", "err http, maybe_created", "err http", "err decode, maybe_created",
                   "err network, maybe_created", "err network", "err timeout", "err tls", "err proxy",
                   "reconcile: not found", "reconcile: ambiguous", "reconcile: lookup failed",
                   "reconcile: taken", "407 through a tunnel: http", "407 through a plain proxy: proxy" }
    for _, w in ipairs(want) do
      assert(STATS[w], ("SPEC_SEED=%d: the generator never reached %q in %d calls"):format(SEED, w, CALLS))
    end
  end)
end)

describe("the call engine's misuse", function()
  local eng = acquire.engine({ base_url = "http://127.0.0.1:1", api_key = KEY, reconcile = 0 })

  it("raises at create_case and find_cases, before anything, and a call raises after done", function()
    for _, id in ipairs({ "abc", -1, 0, 1.5, "", {}, true }) do
      assert.has_error(function() eng:create_case(id, { title = "x" }) end)
      assert.has_error(function() eng:find_cases(id) end)
    end
    for _, opts in ipairs({ 5, "x", { title = {} }, { title = 1 / 0 }, { nope = 1 },
                            { message = string.char(255) } }) do
      assert.has_error(function() eng:create_case(7, opts) end)
    end
    assert.has_error(function() eng:find_cases(7, { bogus = 1 }) end)
    assert.has_error(function() eng:find_cases(7, 5) end)
    assert.has_error(function() acquire.engine({ api_key = KEY, base_url = "ftp://x" }) end)
    -- none of those raised calls counts as on its way: a lookup for that content goes at once
    local c = eng:create_case(7, { title = "x" })
    assert.equal("send", (c:next({ now = 0 })))
    local action, wait = c:next({ now = 1, status = 500, body = "", sent = true })
    assert.same({ "wait", 0 }, { action, wait })
    local action2, req = c:next({ now = 1 })
    assert.equal("send", action2)
    assert.equal("GET", req.method)
    local done, res, err = c:next({ now = 2, status = 200, body = '{"data":{"data":[]}}' })
    assert.same({ "done", nil, "not found" }, { done, res, err.reconcile })
    assert.has_error(function() c:next({ now = 3 }) end, "acquire: the call is over")
  end)

  it("waits for a twin on its way before it looks, within timeout, then says ambiguous", function()
    local e = acquire.engine({ base_url = "http://127.0.0.1:1", api_key = KEY, reconcile = 0, timeout = 1 })
    local w = os.time()
    local a = e:create_case(8, { title = "same" })
    local b = e:create_case(8, { title = "same" })
    assert.equal("send", (a:next({ now = 0, wall = w })))
    assert.equal("send", (b:next({ now = 0, wall = w })))
    assert.equal("wait", (b:next({ now = 0.1, wall = w, status = 502, body = "", sent = true })))
    local t, action, req = 0.1, b:next({ now = 0.1, wall = w })
    while action == "wait" do          -- a is on its way: b waits, at most its timeout
      assert.is_true(req > 0 and t + req <= 0.1 + 1 + req)
      t = t + req
      action, req = b:next({ now = t, wall = w + t })
    end
    assert.equal("send", action)
    assert.is_true(t >= 1.1 - 1e-9, "looked at " .. t .. " with its twin on its way")
    local list = '{"data":{"data":[{"id":5,"contactId":8,"title":"same","dateCreated":"'
                 .. os.date("!%Y-%m-%dT%H:%M:%S") .. '.000Z"}]}}'
    local done, res, err = b:next({ now = t + 0.1, wall = w + t, status = 200, body = list })
    assert.same({ "done", nil, "ambiguous", 1 }, { done, res, err.reconcile, err.in_flight })
  end)
end)

-- Three fixed server behaviours, through the C client and through the engine driven over real
-- sockets (luasocket, a driver of a dozen lines): the same outcome, the same requests.
describe("the engine's Lua face and the C client agree", function()
  local http, ltn12 = require "socket.http", require "ltn12"
  local srv = helper.server()

  local function drive(cfg, id, opts)
    local eng = acquire.engine(cfg)
    local call = eng:create_case(id, opts)
    local headers = acquire.build_request(id, opts, cfg).headers
    local action, a, b = call:next({ now = socket.gettime() })
    while action ~= "done" do
      local obs
      if action == "wait" then
        socket.sleep(a)
        obs = { now = socket.gettime() }
      else
        local out, hs = {}, {}
        for k, v in pairs(headers) do hs[k] = v end
        hs["Content-Type"] = a.body and hs["Content-Type"] or nil
        hs["Content-Length"] = a.body and tostring(#a.body) or nil
        local ok, code, h = http.request({ url = a.url, method = a.method, headers = hs,
          source = a.body and ltn12.source.string(a.body) or nil, sink = ltn12.sink.table(out) })
        if ok then obs = { now = socket.gettime(), status = code, headers = h, body = concat(out), sent = true }
        else obs = { now = socket.gettime(), stage = "recv", sent = true, detail = tostring(code) } end
      end
      action, a, b = call:next(obs)
    end
    return a, b
  end

  local function requests()
    local post, get = 0, 0
    for _, q in ipairs(srv:requests()) do
      if q.method == "POST" then post = post + 1 elseif q.method == "GET" then get = get + 1 end
    end
    return post, get
  end

  -- rules: the server's faults; over: options; -> for each transport { res, err, posts, gets }
  local function both(rules, over)
    local out = {}
    for i, how in ipairs({ "C", "engine" }) do
      srv:reset()
      for _, rule in ipairs(rules) do srv:fault(rule) end
      local cfg = { base_url = srv.base_url, api_key = srv.key, timeout = 5, max_retries = 2 }
      for k, v in pairs(over or {}) do cfg[k] = v end
      local res, err
      if how == "C" then
        local c = acquire.new(cfg)
        res, err = c:create_case(597752, { title = "agree", message = "m" })
        c:close()
      else
        res, err = drive(cfg, 597752, { title = "agree", message = "m" })
      end
      local posts, gets = requests()
      out[i] = { res = res, err = err, posts = posts, gets = gets }
    end
    return out[1], out[2]
  end

  local function same_err(c, e)
    assert.is_table(c.err)
    assert.is_table(e.err)
    for _, k in ipairs({ "kind", "status", "type", "message", "maybe_created", "attempts", "retry_after",
                         "reconcile" }) do
      assert.equal(c.err[k], e.err[k], "err." .. k)
    end
    assert.equal(tostring(c.err), tostring(e.err))
  end

  it("503 with Retry-After: 0, then the case: created on the second POST", function()
    local c, e = both({ { action = "status", status = 503, headers = { ["Retry-After"] = "0" }, times = 1 } })
    assert.same({ 2, 0 }, { c.posts, c.gets })
    assert.same({ c.posts, c.gets }, { e.posts, e.gets })
    assert.is_table(c.res and c.res.data)
    assert.same(c.res, e.res)
  end)

  it("429 with Retry-After: 31 (above the cap): given up at once, the same err", function()
    local c, e = both({ { action = "status", status = 429, headers = { ["Retry-After"] = "31" },
                          body = '{"type":"ERROR_RATE","message":"slow down"}' } })
    assert.same({ 1, 1 }, { c.posts, e.posts })
    same_err(c, e)
    assert.equal(31, e.err.retry_after)
  end)

  it("a 500 after the case was stored, reconcile = 0: one POST, one lookup, the stored case", function()
    local c, e = both({ { action = "status", status = 500, create = true, times = 1 } }, { reconcile = 0 })
    assert.same({ 1, 1 }, { c.posts, c.gets })
    assert.same({ c.posts, c.gets }, { e.posts, e.gets })
    assert.is_true(c.res and c.res.reconciled)
    assert.is_true(e.res and e.res.reconciled)
    assert.equal(c.res.data.id, e.res.data.id)
    assert.equal(srv:cases()[1].id, tonumber(e.res.data.id))
  end)

  it("a 400: not retried, not created, the same err", function()
    local c, e = both({ { action = "status", status = 400, body = '{"type":"ERROR_X","message":"no such thing"}' } })
    assert.same({ 1, 1 }, { c.posts, e.posts })
    same_err(c, e)
    assert.is_false(e.err.maybe_created)
  end)
end)
