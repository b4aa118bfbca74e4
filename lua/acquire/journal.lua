--- acquire.journal: create_cases that a kill, a crash or Ctrl-C cannot make create a case twice.
--
--   local journal = require "acquire.journal"
--   local results, stopped = journal.create_cases(client, items, { path = "import.journal" })
--
-- The journal is a file of JSON lines: a header, then one record a step of an item's life,
-- each written whole and fdatasync'd before the batch goes on; the "sent" record before the
-- item's request is handed to libcurl. Run again with the same file and items, it sends only
-- what is not done. The file primitives (exclusive create 0600, no symbolic link, the POSIX
-- record lock, whole appends) are src/journal.c's; this file is the bookkeeping.
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
local STATES = { sent = true, created = true, failed = true, maybe_created = true }
local unpack = table.unpack or unpack
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
-- written. Raises on a bad item, as create_cases would.
local DIGEST_CONFIG = { api_key = "journal", base_url = "http://journal.invalid", strict = false }

local function item_digest(i, item)
  if type(item) ~= "table" then
    error(("bad item #%d: table expected, got %s"):format(i, type(item)), 3)
  end
  local ok, req = pcall(acquire.build_request, item[1], item[2], DIGEST_CONFIG)
  if not ok then error(("bad item #%d: %s"):format(i, tostring(req):gsub("^[^%s:]+:%d+: ", "")), 3) end
  return fnv1a64(req.url:match("contactId=(%d+)$") .. "\n" .. req.body), req.url:match("contactId=(%d+)$")
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

-- Reads the journal's text: its header, the last record of each item (index[i] = record),
-- and how many bytes are whole lines (the rest, a record cut short, is dropped). Never
-- modifies anything. -> header, index, keep | nil, err
local function parse(text, path)
  local nl = text:find("\n", 1, true)
  local ok, header = false, nil
  if nl then ok, header = pcall(cjson.decode, text:sub(1, nl - 1)) end
  if not ok or type(header) ~= "table" or header.journal ~= MAGIC then
    return nil, new_error{ kind = "journal", reason = "not_journal", message = ("journal %s: not a "
      .. "lua-acquire journal (its first line is not one's header): refused, the file is left as it is")
      :format(path) }
  end
  if header.format ~= M.FORMAT then
    return nil, new_error{ kind = "journal", reason = "format", message = ("journal %s: format %s, "
      .. "this lua-acquire reads format %d: refused"):format(path, tostring(header.format), M.FORMAT) }
  end
  local index, keep, pos, lineno = {}, nl, nl + 1, 1
  while pos <= #text do
    local e = text:find("\n", pos, true)
    if not e then break end                               -- cut short: dropped
    lineno = lineno + 1
    local okr, rec = pcall(cjson.decode, text:sub(pos, e - 1))
    local i = okr and type(rec) == "table" and STATES[rec.state] and type(rec.digest) == "string"
      and type(rec.item) == "number" and rec.item >= 1 and rec.item % 1 == 0 and rec.item
    if not i then
      if e < #text then
        return nil, new_error{ kind = "journal", reason = "bad_record", line = lineno, message =
          ("journal %s: line %d is not a journal record: refused, the file is left as it is"):format(path, lineno) }
      end
      break                                               -- the last line, unreadable: cut short
    end
    index[integer(i)] = rec
    keep, pos = e, e + 1
  end
  return header, index, keep
end

-- ---------------------------------------------------------------------

local OWN = { path = true, resend_uncertain = true, journal = true }

