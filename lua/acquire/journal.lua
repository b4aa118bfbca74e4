--- acquire.journal: create_cases that a kill, a crash or Ctrl-C cannot make create a case twice.
--
--   local journal = require "acquire.journal"
--   local results, stopped = journal.create_cases(client, items, { path = "import.journal" })
--
-- The journal is a file of JSON lines: a header, then one record a step of an item's life,
-- each written whole; the "sent" record before the item's request is handed to libcurl, and on
-- disk before it can leave (fdatasync'd in on_wave, or ahead of it by the journal's thread for
-- the next `lookahead` items, on_wave waiting for that flush to have ended). Items may be a
-- table or an iterator (nothing kept per finished item). Run again with the same file and
-- items, it sends only what is not done. The file primitives (exclusive create 0600, no
-- symbolic link, the POSIX record lock, whole appends, the one-pass index, the records' format,
-- the digests, the flushing thread) are src/journal.c's; this file is the bookkeeping.
--
-- States (an item's last record):
--   sent           its request may have left; no outcome recorded     uncertain: not sent again
--   created        "id", "case_status", "reconciled"                   skipped, its result returned
--   failed         a definitive failure, nothing created ("error")     sent again
--   maybe_created  the request may have reached Acquire ("error")      uncertain: not sent again
-- An uncertain item is sent again only with resend_uncertain = true.
local acquire = require "acquire"
local cjson_mod = require "cjson"

local M = { FORMAT = 1 }

local MAGIC = "lua-acquire"
local cjson = cjson_mod.new and cjson_mod.new() or cjson_mod

-- ---------------------------------------------------------------------
-- Errors that are not misuse: a table with a message, tostring gives it.

local Error = {}
Error.__index = Error
Error.__tostring = function(e) return e.message end

local function new_error(t)
  return setmetatable(t, Error)
end

-- ---------------------------------------------------------------------
-- FNV-1a 64 of s, 16 hex digits: what identifies an item, and the input. Computed in four
-- 16-bit limbs, so that every Lua gets the same digits (5.1 and LuaJIT have no 64-bit
-- integers, 5.1 no bit operators).
local XOR4 = {}                      -- XOR4[a * 16 + b] = a xor b, for nibbles
for a = 0, 15 do
  for b = 0, 15 do
    local x, bit, aa, bb = 0, 1, a, b
    for _ = 1, 4 do
      if aa % 2 ~= bb % 2 then x = x + bit end
      aa, bb, bit = (aa - aa % 2) / 2, (bb - bb % 2) / 2, bit * 2
    end
    XOR4[a * 16 + b] = x
  end
end

-- (the journal's own digests are src/journal.c's j:fnv, the same digits; this one is for a
-- script that has no journal open)
local function fnv1a64(s)
  local floor = math.floor
  local a0, a1, a2, a3 = 0x2325, 0x8422, 0x9ce4, 0xcbf2         -- the offset basis, cbf29ce484222325
  for i = 1, #s do
    local b, lo = s:byte(i), a0 % 256
    a0 = a0 - lo + XOR4[floor(lo / 16) * 16 + floor(b / 16)] * 16 + XOR4[lo % 16 * 16 + b % 16]
    -- times the prime, 2^40 + 0x1b3, modulo 2^64
    local r0 = a0 * 0x1b3
    local r1 = a1 * 0x1b3 + floor(r0 / 65536)
    local t = a0 * 256
    local r2 = a2 * 0x1b3 + t % 65536 + floor(r1 / 65536)
    local r3 = a3 * 0x1b3 + floor(t / 65536) + a1 * 256 % 65536 + floor(r2 / 65536)
    a0, a1, a2, a3 = r0 % 65536, r1 % 65536, r2 % 65536, r3 % 65536
  end
  return string.format("%04x%04x%04x%04x", a3, a2, a1, a0)
end
M.fnv1a64 = fnv1a64

-- An item's digest: of the request it makes (the contact's digits and the body's bytes, as
-- acquire.build_request encodes them), so the same request is the same item however it was
-- written: src/journal.c's j:digest, which encodes the body and nothing else. Raises on a bad
-- item, as create_cases would, with its message.
local DIGEST_CONFIG = { api_key = "journal", base_url = "http://journal.invalid", strict = false }

