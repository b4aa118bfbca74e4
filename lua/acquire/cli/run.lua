-- acquire-case's runs: one case, or --batch: items from standard input (lines or CSV, read
-- as they go), results as JSON lines, each when its item finishes. With --journal FILE,
-- create_cases runs through acquire.journal, which records each item's fate and skips what
-- an earlier run did; this file only reports. Part of bin/acquire-case.
local out = require "acquire.cli.output"
local input = require "acquire.cli.input"
local args = require "acquire.cli.args"

local fail, strip_position, is_interrupt = out.fail, out.strip_position, out.is_interrupt
local PROG = out.PROG

local M = {}

local function clock(seconds)
  seconds = math.floor(seconds + 0.5)
  if seconds < 60 then return seconds .. "s" end
  if seconds < 3600 then return ("%dm%02ds"):format(math.floor(seconds / 60), seconds % 60) end
  return ("%dh%02dm"):format(math.floor(seconds / 3600), math.floor(seconds / 60) % 60)
end

-- create_cases without a journal, stopping as acquire.journal does: -> nil, or what
-- stopped the batch (on_result has had the items it left in flight or starting, as
-- err.kind "stopped").
local function plain_batch(client, items, copts)
  local phase, any = {}, false
  local on_send, on_result = copts.on_send, copts.on_result
  local o = {}
  for k, v in pairs(copts) do o[k] = v end
  o.on_send = function(k, attempt)
    phase[k], any = "sending", true
    on_send(k, attempt)
    phase[k] = "flight"
  end
  o.on_result = function(k, res, err)
    on_result(k, res, err)
    phase[k] = nil
  end
  local ok, got = pcall(client.create_cases, client, items, o)
  if ok then return nil end
  if not any then error(got, 0) end                      -- refused before anything was sent
  local why = is_interrupt(got) and "interrupted" or tostring(got)
  local left = {}
  for k in pairs(phase) do left[#left + 1] = k end
  table.sort(left)
  for _, k in ipairs(left) do
    local inflight = phase[k] == "flight"
    on_result(k, nil, { kind = "stopped", maybe_created = inflight, message = inflight
      and "sent, no answer before the batch stopped (" .. why .. "): the case may have been created"
      or "not sent: the batch stopped (" .. why .. ")" })
  end
  return got
end

-- Progress, on a terminal only: done/total, rows a second and an ETA from the rate of the
-- last RECENT seconds (whole seconds: plain Lua has no finer wall clock), errors; one line,
-- written at most once a second (and at the start and the end).
local RECENT = 10
local function progress_line(total_of)
  local tty = os.execute("[ -t 2 ]")
  tty = tty == true or tty == 0
  local samples, shown = {}, nil                  -- samples: { t, done } a second, the last RECENT
  local p = { tty = tty }
  function p.show(done, errors, final)
    if not tty then return end
    local now, total = os.time(), total_of()
    if not total then return end
    if shown == now and not final and done < total then return end
    shown = now
    if samples[#samples] == nil or samples[#samples][1] < now then
      samples[#samples + 1] = { now, done }
      if #samples > RECENT + 1 then table.remove(samples, 1) end
    else
      samples[#samples][2] = done
    end
    local s0 = samples[1]
    local per_s = #samples > 1 and now > s0[1] and (done - s0[2]) / (now - s0[1]) or nil
    io.stderr:write(("\r%d/%d done, %s, %d error%s%s\27[K"):format(done, total,
      per_s and ("%.1f rows/s"):format(per_s) or "- rows/s", errors, errors == 1 and "" or "s",
      per_s and per_s > 0 and done < total and ", ETA " .. clock((total - done) / per_s) or ""))
  end
  return p
end

-- Ctrl-C: lua.c's SIGINT handler sets a hook on the main thread only, and a coroutine created
-- before that keeps its own (none). What runs inside this one (an item's count, its line decided
-- and written) is never cut in two: the stop lands once it hands back. (LuaJIT's hooks are
-- global: there a stop can still land inside, as it can anywhere.)
local function resumer(f, a, b, c, d, e, g)
  while true do f, a, b, c, d, e, g = coroutine.yield(f(a, b, c, d, e, g)) end
end

local function passed(ok, ...)
  if not ok then error((...), 0) end
  return ...
end

local function whole()
  local co = coroutine.create(resumer)
  return function(...)
    if coroutine.status(co) ~= "suspended" then co = coroutine.create(resumer) end
    return passed(coroutine.resume(co, ...))
  end
end

-- ---------------------------------------------------------------------
-- A batch: its input, read twice as it goes (first to check every item: a bad one, exit 2,
-- nothing sent; with --journal, each against its record; then to send), and its results.
-- Nothing is kept per item but while it is in flight.
local Batch = {}
Batch.__index = Batch

local function new_batch(acquire, config, opts, o)
  local b = setmetatable({ acquire = acquire, config = config, opts = opts, o = o,
    key = o.csv and "row" or "line",
    -- meta[i]: item i from when it is drawn, then its result line until that is written.
    -- Ctrl-C raises at any Lua instruction: each step is one store, so a stop finds every
    -- item either drawn or not (the rest of the input is read again from the top), and
    -- its line either decided (meta[i] a string, written after the stop) or not (a table:
    -- "not sent").
    meta = {}, drawn = 0,
    total = nil, checked = nil,                 -- checked: the item the first pass drew last
    count = { created = 0, before = 0, failed = 0, maybe = 0, uncertain = 0, unsent = 0 },
    code = out.OK, done = 0, errors = 0, whole = whole() }, Batch)
  b.fh, b.at = input.input_file()
  b.progress = progress_line(function() return b.total end)
  return b
end

function Batch:check(x)
  return input.check_item(self.acquire, self.config, x.id, x.opts, self.key .. " " .. x.n)
end

-- An iterator over the items; checked: each checked as drawn (exit 2 naming it), else its
-- contact digits are found when its result is written.
function Batch:reader(checked, lazy)
  local o = self.o
  local it = o.csv and input.csv_items(self.acquire, self.config, self.opts, self.fh, self.at)
    or input.line_items(self.opts, self.fh, self.at, lazy)
  if not checked then return it end
  return function()
    local x = it()
    if x then x.contact = self:check(x) end
    return x
  end
end

-- The first pass (with --journal, the journal checks each item): counts them.
function Batch:first_pass()
  local it, c = self:reader(not self.o.journal), 0
  return function()
    local x = it()
    if not x then self.total = c return nil end
    c = c + 1
    self.checked = x
    return { x.id, x.opts }
  end
end

-- The second pass: the items create_cases sends. With --journal, an item is decoded when
-- the journal reads it: a settled one never is.
local TUPLE = { __index = function(t, k)
  local x = rawget(t, "x")
  if k ~= 1 and k ~= 2 then return nil end
  local id, opts = rawget(t, "whole")(function() return x.id, x.opts end)   -- (its decode: whole)
  rawset(t, 1, id) rawset(t, 2, opts)
  return k == 1 and id or opts
end }

function Batch:items()
  local meta, send_it, journal = self.meta, self:reader(false, self.o.journal ~= nil), self.o.journal
  -- an item is read and decoded whole (a Ctrl-C lands before or after, never inside: inside, a
  -- check's pcall could take it for the check's failure, or it left the batch without a summary)
  local drawn_whole = self.whole
  local function draw() local x = send_it() return x, x and not journal and x.id, x and not journal and x.opts end
  return function()
    local x, id, opts = drawn_whole(draw)
    if not x then return nil end
    meta[self.drawn + 1] = x
    self.drawn = self.drawn + 1
    if journal then return setmetatable({ x = x, whole = drawn_whole }, TUPLE) end
    return { id, opts }
  end
end

-- The result of item `it` (fields for out.result_line), counted.
function Batch:result(it, res, err, recorded)
  local r, bucket = { [self.key] = it.n, contactId = it.contact }
  if recorded == "created" then
    bucket = "before"
    local data = type(res.data) == "table" and res.data or {}
    r.ok, r.id, r.case_status, r.journal = true, data.id, data.status, "created"
  elseif recorded then
    bucket = "uncertain"
    r.ok, r.kind, r.maybe_created, r.journal = false, "uncertain", true, recorded
    r.error = "not sent: the journal says it may have been created (" .. (err.recorded or "sent, no outcome "
      .. "recorded") .. "); check in Acquire, or send it again with --resend-uncertain"
    out.say_error(("%s: %s %d (contact %s): may have been created (journal: %s): not sent again; check it in Acquire")
      :format(PROG, self.key, it.n, it.contact, recorded))
  elseif res then
    bucket = "created"
    local data = type(res.data) == "table" and res.data or {}
    r.ok, r.id, r.case_status, r.reconciled = true, data.id, data.status, res.reconciled
  elseif err.kind == "stopped" then
    bucket = err.maybe_created and "maybe" or "unsent"
    r.ok, r.kind, r.error, r.maybe_created = false, "stopped", err.message, err.maybe_created
  else
    bucket = err.maybe_created and "maybe" or "failed"
    r.ok, r.kind, r.http_status, r.type = false, err.kind, err.status, err.type
    r.error, r.maybe_created, r.reconcile = tostring(err), err.maybe_created, err.reconcile
    self.code = math.max(self.code, out.exit_code_for(err))
  end
  return r, bucket
end

-- One result line, written when the item's outcome is known (so not in input order).
function Batch:emit(...)
  return self.whole(self.emit_now, self, ...)
end

function Batch:emit_now(i, res, err, recorded, contact)
  local meta = self.meta
  local it = meta[i]
  if it == nil then return end                  -- written already (a stop reports it again)
  if type(it) == "string" then
    meta[i] = nil
    io.stdout:write(it)
    return
  end
  if not it.contact then it.contact = contact or self:check(it) end
  local r, bucket = self:result(it, res, err, recorded)
  local line, count = out.result_line(r), self.count
  -- counted and decided (a stop writes it) in adjacent stores: under LuaJIT, whose Ctrl-C can
  -- land even here, the window is one instruction; then written: cleared first, so that a
  -- Ctrl-C during the write (whose hook runs as it returns) does not write it twice
  count[bucket] = count[bucket] + 1
  meta[i] = line
  self.done = self.done + 1
  if not res and not recorded then self.errors = self.errors + 1 end
  meta[i] = nil
  io.stdout:write(line)
  if not recorded then io.stdout:flush() end     -- an outcome: now; the journal's: buffered
  self.progress.show(self.done, self.errors)
end

-- create_cases through acquire.journal. -> ok, what stopped the batch (or nil); a refusal
-- of the journal's (a bad item, a changed input, the file) exits here.
function Batch:run_journal(client, copts)
  local o = self.o
  copts.path, copts.resend_uncertain = o.journal, o.resend_uncertain or nil
  copts.precheck = function() return self:first_pass() end
  copts.on_journal = copts.on_result
  local journal = require "acquire.journal"
  local okb, got, e = pcall(journal.create_cases, client, self:items(), copts)
  if not okb then e = got end
  if not okb and self.checked and type(e) == "string" and e:find("^bad item #%d+: ") then
    client:close()
    self:check(self.checked)                    -- says it, exit 2
  end
  if okb and not got then
    client:close()
    if e.reason == "changed" and self.checked then
      fail(out.USAGE, ("--journal %s: %s %d changed since the journal recorded it: not the input it was "
        .. "written for; nothing sent"):format(o.journal, self.key, self.checked.n))
    end
    fail(e.reason == "io" and out.SERVER or out.USAGE, tostring(e):gsub("^journal ", "--journal "))
  end
  return okb, e
end

-- After a stop (e: what stopped it), the lines of what it left: drawn and never started,
-- then the rest of the input, "not sent". -> how the summary names the stop.
function Batch:write_left(e)
  local meta, why = self.meta, is_interrupt(e) and "interrupted" or tostring(e)
  local stopped = why
  if not is_interrupt(e) and not (type(e) == "table" and e.kind == "journal") then
    local what = type(e) == "table" and tostring(e.msg or e.message or stopped) or stopped
    stopped = "internal error: " .. strip_position(what)
  end
  if meta[self.drawn + 1] then self.drawn = self.drawn + 1 end
  local left = {}
  for i in pairs(meta) do left[#left + 1] = i end
  table.sort(left)
  local unsent = { kind = "stopped", maybe_created = false, message = "not sent: the batch stopped (" .. why .. ")" }
  for _, i in ipairs(left) do
    if type(meta[i]) == "string" then
      local line = meta[i]
      meta[i] = nil
      io.stdout:write(line)
    else
      self:emit(i, nil, unsent)
    end
  end
  local rest = self:reader()
  for _ = 1, self.drawn do rest() end
  for x in rest do
    self.drawn = self.drawn + 1
    meta[self.drawn] = x
    self:emit(self.drawn, nil, unsent)
  end
  return stopped
end

-- The summary on stderr (with --journal, or after a stop) and the exit status.
function Batch:finish(stopped)
  local count = self.count
  self.progress.show(self.done, self.errors, true)
  if self.progress.tty then io.stderr:write("\n") end
  if self.o.journal or stopped then
    out.say_error(("%s: %s%d items: %d created, %d already created, %d failed, %d maybe created, "
      .. "%d uncertain (not sent), %d not sent"):format(PROG, stopped and stopped .. ": " or "",
      self.total or self.done, count.created, count.before, count.failed, count.maybe, count.uncertain,
      count.unsent))
  end
  if stopped == "interrupted" then return out.INTERRUPTED end
  if stopped then return out.SERVER end
  if self.code == out.OK and count.uncertain > 0 then return out.UNCERTAIN end
  return self.code
end

-- --batch: -> the exit status.
function M.batch(acquire, config, opts, o)
  local concurrency, rate = args.batch_numbers(o)
  local b = new_batch(acquire, config, opts, o)
  io.stdout:setvbuf("full", 65536)              -- flushed after each outcome (emit)
  local copts = { concurrency = concurrency, rate = rate, on_send = function() end,
    on_result = function(...) return b:emit(...) end }
  local ok, client = pcall(acquire.new, config)
  if not ok then fail(out.USAGE, strip_position(client)) end
  local okb, e
  if o.journal then
    okb, e = b:run_journal(client, copts)
  else
    local first = b:first_pass()
    while first() do end
    b.progress.show(0, 0)
    okb, e = pcall(plain_batch, client, b:items(), copts)
  end
  client:close()
  -- an interrupt that landed inside one of our own error paths (a result line's write, say)
  -- comes back wrapped in fail()'s table: it is still Ctrl-C
  if type(e) == "table" and e.exit and type(e.msg) == "string" and e.msg:find("interrupted!", 1, true) then
    e = "interrupted!"
  end
  -- Ctrl-C outside the batch's own catch, after the outcome of every item drawn (the journal's
  -- last sync, say): the stop gets its summary like any other, the input never drawn "not sent".
  -- (Before anything was sent, done = 0: just "interrupted".)
  if not okb and is_interrupt(e) and b.done > 0 and next(b.meta) == nil then okb = true end
  if not okb then
    if b.progress.tty then io.stderr:write("\n") end
    if type(e) == "table" and e.exit then error(e, 0) end
    if is_interrupt(e) then fail(out.INTERRUPTED, "interrupted") end
    fail(out.USAGE, strip_position(e))           -- misuse the module refused (--rate…), nothing sent
  end
  return b:finish(e ~= nil and b:write_left(e) or nil)
end

-- One case: -> the exit status. Misuse (bad configuration, contact id or field) raises
-- before anything is sent; the network and the API answer with nil, err.
function M.one(acquire, config, opts, o)
  local ok, res, err = pcall(function()
    local client = acquire.new(config)
    local r, e = client:create_case(o.contact_id, opts)   -- not a tail call: keeps the name in messages
    client:close()
    return r, e
  end)
  if not ok then fail(out.USAGE, strip_position(res)) end
  if not res then
    local msg = tostring(err)
    if type(err) == "table" and err.maybe_created then
      msg = msg .. " (the case may have been created: look before trying again)"
    end
    fail(out.exit_code_for(err), msg)
  end
  if o.output == "summary" then out.summary(res) else out.print_json(res) end
  return out.OK
end

return M
