-- The chaos driver and checker (spec/11-chaos_spec.lua): starts the chaos
-- server (spec/server/chaos_server.py), makes calls through the client while
-- it misbehaves at random, and checks every call against the server's log of
-- what it received. Lua 5.1-5.4 and LuaJIT.
--
--   local chaos = require "spec.chaos"
--   local srv = chaos.start(seed)              -- srv:stop() in teardown
--   chaos.reset(srv); chaos.force(srv, { { answer = "ok", delivery = "garbage", variant = "hello" } })
--   local calls = { chaos.call("create_case", marker, function() return c:create_case(id, { title = marker }) end, bound) }
--   local ok, why = chaos.check(calls, chaos.log(srv), seed)
--
-- The invariant, per call (its marker is the request's title):
--   (a) at most one reception was created: never created twice;
--   (b) a reception after the first follows a fully delivered 429/503 with
--       Retry-After: 0 (retry_ok): nothing that reached the server is sent
--       again otherwise;
--   (c) err.maybe_created == false: no reception was created;
--   (d) res: exactly one reception was created, and res.data.id is its case
--       id; that reception's answer was a 2xx with a JSON object body, unless
--       res.reconciled (the case was found by reading the list back: then
--       res.data.title is the marker too);
--   (e) err is a table with a known kind and a one-line tostring, nothing
--       raised, the call returned within its time bound (which, with
--       reconcile, includes the wait and the lookup's pages);
--   (g) err.maybe_created == false after a reception that was not a whole
--       retryable 429/503 (retry_ok): the client read the target's definitive
--       answer: err.kind "http" and err.status the status the target sent
--       (a request the target received, answered by nothing definitive, is
--       maybe_created, whatever a proxy on the path did);
--   (h) with a proxy (check's opts.proxy): kind "proxy" is allowed, and only
--       when the target received nothing of that call but whole retryable
--       429/503s (a 407 the target sent inside a tunnel is kind "http");
--   (f) reconcile (check's opts.reconcile): err.maybe_created == true has an
--       err.reconcile, "lookup failed" (with err.lookup) or "not found" (only
--       when no reception was created: the server lists what it created at
--       once, and the specs keep each contact under 10 pages of 100, the
--       most a lookup reads, so a created case missed is a bug), never "ambiguous" (markers
--       are unique); err.maybe_created == false has none. Without reconcile,
--       neither err.reconcile nor res.reconciled.
-- A read of the case list (a lookup) is no reception: the server logs reads
-- apart (log.reads), and they never count against (a)-(c).
local helper = require "spec.helper"
local cjson = require "cjson"
local socket = require "socket"

local chaos = {}

local function denull(v)
  if v == cjson.null then return nil end
  return v
end

chaos.KINDS = { network = true, timeout = true, tls = true, http = true, decode = true }
chaos.PROXY_KINDS = { network = true, timeout = true, tls = true, http = true, decode = true, proxy = true }

-- The knobs both chaos spec files read: the seed (CHAOS_SEED, default the clock), how often a
-- read of the case list fails under reconcile (CHAOS_READ_CHAOS), and how many calls share a
-- contact under reconcile (so its list stays within a few pages of a lookup).
chaos.SEED = tonumber(os.getenv("CHAOS_SEED")) or os.time()
chaos.READ_CHAOS = tonumber(os.getenv("CHAOS_READ_CHAOS")) or 0.1
chaos.PER_CONTACT = 250
-- seconds a call may overrun its bound (a hang is far over): 1 s, for a 2-core machine under load
-- (acquire.ngx's call with timeout 1 took 2.08 s once while the machine ran 3 suites)
chaos.SLACK = tonumber(os.getenv("CHAOS_SLACK")) or 1.0

-- opts.tls: the server speaks TLS (srv.base_url https, srv.ca_file its certificate).
function chaos.start(seed, opts)
  local srv = helper.start_server{
    script = helper.repo_root .. "/spec/server/chaos_server.py",
    args = { "--seed", ("%d"):format(seed) },
    tls = opts and opts.tls,
  }
  srv.seed = seed
  return srv
end

-- The hostile proxy (spec/server/chaos_proxy.py): p.url for a client's proxy option,
-- p:call for its control calls, p:stop(). Its own seed: seed + 1.
function chaos.start_proxy(seed)
  local p = helper.start_server{
    script = helper.repo_root .. "/spec/server/chaos_proxy.py",
    args = { "--seed", ("%d"):format(seed + 1) },
  }
  p.url = "http://" .. p.host .. ":" .. p.port
  return p
end

-- Clears the proxy's log, forced modes and weights (its draws go on).
function chaos.proxy_reset(p) return p:call("POST", "/_control/reset", "{}") end

-- { connect = { mode = weight }, absolute = { ... }, force = { { mode =, count = }, ... } }
function chaos.proxy_config(p, t) return p:call("POST", "/_control/config", cjson.encode(t)) end

-- What the proxy did: its events, in order, JSON nulls as nil; .pending.
function chaos.proxy_log(p)
  local log = p:call("GET", "/_control/log")
  local out = { seed = log.seed, pending = log.pending }
  for i, e in ipairs(log.events) do
    local ev = {}
    for k, v in pairs(e) do ev[k] = denull(v) end
    out[i] = ev
  end
  return out
end

-- The proxy's events counted by kind and mode, for a summary line.
function chaos.proxy_tally(plog)
  local by, keys = {}, {}
  for _, e in ipairs(plog) do
    local k = tostring(e.kind) .. ":" .. tostring(e.mode)
    if not by[k] then by[k] = 0; keys[#keys + 1] = k end
    by[k] = by[k] + 1
  end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. by[k] end
  return ("%d proxy events: %s"):format(#plog, table.concat(parts, " "))
end

-- Clears the server's log, forced behaviours and weights (its draws go on).
function chaos.reset(srv) return srv:call("POST", "/_control/reset", "{}") end

-- { answers = { name = weight }, deliveries = { ... }, force = { ... }, seed = n,
--   read_chaos = p (0..1: reads of the case list misbehave), read_force = { name, ... } }
function chaos.config(srv, t) return srv:call("POST", "/_control/config", cjson.encode(t)) end

-- The next behaviours, in order: { answer =, delivery =, variant =, cut =, count = }.
function chaos.force(srv, list) return chaos.config(srv, { force = list }) end

-- The receptions, in order, JSON nulls as nil.
function chaos.log(srv)
  local log = srv:call("GET", "/_control/log")
  local out = {}
  for i, r in ipairs(log.receptions) do
    local rec = {}
    for k, v in pairs(r) do rec[k] = denull(v) end
    out[i] = rec
  end
  out.seed, out.pending = log.seed, log.pending
  out.reads = {}
  for i, r in ipairs(log.reads or {}) do
    local rd = {}
    for k, v in pairs(r) do rd[k] = denull(v) end
    out.reads[i] = rd
  end
  return out
end

-- The client's configuration against srv.
-- proxy: a proxy URL (chaos.start_proxy's p.url) or nil.
function chaos.client_config(srv, proxy)
  return { base_url = srv.base_url, api_key = srv.key, timeout = 1, connect_timeout = 1,
           max_retries = 2, debug = os.getenv("CHAOS_DEBUG") ~= nil, ca_file = srv.ca_file,
           proxy = proxy }
end

-- One request and its retries: every attempt's timeout, the backoff's
-- ceilings (0.5 s doubling, capped at 8 s; Retry-After 0 waits nothing).
local function attempts(cfg)
  local backoff = 0
  for a = 1, cfg.max_retries do backoff = backoff + math.min(8, 0.5 * 2 ^ (a - 1)) end
  return (1 + cfg.max_retries) * cfg.timeout + backoff
end

-- The seconds cfg.reconcile waits before looking (true: 1 s; false/nil: no lookup).
function chaos.reconcile_wait(cfg)
  if cfg.reconcile == true then return 1 end
  return tonumber(cfg.reconcile)
end

-- A lookup of pages pages (each read retried as the policy allows).
function chaos.lookup_bound(cfg, pages)
  return (pages or 1) * attempts(cfg)
end

-- How long one call may take: its attempts, slack; with reconcile, the wait
-- and a lookup of pages pages (default 1).
function chaos.bound(cfg, pages)
  local wait = chaos.reconcile_wait(cfg)
  return attempts(cfg) + chaos.SLACK + (wait and wait + chaos.lookup_bound(cfg, pages) or 0)
end

-- A batch of n at concurrency k: the work spread over k slots, plus the
-- longest single item (greedy scheduling's bound). Without its lookups:
-- chaos.batch adds those, one per item looked up, after the one wait.
function chaos.batch_bound(cfg, n, k)
  return n * (1 + cfg.max_retries) * cfg.timeout / k + attempts(cfg) + chaos.SLACK
end

-- Runs fn (which returns res | nil, err) and records what came back.
function chaos.call(path, marker, fn, bound)
  local t0 = socket.gettime()
  local ok, res, err = pcall(fn)
  local call = { path = path, marker = marker, elapsed = socket.gettime() - t0, bound = bound }
  if ok then call.res, call.err = res, err else call.raised = tostring(res) end
  return call
end

-- create_cases over items { { contactId, { title = marker } }, ... }: one
-- call record per item, the batch's time and bound for each. With lookup
-- (reconcile: { wait = s, each = a lookup's bound }), the bound grows by the
-- wait and one lookup per item that was looked up (res.reconciled or
-- err.reconcile).
function chaos.batch(client, items, concurrency, bound, lookup)
  local t0 = socket.gettime()
  local ok, results = pcall(client.create_cases, client, items, { concurrency = concurrency })
  local dt = socket.gettime() - t0
  if ok and lookup and type(results) == "table" then
    local looked = 0
    for i = 1, #items do
      local r = type(results[i]) == "table" and results[i] or {}
      if (type(r.res) == "table" and r.res.reconciled) or (type(r.err) == "table" and r.err.reconcile) then
        looked = looked + 1
      end
    end
    if looked > 0 then bound = bound + lookup.wait + looked * lookup.each end
  end
  local calls = {}
  for i, item in ipairs(items) do
    local call = { path = ("create_cases[%d/%d c=%d]"):format(i, #items, concurrency),
                   marker = item[2].title, contact = item[1], elapsed = dt, bound = bound }
    if not ok then
      call.raised = tostring(results)
    elseif type(results) ~= "table" or type(results[i]) ~= "table" then
      call.raised = "create_cases returned no result #" .. i
    else
      call.res, call.err = results[i].res, results[i].err
    end
    calls[i] = call
  end
  return calls
end

-- The pending-call path (issue 19): client:start_case over items { { contactId, opts }, ... }
-- in a cqueues loop, concurrency coroutines taking the items in turn, each call driven as the
-- README says (`while not p:step() do cqueues.poll(p) end`); one call record per item, each
-- timed from start_case to its result against bound (a call's own: the calls run side by side).
-- nil when cqueues is not installed (chaos.cqueues, for a pending() in the spec).
local has_cq, cqueues = pcall(require, "cqueues")
chaos.cqueues = has_cq and cqueues or nil
function chaos.pending(client, items, concurrency, bound)
  if not has_cq then return nil end
  local calls, next_i = {}, 0
  local cq = cqueues.new()
  for _ = 1, concurrency do
    cq:wrap(function()
      while next_i < #items do
        next_i = next_i + 1
        local i, item = next_i, items[next_i]
        -- chaos.call's record, but cqueues.poll outside any pcall (Lua 5.1 and LuaJIT cannot
        -- yield across one)
        local t0 = socket.gettime()
        local call = { path = ("start_case[%d/%d c=%d]"):format(i, #items, concurrency), marker = item[2].title,
                       contact = item[1], bound = bound }
        local ok, p = pcall(client.start_case, client, item[1], item[2])
        while ok do
          local done
          ok, done = pcall(p.step, p)
          if not ok then p = done elseif done then break else cqueues.poll(p) end
        end
        local res, err
        if ok then ok, res, err = pcall(p.result, p) else res = p end
        call.elapsed = socket.gettime() - t0
        if ok then call.res, call.err = res, err else call.raised = tostring(res) end
        calls[i] = call
      end
    end)
  end
  local ok, why = cq:loop()
  for i, item in ipairs(items) do          -- the loop itself failed: every call left says so
    calls[i] = calls[i] or { path = "start_case", marker = item[2].title, contact = item[1], elapsed = 0,
                             bound = bound, raised = "the cqueues loop stopped: " .. tostring(why) }
  end
  assert(ok or #calls == #items, why)
  return calls
end

-- ---- reading ------------------------------------------------------------

local function num(v) return type(v) == "number" and ("%d"):format(v) or tostring(v) end

local function describe_rec(r)
  local what = (r.answer or "-") .. "/" .. tostring(r.delivery)
  if r.variant then what = what .. "(" .. r.variant .. ")" end
  if r.retry_after then what = what .. " Retry-After=" .. ("%q"):format(r.retry_after) end
  return ("#%s conn %s %s %s %s status %s case %s%s%s t=%.3f"):format(
    num(r.seq), num(r.conn), r.full and "full" or "PARTIAL", r.decision, what,
    num(r.status), num(r.case_id), r.retry_ok and " retry_ok" or "",
    r.delivered and "" or " (not all delivered)", r.t or 0)
end

local function describe_client(call)
  if call.raised then return "raised: " .. call.raised end
  local s
  if call.res ~= nil then
    local data = type(call.res) == "table" and type(call.res.data) == "table" and call.res.data or {}
    s = ("res data.id=%s title=%s%s"):format(tostring(data.id), tostring(data.title),
      type(call.res) == "table" and call.res.reconciled and " reconciled" or "")
  elseif type(call.err) == "table" then
    local e = call.err
    local msg = tostring(e.message or "")
    if #msg > 160 then msg = msg:sub(1, 160) .. "..." end
    s = ("nil, err{kind=%s status=%s code=%s attempts=%s maybe_created=%s retry_after=%s message=%q")
      :format(tostring(e.kind), tostring(e.status), tostring(e.code), tostring(e.attempts),
              tostring(e.maybe_created), tostring(e.retry_after), msg)
    if e.proxy_status ~= nil then s = s .. " proxy_status=" .. tostring(e.proxy_status) end
    if e.reconcile ~= nil then
      s = s .. (" reconcile=%q"):format(tostring(e.reconcile))
      if type(e.lookup) == "table" then
        s = s .. (" lookup={kind=%s status=%s message=%q}"):format(tostring(e.lookup.kind),
          tostring(e.lookup.status), tostring(e.lookup.message or ""):sub(1, 100))
      end
      if type(e.candidates) == "table" then
        local ids = {}
        for i, v in ipairs(e.candidates) do ids[i] = tostring(v) end
        s = s .. " candidates={" .. table.concat(ids, ",") .. "}"
      end
    end
    s = s .. "}"
  else
    s = ("nil, %s"):format(tostring(call.err))
  end
  return ("%s in %.3f s (bound %.1f s)"):format(s, call.elapsed, call.bound or 0)
end

-- ---- the invariant ------------------------------------------------------

chaos.RECONCILE = { ["not found"] = true, ["ambiguous"] = true, ["lookup failed"] = true }

-- The problems with one call, given its receptions in order; reconcile: the
-- client looked up what may have been created.
local function problems(call, recs, reconcile, proxy)
  local out = {}
  local function bad(s) out[#out + 1] = s end
  local created = {}
  for _, r in ipairs(recs) do
    if r.decision == "created" then created[#created + 1] = r end
  end
  -- (a)
  if #created > 1 then bad(("(a) created %d times: a case created twice"):format(#created)) end
  -- (b)
  for i = 2, #recs do
    if not recs[i - 1].retry_ok then
      bad(("(b) reception #%s was sent again after #%s, which reached the server and was not a fully "
        .. "delivered 429/503 with Retry-After: 0"):format(num(recs[i].seq), num(recs[i - 1].seq)))
    end
  end
  -- (e), the shape
  if call.raised then
    bad("(e) raised: " .. call.raised)
  elseif call.res ~= nil then
    if call.err ~= nil then bad("(e) returned both res and err") end
    if type(call.res) ~= "table" then bad("(e) res is a " .. type(call.res)) end
  else
    local e = call.err
    if type(e) ~= "table" then
      bad("(e) err is a " .. type(e) .. ", not a table")
    else
      if type(e.kind) ~= "string" or not (proxy and chaos.PROXY_KINDS or chaos.KINDS)[e.kind] then
        bad("(e) err.kind is " .. tostring(e.kind))
      end
      local last = recs[#recs]
      -- (g)
      if e.maybe_created == false and last and not last.retry_ok then
        if not last.full then
          bad(("(g) maybe_created is false, but the target read part of the request (#%s) and "
            .. "gave no answer"):format(num(last.seq)))
        elseif e.kind ~= "http" or tonumber(e.status) ~= tonumber(last.status) then
          bad(("(g) maybe_created is false, but the answer the client reports (kind %s, status %s) is "
            .. "not the target's (status %s to #%s)"):format(tostring(e.kind), tostring(e.status),
            num(last.status), num(last.seq)))
        end
      end
      -- (h)
      if e.kind == "proxy" then
        for _, r in ipairs(recs) do
          if not r.retry_ok then
            bad(("(h) kind \"proxy\", but the target received #%s (%s, status %s)"):format(
              num(r.seq), r.full and "in full" or "in part", num(r.status)))
            break
          end
        end
      end
      if type(e.maybe_created) ~= "boolean" then
        bad("(e) err.maybe_created is " .. tostring(e.maybe_created))
      end
      local ok, line = pcall(tostring, e)
      if not ok or type(line) ~= "string" or line:find("\n") then
        bad("(e) tostring(err) is not one line: " .. tostring(line))
      end
      -- (c)
      if e.maybe_created == false and #created > 0 then
        bad(("(c) maybe_created is false, but the server created case %s"):format(num(created[1].case_id)))
      end
      -- (f)
      if not reconcile then
        if e.reconcile ~= nil then bad("(f) err.reconcile is " .. tostring(e.reconcile) .. " without reconcile") end
      elseif e.maybe_created == true then
        if not chaos.RECONCILE[e.reconcile] then
          bad("(f) maybe_created and reconcile on, but err.reconcile is " .. tostring(e.reconcile))
        elseif e.reconcile == "lookup failed" and type(e.lookup) ~= "table" then
          bad("(f) lookup failed, but err.lookup is " .. tostring(e.lookup))
        elseif e.reconcile == "not found" and #created > 0 then
          bad(("(f) the server created case %s and listed it, but the lookup did not find it")
            :format(num(created[1].case_id)))
        elseif e.reconcile == "ambiguous" then
          bad("(f) ambiguous, but each marker is sent by one call only")
        end
      elseif e.reconcile ~= nil then
        bad("(f) maybe_created is false, yet err.reconcile is " .. tostring(e.reconcile))
      end
    end
  end
  -- (d)
  if not call.raised and type(call.res) == "table" then
    local reconciled = call.res.reconciled
    if reconciled ~= nil and (reconciled ~= true or not reconcile) then
      bad("(d) res.reconciled is " .. tostring(reconciled) .. (reconcile and "" or " without reconcile"))
    end
    if #created ~= 1 then
      bad(("(d) res returned%s, but the server created %d cases for this call")
        :format(reconciled and " (reconciled)" or "", #created))
    else
      local r = created[1]
      local data = type(call.res.data) == "table" and call.res.data or {}
      if reconciled then
        if data.title ~= call.marker then
          bad(("(d) reconciled, but res.data.title is %s"):format(tostring(data.title)))
        end
      elseif not (type(r.status) == "number" and r.status >= 200 and r.status <= 299 and r.body_json) then
        bad(("(d) res returned, but the created reception's answer was %s, not a 2xx JSON object")
          :format(num(r.status)))
      end
      if tonumber(data.id) == nil or tonumber(data.id) ~= tonumber(r.case_id) then
        bad(("(d) res.data.id is %s, the server's case id %s"):format(tostring(data.id), num(r.case_id)))
      end
    end
  end
  -- (e), the time
  if call.bound and call.elapsed > call.bound then
    bad(("(e) took %.3f s, over its bound %.1f s"):format(call.elapsed, call.bound))
  end
  return out
end

-- Checks every call against the log: true, or false and a readable report
-- naming the seed, and for each failing call its marker, the client's
-- result and the server's receptions. opts: { reconcile = true } when the
-- client had reconcile on ((f)).
function chaos.check(calls, log, seed, max_shown, opts)
  max_shown = max_shown or 8
  local reconcile = type(opts) == "table" and opts.reconcile or false
  local proxy = type(opts) == "table" and opts.proxy or false
  -- the proxy's events for a marker (absolute-form requests only: a tunnel's are opaque)
  local plog_by = {}
  for _, ev in ipairs(type(opts) == "table" and opts.plog or {}) do
    if ev.marker then
      plog_by[ev.marker] = plog_by[ev.marker] or {}
      table.insert(plog_by[ev.marker], ev)
    end
  end
  local by_marker = {}
  for _, r in ipairs(log) do
    if r.marker then
      by_marker[r.marker] = by_marker[r.marker] or {}
      table.insert(by_marker[r.marker], r)
    end
  end
  -- each reception's predecessor on its connection, for context
  local before, last_on = {}, {}
  local ordered = {}
  for _, r in ipairs(log) do ordered[#ordered + 1] = r end
  table.sort(ordered, function(x, y) return x.seq < y.seq end)
  for _, r in ipairs(ordered) do
    if r.conn then
      before[r] = last_on[r.conn]
      last_on[r.conn] = r
    end
  end
  local failed, report = 0, {}
  for _, call in ipairs(calls) do
    local recs = by_marker[call.marker] or {}
    table.sort(recs, function(x, y) return x.seq < y.seq end)
    local p = problems(call, recs, reconcile, proxy)
    if #p > 0 then
      failed = failed + 1
      if failed <= max_shown then
        report[#report + 1] = ("  %s (%s):"):format(call.marker, call.path)
        for _, s in ipairs(p) do report[#report + 1] = "    " .. s end
        report[#report + 1] = "    client: " .. describe_client(call)
        if #recs == 0 then report[#report + 1] = "    server: no reception" end
        for _, ev in ipairs(plog_by[call.marker] or {}) do
          report[#report + 1] = ("    proxy: #%s conn %s %s %s forwarded=%s up=%s down=%s%s"):format(
            num(ev.seq), num(ev.conn), tostring(ev.method), tostring(ev.mode), tostring(ev.forwarded),
            num(ev.up), num(ev.down), ev.note and (" (" .. tostring(ev.note) .. ")") or "")
        end
        for _, r in ipairs(recs) do
          local prev = before[r]
          if prev and prev.marker ~= call.marker then
            report[#report + 1] = ("    server: (before it on conn %s: %s, %s)")
              :format(num(r.conn), tostring(prev.marker), describe_rec(prev))
          end
          report[#report + 1] = "    server: " .. describe_rec(r)
        end
      end
    end
  end
  if failed == 0 then return true end
  if failed > max_shown then report[#report + 1] = ("  ... and %d more"):format(failed - max_shown) end
  table.insert(report, 1, ("chaos seed %s: %d of %d calls broke the promise (rerun with CHAOS_SEED=%s)%s")
    :format(num(seed), failed, #calls, num(seed),
            (log.pending or 0) > 0 and (" [%s answers still pending]"):format(num(log.pending)) or ""))
  return false, table.concat(report, "\n")
end

-- Identical content: several calls or batch items send the same contact, title and message,
-- so a marker (the title) names a group of calls, not one. Each call's contact is call.contact.
-- With reconcile on, per call:
--   (s1) the shape of (e): a res or a table err of a known kind with a boolean maybe_created and
--        a one-line tostring; nothing raised; within its time bound;
--   (s2) no case id is reported for two calls (res.data.id), across groups too;
--   (s3) a reported id is a case the server created (its log), for a request with this call's
--        title and contact; not reconciled: that request's answer was a 2xx JSON object;
--        reconciled: res.data.title is the title;
-- and per group, in aggregate (the server cannot tell whose request is whose):
--   (s4) receptions that were not a whole retryable 429/503 number at most the group's calls
--        (nothing received is sent again);
--   (s5) the cases created number at most the calls that returned a res plus those that said
--        maybe_created (a created case is never denied).
-- -> true, or false and a report naming the seed.
function chaos.check_shared(calls, log, seed, opts)
  local kinds = type(opts) == "table" and opts.proxy and chaos.PROXY_KINDS or chaos.KINDS
  local groups, order = {}, {}
  local function group(m)
    if not groups[m] then groups[m] = { calls = {}, recs = {} }; order[#order + 1] = m end
    return groups[m]
  end
  local by_id = {}
  for _, call in ipairs(calls) do table.insert(group(call.marker).calls, call) end
  for _, r in ipairs(log) do
    if r.marker then table.insert(group(r.marker).recs, r) end
    if r.decision == "created" and r.case_id then by_id[tonumber(r.case_id)] = r end
  end
  local owner = {}
  local report, failed = {}, 0
  for _, m in ipairs(order) do
    local g = groups[m]
    local out = {}
    local function bad(s) out[#out + 1] = s end
    local with_res, maybe, created, sent = 0, 0, 0, 0
    for _, r in ipairs(g.recs) do
      if r.decision == "created" then created = created + 1 end
      if not r.retry_ok then sent = sent + 1 end
    end
    for _, call in ipairs(g.calls) do
      local who = ("%s: "):format(call.path)
      if call.raised then
        bad(who .. "(s1) raised: " .. call.raised)
      elseif call.res ~= nil then
        with_res = with_res + 1
        local data = type(call.res) == "table" and type(call.res.data) == "table" and call.res.data or {}
        local id = tonumber(data.id)
        if call.err ~= nil then bad(who .. "(s1) returned both res and err") end
        if id == nil then
          bad(who .. "(s3) res.data.id is " .. tostring(data.id))
        else
          if owner[id] then
            bad(("%s(s2) case %d reported for two calls (the other: %s, %s)"):format(who, id,
              owner[id].marker, owner[id].path))
          end
          owner[id] = call
          local r = by_id[id]
          if not r then
            bad(("%s(s3) case %d is not one the server created"):format(who, id))
          elseif r.marker ~= call.marker or (call.contact and tonumber(r.contact) ~= tonumber(call.contact)) then
            bad(("%s(s3) case %d was created for %s (contact %s), not this call's content"):format(who, id,
              tostring(r.marker), num(r.contact)))
          elseif call.res.reconciled then
            if data.title ~= call.marker then bad(who .. "(s3) reconciled, but res.data.title is " .. tostring(data.title)) end
          elseif not (type(r.status) == "number" and r.status >= 200 and r.status <= 299 and r.body_json) then
            bad(("%s(s3) case %d's answer was %s, not a 2xx JSON object"):format(who, id, num(r.status)))
          end
        end
      else
        local e = call.err
        if type(e) ~= "table" then
          bad(who .. "(s1) err is a " .. type(e))
        else
          if not kinds[e.kind] then bad(who .. "(s1) err.kind is " .. tostring(e.kind)) end
          if type(e.maybe_created) ~= "boolean" then bad(who .. "(s1) err.maybe_created is " .. tostring(e.maybe_created)) end
          if e.maybe_created then maybe = maybe + 1 end
          local ok, line = pcall(tostring, e)
          if not ok or type(line) ~= "string" or line:find("\n") then bad(who .. "(s1) tostring(err) is not one line") end
        end
      end
      if call.bound and call.elapsed > call.bound then
        bad(("%s(s1) took %.3f s, over its bound %.1f s"):format(who, call.elapsed, call.bound))
      end
    end
    if sent > #g.calls then
      bad(("(s4) %d calls, but the server received %d requests that were not a whole retryable 429/503")
        :format(#g.calls, sent))
    end
    if created > with_res + maybe then
      bad(("(s5) the server created %d cases, but only %d calls returned one and %d said maybe_created")
        :format(created, with_res, maybe))
    end
    if #out > 0 then
      failed = failed + 1
      if failed <= 8 then
        report[#report + 1] = ("  %s (%d calls):"):format(m, #g.calls)
        for _, s2 in ipairs(out) do report[#report + 1] = "    " .. s2 end
        for _, call in ipairs(g.calls) do report[#report + 1] = "    client: " .. call.path .. ": " .. describe_client(call) end
        for _, r in ipairs(g.recs) do report[#report + 1] = "    server: " .. describe_rec(r) end
      end
    end
  end
  if failed == 0 then return true end
  table.insert(report, 1, ("chaos seed %s: identical content: %d of %d groups broke the promise (rerun with CHAOS_SEED=%s)")
    :format(num(seed), failed, #order, num(seed)))
  return false, table.concat(report, "\n")
end

-- Appends every call and every reception to path, one a line (CHAOS_DUMP).
function chaos.dump(path, calls, log)
  local f = assert(io.open(path, "a"))
  for _, call in ipairs(calls) do
    f:write("call ", call.marker, " ", call.path, ": ", describe_client(call), "\n")
  end
  for _, r in ipairs(log) do f:write("reception ", tostring(r.marker), " ", describe_rec(r), "\n") end
  f:close()
end

-- A host's chaos spec with config.reconcile = 0 (spec/14, spec/35). A call's bound there: the
-- create's timeout, the wait, the lookup's own timeout (every page, retries included).
function chaos.reconcile_bound(rcfg) return rcfg.timeout + rcfg.reconcile + rcfg.timeout + chaos.SLACK end

-- The invariant with reconcile, on srv's log; unless pinned, at least one call reconciled (else
-- the run proved nothing). -> log, by (chaos.outcomes)
function chaos.check_reconciled(srv, calls, seed, pinned)
  local log = chaos.log(srv)
  local by, line = chaos.outcomes(calls, log)
  if os.getenv("CHAOS_VERBOSE") then io.stderr:write("\n", chaos.tally(log), "\n", line, "\n") end
  local ok, why = chaos.check(calls, log, seed, nil, { reconcile = true })
  assert(ok, why)
  if not pinned then
    assert(by.reconciled > 0, ("no call was reconciled: the spec proved nothing (seed %d): %s"):format(seed, line))
  end
  return log, by
end

-- The two pinned lookups of a host's reconcile = 0 run, declared with the spec's own `it`:
-- srv() the server, one(name) one call through the host (its marker named by name) -> calls.
function chaos.pinned_lookups(it, srv, seed, one)
  local expect = require "luassert"
  it("created, then reset right after the answer's headers: res.reconciled, the server's case", function()
    chaos.reset(srv())
    chaos.force(srv(), { { answer = "ok", delivery = "trunc_rst", cut = "headers", count = 3 } })
    local calls = one("pin")
    local log = chaos.check_reconciled(srv(), calls, seed, true)
    expect.equal(1, #log)
    assert(calls[1].res, ("not reconciled: %s (seed %d)"):format(tostring(calls[1].err), seed))
    expect.is_true(calls[1].res.reconciled)
    expect.equal(log[1].case_id, calls[1].res.data.id)
    expect.equal(1, #log.reads)
  end)

  it("created, reset, the read answered 500: reconcile = \"lookup failed\"", function()
    chaos.reset(srv())
    chaos.force(srv(), { { answer = "ok", delivery = "rst_now", count = 3 } })
    chaos.config(srv(), { read_force = { "s500" } })
    local calls = one("pin-lf")
    local log = chaos.check_reconciled(srv(), calls, seed, true)
    expect.equal(1, #log)
    expect.is_true(calls[1].err.maybe_created)
    expect.equal("lookup failed", calls[1].err.reconcile)
    expect.equal(500, calls[1].err.lookup.status)
  end)
end

-- How the lookups came out: { reconciled = n, ["not found"] = n, ... } and a line.
function chaos.outcomes(calls, log)
  local by = { reconciled = 0, ["not found"] = 0, ambiguous = 0, ["lookup failed"] = 0 }
  for _, call in ipairs(calls) do
    if type(call.res) == "table" and call.res.reconciled then
      by.reconciled = by.reconciled + 1
    elseif type(call.err) == "table" and call.err.reconcile then
      by[call.err.reconcile] = (by[call.err.reconcile] or 0) + 1
    end
  end
  local chaotic = 0
  for _, r in ipairs(log and log.reads or {}) do if r.chaos then chaotic = chaotic + 1 end end
  return by, ("%d calls: reconciled=%d not found=%d lookup failed=%d ambiguous=%d; %d reads (%d chaotic)")
    :format(#calls, by.reconciled, by["not found"], by["lookup failed"], by.ambiguous,
            log and log.reads and #log.reads or 0, chaotic)
end

-- What the receptions were, counted by delivery: for a summary line.
function chaos.tally(log)
  local n, by = 0, {}
  for _, r in ipairs(log) do
    n = n + 1
    local k = r.delivery == "garbage" and ("garbage(" .. tostring(r.variant) .. ")") or tostring(r.delivery)
    by[k] = (by[k] or 0) + 1
  end
  local keys = {}
  for k in pairs(by) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. by[k] end
  return ("%d receptions: %s"):format(n, table.concat(parts, " "))
end

return chaos