local function bad_item(i, msg)
  msg = tostring(msg):gsub("^[^%s:]+:%d+: ", ""):gsub("^bad argument #%d+ to '[^']*' %((.*)%)$", "%1")
  error(("bad item #%d: %s"):format(i, msg), 0)
end

-- (a table's items are checked before the journal is opened: by build_request)
local function check_item(i, item)
  if type(item) ~= "table" then
    error(("bad item #%d: table expected, got %s"):format(i, type(item)), 0)
  end
  local ok, req = pcall(acquire.build_request, item[1], item[2], DIGEST_CONFIG)
  if not ok then bad_item(i, req) end
end


-- ---------------------------------------------------------------------
-- Records: JSON objects from { { key, value } } pairs, in that order, nil values left out;
-- integers in all their digits (lua-cjson would round past 14).

local function number_text(v)
  if math.type and math.type(v) == "integer" then return string.format("%d", v) end
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  if v == math.floor(v) and v > -2^63 and v < 2^63 then return string.format("%.0f", v) end
  return string.format("%.17g", v)
end

local function encode(list)
  local parts = {}
  for _, kv in ipairs(list) do
    local v, text = kv[2], nil
    if type(v) == "number" then text = number_text(v)
    elseif type(v) == "string" then text = cjson.encode(v)
    elseif type(v) == "boolean" then text = tostring(v) end
    if text then parts[#parts + 1] = cjson.encode(kv[1]) .. ":" .. text end
  end
  return "{" .. table.concat(parts, ",") .. "}\n"
end

local function integer(v)
  if type(v) == "number" and math.tointeger then return math.tointeger(v) or v end
  return v
end

-- The journal's file, read in one pass by src/journal.c (j:scan): the header, and an index of
-- each item's last record (a state, a digest and where it is: 17 bytes an item); a record's
-- other keys are read from the file when asked for (j:record). Never modifies anything.
-- -> header, keep (the bytes that are whole records), last (the highest item recorded) | nil, err
local function scan(j, path)
  local text, keep, last, size = j:scan()
  if text == nil then
    if size then                                   -- a bad record: (nil, msg, errno, line)
      return nil, new_error{ kind = "journal", reason = "bad_record", line = size, message = keep }
    end
    return nil, new_error{ kind = "journal", reason = "io", message = keep }
  end
  if size == 0 then return false, 0, 0, 0 end
  local ok, header = false, nil
  if text then ok, header = pcall(cjson.decode, text) end
  if not ok or type(header) ~= "table" or header.journal ~= MAGIC then
    return nil, new_error{ kind = "journal", reason = "not_journal", message = ("journal %s: not a "
      .. "lua-acquire journal (its first line is not one's header): refused, the file is left as it is")
      :format(path) }
  end
  if header.format ~= M.FORMAT then
    return nil, new_error{ kind = "journal", reason = "format", message = ("journal %s: format %s, "
      .. "this lua-acquire reads format %d: refused"):format(path, tostring(header.format), M.FORMAT) }
  end
  return header, keep, last, size
end

-- ---------------------------------------------------------------------

local OWN = { path = true, resend_uncertain = true, journal = true, precheck = true, on_journal = true,
              lookahead = true }
local SYNC_EVERY = 1024          -- outcomes written between two fdatasyncs at most

local function table_iterator(items)
  local i, n = 0, #items
  return function()
    i = i + 1
    if i <= n then return items[i] end
  end
end

--- Creates the cases of `items` as client:create_cases does, recording each item's fate in the
-- journal `opts.path`, and skipping what an earlier run with that journal did.
-- @param client an acquire client
-- @param items { { contactId, opts }, … } as for create_cases, or an iterator: a function
--   returning the next item, nil at the end (read as the batch goes; nothing kept per item)
-- @param opts path (required), resend_uncertain, precheck (with an iterator: a function
--   returning another iterator over the same items, drawn to the end first to check them
--   against the journal, and the input's digest against its header, before anything is sent;
--   then `items` is drawn to send), and create_cases' options (concurrency, rate,
--   on_send, on_wave, on_result, on_progress…), passed through; on_journal(i, res, err, state,
--   contact) gets each item an earlier run settled (not sent: state "created", "sent",
--   "maybe_created"; contact: the digits its record names)
-- @treturn table with a table: results[i] = { res = … } | { err = … }, as create_cases; an item
--   settled by an earlier run has `journal` = its recorded state; an item the batch did not
--   finish has err.kind "stopped". With an iterator: counts { total, created, failed,
--   uncertain (this run's), journal_created, journal_uncertain (settled earlier, not sent),
--   stopped }
-- @return nil, or what stopped the batch (a journal write's err, "interrupted!", a hook's error,
--   an item changed since the journal recorded it: reason "changed")
-- @treturn[2] nil
-- @treturn[2] table err: the journal is refused (kind "journal", reason: "locked", "symlink",
--   "not_journal", "bad_record", "format", "changed", "gone", "other_input", "io")
function M.create_cases(client, items, opts)
  local tabled = type(items) == "table"
  if not tabled and type(items) ~= "function" then error("bad argument #2 to 'create_cases' (table or "
    .. "function expected, got " .. type(items) .. ")", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #3 to 'create_cases' (table expected, got "
    .. type(opts) .. ")", 2) end
  local path = opts.path
  if type(path) ~= "string" or path == "" then
    error("bad option 'path' (the journal's file name expected, got " .. type(path) .. ")", 2)
  end
  local resend = opts.resend_uncertain
  if resend ~= nil and type(resend) ~= "boolean" then
    error("bad option 'resend_uncertain' (boolean expected, got " .. type(resend) .. ")", 2)
  end
  if opts.on_journal ~= nil and type(opts.on_journal) ~= "function" then
    error("bad option 'on_journal' (function expected, got " .. type(opts.on_journal) .. ")", 2)
  end
  local lookahead = opts.lookahead
  if lookahead == nil then
    local c = tonumber(opts.concurrency) or 8
    lookahead = 4 * math.max(1, math.min(64, math.floor(c)))
  elseif type(lookahead) ~= "number" or lookahead < 0 or lookahead > 4096 or lookahead % 1 ~= 0 then
    error("bad option 'lookahead' (an integer from 0 to 4096 expected, got " .. tostring(lookahead) .. ")", 2)
  end
  local precheck = opts.precheck
  if precheck ~= nil and (tabled or type(precheck) ~= "function") then
    error("bad option 'precheck' (" .. (tabled and "only with an iterator" or "a function expected, got "
      .. type(precheck)) .. ")", 2)
  end
  if tabled then precheck = function() return table_iterator(items) end end
  if tabled then                                  -- a bad item raises before the journal is touched
    for i = 1, #items do check_item(i, items[i]) end
  end

  local j, created_file, errno, pid = acquire._journal_open(path)
  if not j then
    local reason = pid and "locked" or tostring(created_file):find("symbolic link", 1, true) and "symlink"
      or "io"
    return nil, new_error{ kind = "journal", reason = reason, message = created_file, errno = errno,
      pid = pid ~= 0 and pid or nil }
  end

  local wrote = false                             -- anything appended by this run
  local ok, results, stopped = pcall(function()
    -- -> digest, contact digits (fold: the digest goes into the input's too)
    local digest = j.digest
    local function digest_of(i, item, fold)
      if type(item) ~= "table" then
        error(("bad item #%d: table expected, got %s"):format(i, type(item)), 0)
      end
      local ok, d, contact = pcall(digest, j, item[1], item[2], fold)
      if not ok then bad_item(i, d) end
      return d, contact
    end

    -- the header, or what the file says
    local header, keep, last, size = scan(j, path)
    if header == nil then return nil, keep end
    local records = header and last > 0
    local indexed = records and last or 0          -- items past it have no record

    -- a full first pass (a table's, or precheck's): every item checked against its record, the
    -- input's digest (FNV-1a over the items' digests, LF between them) and count
    local input, n
    local prechecked = precheck ~= nil
    if precheck then
      local it, pos = precheck(), 0
      for item in it do
        pos = pos + 1
        local d = digest_of(pos, item, true)
        local state, rd
        if pos <= indexed then state, rd = j:item(pos) end
        if state and rd ~= d then
          return nil, new_error{ kind = "journal", reason = "changed", item = pos,
            message = ("journal %s: written for another input (item %d changed since the journal "
              .. "recorded it): refused, nothing sent"):format(path, pos) }
        end
      end
      n, input = pos, j:input()
      for i = n + 1, records and last or 0 do
        if j:item(i) then
          return nil, new_error{ kind = "journal", reason = "gone", item = i,
            message = ("journal %s: written for another input (item %d is gone since the journal "
              .. "recorded it): refused, nothing sent"):format(path, i) }
        end
      end
    end

    if header and not records and header.input ~= input then
      -- no record yet (a run refused before it sent anything: a bad option): nothing to keep
      local okt, terr = j:truncate(0)
      if not okt then return nil, new_error{ kind = "journal", reason = "io", message = terr } end
      header = false
    end
    if not header then                            -- new (or made by a run that died before its header)
      wrote = true
      local okw, werr = j:append(encode{ { "journal", MAGIC }, { "format", M.FORMAT },
        { "input", input }, { "items", n } })
      if not okw then return nil, new_error{ kind = "journal", reason = "io", message = werr } end
    else
      if input and header.input and header.input ~= input then
        return nil, new_error{ kind = "journal", reason = "other_input", message = ("journal %s: "
          .. "written for another input (%s items; these %d differ): refused, nothing sent")
          :format(path, tostring(integer(header.items)), n) }
      end
      if keep < size then                -- a record cut short: never acknowledged, dropped
        local okt, terr = j:truncate(keep)
        if not okt then return nil, new_error{ kind = "journal", reason = "io", message = terr } end
      end
    end

    -- the run: the items drawn one at a time; live[k] = the k-th item handed to create_cases
    local user = {}
    for k, v in pairs(opts) do if not OWN[k] then user[k] = v end end
    local on_send, on_result, on_wave = user.on_send, user.on_result, user.on_wave
    local out = tabled and {} or nil
    local count = { total = 0, created = 0, failed = 0, uncertain = 0, journal_created = 0,
                    journal_uncertain = 0, stopped = 0 }
    local live, wave, nwave = {}, {}, 0
    local unsynced = 0
    local write_failed, changed = nil, nil
    local src = tabled and table_iterator(items) or items
    local pos, k = 0, 0

    local on_journal = opts.on_journal
    local function deliver(i, res, err, recorded, contact)
      if out then out[i] = { res = res, err = err, journal = recorded } end
      if recorded then
        if on_journal then on_journal(i, res, err, recorded, contact) end
      elseif on_result then on_result(i, res, err) end
    end
    local function fail_write(werr)
      write_failed = write_failed or new_error{ kind = "journal", reason = "write", message = werr
        .. ": the batch stopped (nothing more is sent)" }
      error(write_failed, 0)
    end
    -- A record (src/journal.c's j:put formats it: item, digest, state and contactId first, where
    -- the index reads them, then the state's keys), kept in memory until the next j:write or
    -- j:sync: on_wave writes a wave's in one write(2) (and fdatasyncs them when a "sent" one is
    -- among them) before any of its requests can leave.
    local put = j.put
    local NODATA = {}
    local function outcome(it, res, err)
      if res then
        local data = type(res.data) == "table" and res.data or NODATA
        return put(j, it.i, it.d, it.c, "created", data.id, data.status, res.reconciled)
      end
      return put(j, it.i, it.d, it.c, err.maybe_created and "maybe_created" or "failed", tostring(err))
    end
    local function sync()
      local oks, serr = j:sync()
      if not oks then fail_write(serr) end
      unsynced = 0
    end

    -- the next item to send, reporting those an earlier run settled: an entry { i, d, c, item }
    -- (c: the contact's digits), or nil at the end
    local function next_to_send()
      while true do
        local item = src()
        if item == nil then return nil end
        pos = pos + 1
        count.total = count.total + 1
        local i = pos
        local state, rd
        if i <= indexed then state, rd = j:item(i) end
        local d, contact
        -- after a first pass, an item the journal settled needs no digest: it was compared there
        local settled = state == "created" or not resend and (state == "sent" or state == "maybe_created")
        if not (prechecked and settled) then
          d, contact = digest_of(i, item)
        end
        if state and d and rd ~= d then           -- only without a first pass
          changed = new_error{ kind = "journal", reason = "changed", item = i, message = ("journal %s: "
            .. "item %d changed since the journal recorded it: the batch stopped there (nothing more is "
            .. "sent)"):format(path, i) }
          error(changed, 0)
        end
        if state == "created" then
          local rec = cjson.decode(j:record(i))
          count.journal_created = count.journal_created + 1
          deliver(i, { data = { id = integer(rec.id), status = rec.case_status }, reconciled = rec.reconciled },
            nil, "created", rec.contactId)
        elseif (state == "sent" or state == "maybe_created") and not resend then
          local rec = cjson.decode(j:record(i))
          count.journal_uncertain = count.journal_uncertain + 1
          deliver(i, nil, new_error{ kind = "uncertain", maybe_created = true, journal = state,
            recorded = rec.error, message = "not sent: the journal says it may have been created ("
              .. (rec.error or "sent, no outcome recorded") .. "); check in Acquire, or send it again "
              .. "with resend_uncertain" }, state, rec.contactId)
        else
          return { i = i, d = d, c = contact, item = item }
        end
      end
    end

    -- Lookahead: the items whose "sent" records were written before create_cases draws them
    -- (ahead[a1..a2]), and fdatasync'd with an earlier wave's (e.ticket nil) or by the
    -- journal's thread (e.ticket: j:wait(e.ticket) before the item's first attempt can send);
    -- their start needs no flush of its own. A stop records them "failed" (not sent); a crash
    -- leaves them uncertain, as the ones in flight.
    local ahead, a1, a2 = {}, 1, 0
    -- the next items' "sent" records written, up to `lookahead` ahead -> the first new one's
    -- place in ahead (a2 + 1 when none)
    local function fill()
      local first = a2 + 1
      while a2 - a1 + 1 < lookahead do
        local e = next_to_send()
        if not e then break end
        local okw, werr = put(j, e.i, e.d, e.c, "sent")
        if not okw then fail_write(werr) end
        e.durable = true
        a2 = a2 + 1
        ahead[a2] = e
      end
      return first
    end
    local function draw()
      local e
      if a1 <= a2 then
        e = ahead[a1]
        ahead[a1] = nil
        a1 = a1 + 1
      else
        e = next_to_send()
        if not e then return nil end
      end
      live[k + 1] = e
      k = k + 1
      return e.item
    end

    local copts = {}
    for key, v in pairs(user) do copts[key] = v end
    -- phase: "sending" while on_send runs and until its wave is on disk; "flight" after
    local need = false                            -- a "sent" record not on disk yet
    copts.on_send = function(kk, attempt)
      local it = live[kk]
      it.phase = "sending"
      if attempt == 1 and not it.durable then
        local okw, werr = put(j, it.i, it.d, it.c, "sent")
        if not okw then fail_write(werr) end
        it.durable, need = true, true
      end
      if on_send then on_send(it.i, attempt) end
      nwave = nwave + 1
      wave[nwave] = it
    end
    -- once a loop turn, before any attempt of it can send: a "sent" record written in on_send
    -- reaches the disk in one fdatasync here, with the next `lookahead` items' (and the outcomes
    -- written since); the wave's items drawn from the lookahead wait for their ticket (done
    -- already, most often). The lookahead is refilled as it is drawn, the new items' records
    -- written and fdatasync'd by the journal's thread while the batch goes on.
    local half, quarter = lookahead / 2, math.max(1, math.floor(lookahead / 4))
    local flushing = 0                            -- the ticket of the thread's last flush
    copts.on_wave = function(nn)
      if need then
        fill()
        sync()
        need = false
      else
        local t = 0
        for x = 1, nwave do
          local tk = wave[x].ticket
          if tk and tk > t then t = tk end
        end
        if t > 0 then
          local okw, werr = j:wait(t)
          if not okw then fail_write(werr) end
        end
      end
      -- refilled as soon as the thread's last flush has ended (so the lookahead stays about
      -- full and the thread busy, a flush for what was drawn meanwhile), a quarter at least; or
      -- at once when half of it is drawn
      local room = lookahead - (a2 - a1 + 1)
      local first = a2 + 1
      if room > 0 and (room > half or room >= quarter and j:synced() >= flushing) then first = fill() end
      if first <= a2 then
        local t, werr = j:sync_async()
        if not t then fail_write(werr) end
        flushing = t
        for x = first, a2 do ahead[x].ticket = t end
      else                                        -- the outcomes put since: to the kernel
        local okw, werr = j:write()
        if not okw then fail_write(werr) end
      end
      for x = 1, nwave do
        local it = wave[x]
        it.phase = "flight"
        wave[x] = nil
      end
      nwave = 0
      if on_wave then on_wave(nn) end
    end
    -- An item leaves `live` once delivered: a stop (Ctrl-C raises at any Lua instruction)
    -- delivers what it finds there again, with the outcome kept in it (it.done) once recorded, else
    -- as stopped (a stop between the record and it.done records maybe_created after it:
    -- uncertain, never forgotten).
    copts.on_result = function(kk, res, err)
      local it = live[kk]
      local okw, werr = outcome(it, res, err)
      if not okw then fail_write(werr) end
      it.res, it.err, it.done = res, err, true
      unsynced = unsynced + 1
      if res then count.created = count.created + 1
      elseif err.maybe_created then count.uncertain = count.uncertain + 1
      else count.failed = count.failed + 1 end
      deliver(it.i, res, err)
      live[kk] = nil
      if unsynced >= SYNC_EVERY then                -- outcomes: no request waits for them
        local t, serr = j:sync_async()
        if not t then fail_write(serr) end
        unsynced = 0
      end
    end

    -- once a loop turn after its on_result calls: the outcomes they put, to the kernel (a kill
    -- then loses none but the turn's own)
    local user_progress = user.on_progress
    copts.on_progress = function(...)
      local okw, werr = j:write()
      if not okw then fail_write(werr) end
      if user_progress then return user_progress(...) end
    end

    local function finish(e)
      pcall(j.sync, j)
      if out then
        for i = 1, #items do
          if not out[i] then out[i] = { err = new_error{ kind = "stopped", maybe_created = false,
            message = "not sent: the batch stopped (" .. tostring(e) .. ")" } } end
        end
        return out, e
      end
      return count, e
    end

    -- nothing left to send: no batch at all (a finished journal re-runs in one read of it and
    -- of the input)
    local okd, first = pcall(draw)
    if not okd then
      if changed then return finish(changed) end
      error(first, 0)
    end
    if first == nil then return finish(nil) end
    local claimed = j:claimed()
    if #claimed > 0 then copts.claimed = claimed end  -- reconcile never settles with an earlier run's case
    local given = false
    local function feed()
      if not given then given = true return first end
      return draw()
    end

    local okb, got = pcall(client.create_cases, client, feed, copts)
    if okb then
      local okf, ferr = j:sync()
      if not okf then return finish(new_error{ kind = "journal", reason = "write", message = ferr }) end
      return finish(nil)
    end
    local e = got
    local any = false
    for _, it in pairs(live) do if it.phase then any = true end end
    if not any and count.created + count.failed + count.uncertain == 0 and not changed and not write_failed then
      pcall(j.sync, j)
      error(e, 0)                                -- refused before anything was sent: misuse, raised
    end
    if write_failed then e = write_failed elseif changed then e = changed end
    -- what the stop leaves: every item drawn and unfinished gets an outcome (while the journal
    -- takes one)
    local why = type(e) == "string" and e:find("interrupted!$") and "interrupted" or tostring(e)
    local left = {}
    for _, it in pairs(live) do left[#left + 1] = it end
    for x = a1, a2 do left[#left + 1] = ahead[x] end
    table.sort(left, function(a, b) return a.i < b.i end)
    for _, it in ipairs(left) do
      if it.done then
        pcall(deliver, it.i, it.res, it.err)
      else
        local inflight = it.phase == "flight"
        local msg = inflight
          and ("sent, no answer before the batch stopped (" .. why .. "): the case may have been created")
          or ("not sent: the batch stopped (" .. why .. ")")
        if it.phase or it.durable then
          pcall(put, j, it.i, it.d, it.c, inflight and "maybe_created" or "failed", msg)
        end
        count.stopped = count.stopped + 1
        pcall(deliver, it.i, nil, new_error{ kind = "stopped", maybe_created = inflight, message = msg })
      end
    end
    return finish(e)
  end)
  if not ok and created_file and not wrote then os.remove(path) end   -- a bad item: as if never opened
  j:close()
  if not ok then error(results, 0) end
  return results, stopped
end

return M