--- Creates the cases of `items` as client:create_cases does, recording each item's fate in the
-- journal `opts.path`, and skipping what an earlier run with that journal did.
-- @param client an acquire client
-- @param items { { contactId, opts }, … } as for create_cases
-- @param opts path (required), resend_uncertain, and create_cases' options (concurrency, rate,
--   on_send, on_result, on_progress…), passed through
-- @treturn table results[i] = { res = … } | { err = … }, as create_cases; an item settled by an
--   earlier run has `journal` = its recorded state; an item the batch did not finish has
--   err.kind "stopped"
-- @return nil, or what stopped the batch (a journal write's err, "interrupted!", a hook's error)
-- @treturn[2] nil
-- @treturn[2] table err: the journal is refused (kind "journal", reason: "locked", "symlink",
--   "not_journal", "bad_record", "format", "changed", "gone", "other_input", "io")
function M.create_cases(client, items, opts)
  if type(items) ~= "table" then error("bad argument #2 to 'create_cases' (table expected, got "
    .. type(items) .. ")", 2) end
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

  -- every item's digest (a bad item raises here, before the journal is touched)
  local n = #items
  local digests, contacts, all = {}, {}, {}
  for i = 1, n do
    digests[i], contacts[i] = item_digest(i, items[i])
    all[i] = digests[i]
  end
  local input = fnv1a64(table.concat(all, "\n"))
  all = nil

  local j, created_file, errno, pid = acquire._journal_open(path)
  if not j then
    local reason = pid and "locked" or tostring(created_file):find("symbolic link", 1, true) and "symlink"
      or "io"
    return nil, new_error{ kind = "journal", reason = reason, message = created_file, errno = errno,
      pid = pid ~= 0 and pid or nil }
  end

  local ok, results, stopped = pcall(function()
    -- the header, or what the file says
    local text = assert(j:read())
    local index = {}
    local header, idx, keep
    if not created_file and text ~= "" then
      header, idx, keep = parse(text, path)
      if not header then return nil, idx end
      if next(idx) == nil and header.input ~= input then
        -- no record yet (a run refused before it sent anything: a bad option): nothing to keep
        local okt, terr = j:truncate(0)
        if not okt then return nil, new_error{ kind = "journal", reason = "io", message = terr } end
        text = ""
      end
    end
    if created_file or text == "" then            -- new (or made by a run that died before its header)
      local okw, werr = j:append(encode{ { "journal", MAGIC }, { "format", M.FORMAT },
        { "input", input }, { "items", n } })
      if not okw then return nil, new_error{ kind = "journal", reason = "io", message = werr } end
    else
      index = idx
      local first                                 -- the first item recorded for other content
      for i, rec in pairs(index) do
        if (i > n or rec.digest ~= digests[i]) and (not first or i < first) then first = i end
      end
      if first then
        local gone = first > n
        return nil, new_error{ kind = "journal", reason = gone and "gone" or "changed", item = first,
          message = ("journal %s: written for another input (item %d %s since the journal recorded it): "
            .. "refused, nothing sent"):format(path, first, gone and "is gone" or "changed") }
      end
      if header.input ~= input then
        return nil, new_error{ kind = "journal", reason = "other_input", message = ("journal %s: "
          .. "written for another input (%s items; these %d differ): refused, nothing sent")
          :format(path, tostring(integer(header.items)), n) }
      end
      if keep < #text then                        -- a record cut short: never acknowledged, dropped
        local okt, terr = j:truncate(keep)
        if not okt then return nil, new_error{ kind = "journal", reason = "io", message = terr } end
      end
    end

    -- what is done, what waits for a person, what is sent
    local out, send, list, claimed = {}, {}, {}, {}
    for i = 1, n do
      local rec = index[i]
      if rec and rec.state == "created" then
        out[i] = { res = { data = { id = integer(rec.id), status = rec.case_status }, reconciled = rec.reconciled },
                   journal = "created" }
        if type(rec.id) == "number" then claimed[#claimed + 1] = integer(rec.id) end
      elseif rec and (rec.state == "sent" or rec.state == "maybe_created") and not resend then
        out[i] = { err = new_error{ kind = "uncertain", maybe_created = true, journal = rec.state,
          recorded = rec.error, message = "not sent: the journal says it may have been created ("
            .. (rec.error or "sent, no outcome recorded") .. "); check in Acquire, or send it again "
            .. "with resend_uncertain" }, journal = rec.state }
      else
        send[#send + 1] = i
        list[#send] = items[i]
      end
    end
    index = nil
    if #send == 0 then return out end

    local function record(i, state, more)
      local r = { { "item", i }, { "digest", digests[i] }, { "state", state }, { "contactId", contacts[i] } }
      for _, kv in ipairs(more or {}) do r[#r + 1] = kv end
      return j:append(encode(r))
    end
    local write_failed = nil
    local function must_record(i, state, more)
      local okw, werr = record(i, state, more)
      if not okw then
        write_failed = write_failed or new_error{ kind = "journal", reason = "write", message = werr
          .. ": the batch stopped (nothing more is sent)" }
        error(write_failed, 0)
      end
    end

    -- phase[k]: "sending" while on_send runs, "flight" once the attempt is libcurl's;
    -- recorded[k]: its outcome is in the journal
    local phase, recorded, user = {}, {}, {}
    for k, v in pairs(opts) do if not OWN[k] then user[k] = v end end
    local on_send, on_result = user.on_send, user.on_result
    local copts = {}
    for k, v in pairs(user) do copts[k] = v end
    if #claimed > 0 then copts.claimed = claimed end   -- reconcile never settles with an earlier run's case
    copts.on_send = function(k, attempt)
      phase[k] = "sending"
      local i = send[k]
      if attempt == 1 then must_record(i, "sent") end
      if on_send then on_send(i, attempt) end
      phase[k] = "flight"
    end
    copts.on_result = function(k, res, err)
      local i = send[k]
      out[i] = { res = res, err = err }
      if res then
        local data = type(res.data) == "table" and res.data or {}
        must_record(i, "created", { { "id", data.id }, { "case_status", data.status }, { "reconciled", res.reconciled } })
      else
        must_record(i, err.maybe_created and "maybe_created" or "failed", { { "error", tostring(err) } })
      end
      recorded[k] = true
      if on_result then on_result(i, res, err) end
    end

    local okb, got = pcall(client.create_cases, client, list, copts)
    if okb then
      for k, r in ipairs(got) do out[send[k]] = r end
      return out
    end
    local e = got
    if next(phase) == nil then error(e, 0) end   -- refused before anything was sent: misuse, raised
    if write_failed then e = write_failed end
    -- what the stop leaves: every sent item gets an outcome in the journal (while it takes one)
    local why = type(e) == "string" and e:find("interrupted!$") and "interrupted" or tostring(e)
    for k, i in ipairs(send) do
      if out[i] and not recorded[k] then
        local r = out[i]
        if r.res then
          local data = type(r.res.data) == "table" and r.res.data or {}
          pcall(record, i, "created", { { "id", data.id }, { "case_status", data.status }, { "reconciled", r.res.reconciled } })
        else
          pcall(record, i, r.err.maybe_created and "maybe_created" or "failed", { { "error", tostring(r.err) } })
        end
      elseif not out[i] then
        local inflight = phase[k] == "flight"
        local msg = inflight and ("sent, no answer before the batch stopped (" .. why .. "): the case may have been created")
          or ("not sent: the batch stopped (" .. why .. ")")
        if phase[k] then pcall(record, i, inflight and "maybe_created" or "failed", { { "error", msg } }) end
        out[i] = { err = new_error{ kind = "stopped", maybe_created = inflight, message = msg } }
      end
    end
    return out, e
  end)
  j:close()
  if not ok then error(results, 0) end
  return results, stopped
end

return M
