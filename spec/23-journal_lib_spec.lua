-- acquire.journal: create_cases with a journal, as a library (bin/acquire-case --journal is one of
-- its users). Its promises, each against the local Acquire server's own log: one run at a time
-- (a POSIX lock naming its holder), no request before its "sent" record is whole on disk (short
-- writes for real, under ulimit -f), a journal is created new 0600, never through a symbolic
-- link, and a file that is not this input's journal is never modified.
--
-- The short-write generator is seeded: SPEC_SEED=S repeats a run; the seed is in every failure.
local cjson = require "cjson"
local helper = require "spec.helper"
local socket = require "socket"
local acquire = require "acquire"
local journal = require "acquire.journal"

local contains = helper.contains

local LUA_ENV = { LUA_CPATH = "./?.so;;", LUA_PATH = "./?.lua;./lua/?.lua;;" }

-- Items 1..n: { 597752, { title = "item N" } }; those in `missing` name contact 1 (404).
local function items(n, missing)
  local t = {}
  for i = 1, n do t[i] = { missing and missing[i] and 1 or 597752, { title = "item " .. i } } end
  return t
end

local requests_by_item, cases_by_item = helper.requests_by_item, helper.cases_by_item

-- The journal's lines, decoded: header, { record, … } (every line must be whole).
local function read_journal(path)
  local text = helper.slurp(path)
  local list = {}
  for line in text:gmatch("([^\n]*)\n") do list[#list + 1] = cjson.decode(line) end
  return table.remove(list, 1), list, text
end

local function mode(path)
  return helper.sh("stat -c %a " .. helper.shell_quote(path)):match("%d+")
end

describe("acquire.journal", function()
  local srv = helper.server()
  local client, tmp

  before_each(function()
    srv:config{ unique_ids = true }          -- each create answers its own case's id
    client = acquire.new{ base_url = srv.base_url, api_key = srv.key }
    tmp = helper.tmpdir()
  end)

  after_each(function()
    client:close()
    helper.rmrf(tmp)
  end)

  it("creates each item once across runs; returns create_cases' shape, earlier runs' items marked", function()
    local path = tmp .. "/j"
    local list = items(3, { [2] = true })
    local results, stopped = journal.create_cases(client, list, { path = path, concurrency = 2 })
    assert.is_nil(stopped)
    assert.equal(3, #results)
    assert.is_number(results[1].res.data.id)
    assert.same({ "http", 404, false }, { results[2].err.kind, results[2].err.status, results[2].err.maybe_created })
    assert.is_nil(results[1].journal)
    assert.equal("600", mode(path))
    local header, recs = read_journal(path)
    assert.same({ "lua-acquire", 1, 3 }, { header.journal, header.format, header.items })
    assert.matches("^%x+$", header.input)
    assert.equal(6, #recs)                                       -- sent, then the outcome, each

    local again = journal.create_cases(client, list, { path = path })
    assert.same({ "created", results[1].res.data.id }, { again[1].journal, again[1].res.data.id })
    assert.same({ "created", results[3].res.data.id }, { again[3].journal, again[3].res.data.id })
    assert.same({ nil, 404 }, { again[2].journal, again[2].err.status })   -- failed: sent again
    assert.same({ 1, 2, 1 }, { requests_by_item(srv)[1], requests_by_item(srv)[2], requests_by_item(srv)[3] })
    local delivered = {}
    journal.create_cases(client, list, { path = path, on_result = function(i) delivered[#delivered + 1] = i end })
    assert.same({ 2 }, delivered)                                -- hooks see the item's own index
  end)

  it("leaves uncertain items to a person unless resend_uncertain", function()
    srv:fault{ action = "reset", create = true, times = 1 }      -- stored, the answer lost
    local path = tmp .. "/j"
    local list = items(2)
    local results = journal.create_cases(client, list, { path = path, concurrency = 1 })
    assert.is_true(results[1].err.maybe_created)
    local again = journal.create_cases(client, list, { path = path })
    assert.same({ "maybe_created", "uncertain", true }, { again[1].journal, again[1].err.kind, again[1].err.maybe_created })
    contains(tostring(again[1].err), "not sent: the journal says it may have been created")
    assert.equal(1, requests_by_item(srv)[1])
    again = journal.create_cases(client, list, { path = path, resend_uncertain = true })
    assert.is_table(again[1].res)
    assert.equal(2, requests_by_item(srv)[1])
  end)

  it("refuses misuse: no path, a bad item, before the journal exists", function()
    local path = tmp .. "/j"
    helper.raises(function() journal.create_cases(client, items(1), {}) end, "bad option 'path'")
    helper.raises(function() journal.create_cases(client, { { 597752 }, { "x" } }, { path = path }) end,
      "bad item #2")
    helper.raises(function() journal.create_cases(client, items(1), { path = path, resend_uncertain = 1 }) end,
      "bad option 'resend_uncertain'")
    assert.is_false(helper.exists(path))
    helper.raises(function() journal.create_cases(client, items(1), { path = path, bogus = 1 }) end, "bogus")
    assert.same({}, srv:requests())
    -- that run left a journal with no record: the corrected input takes it over
    local results = journal.create_cases(client, items(2), { path = path })
    assert.is_table(results[2].res)
  end)

  it("never modifies a file that is not this input's journal, nor opens one through a symlink", function()
    local function refused(path, reason, what)
      local before = helper.exists(path) and helper.read_file(path)
      local res, err = journal.create_cases(client, items(2), { path = path })
      assert.is_nil(res, what)
      assert.same({ "journal", reason }, { err.kind, err.reason }, what .. ": " .. tostring(err))
      if before then assert.equal(before, helper.read_file(path), what .. ": the file changed") end
      return err
    end
    for _, text in ipairs({ "one line\n", "one line, no newline", "two\nlines\n", '{"journal":"other"}\n',
                            "\n", '{"journal":"lua-acquire","format":1,"input":"x"}' }) do
      local path = tmp .. "/f"
      helper.write_file(path, text)
      contains(tostring(refused(path, "not_journal", ("%q"):format(text))), "not a lua-acquire journal")
    end
    -- another input's journal
    local path = tmp .. "/j"
    assert.equal(3, #journal.create_cases(client, items(3), { path = path }))
    local sent = #srv:requests()
    local list = items(3)
    list[2][2].title = "changed"
    local res, err = journal.create_cases(client, list, { path = path })
    assert.is_nil(res)
    assert.same({ "changed", 2 }, { err.reason, err.item })
    assert.same({ "gone", 3 }, { select(2, journal.create_cases(client, items(2), { path = path })).reason,
      select(2, journal.create_cases(client, items(2), { path = path })).item })
    local _, other = journal.create_cases(client, items(4), { path = path })    -- an item added
    assert.equal("other_input", other.reason)
    contains(tostring(other), "written for another input (3 items; these 4 differ)")
    assert.equal(sent, #srv:requests())
    -- a symbolic link, to a journal or to nothing
    os.execute(("ln -s j %s/link && ln -s nowhere %s/dangling"):format(tmp, tmp))
    contains(tostring(refused(tmp .. "/link", "symlink", "a link to a journal")), "symbolic link")
    refused(tmp .. "/dangling", "symlink", "a dangling link")
    assert.is_false(helper.exists(tmp .. "/nowhere"))
    assert.equal(sent, #srv:requests())
  end)

  it("a second run on a locked journal is refused at once, naming the holder's pid; nothing sent", function()
    local path = tmp .. "/j"
    local script = helper.tmpfile(([[
      local socket = require "socket"
      local j = assert(require("acquire")._journal_open(%q))
      io.stdout:write("locked\n") io.stdout:flush()
      for _ = 1, 2000 do
        if io.open(%q) then break end
        socket.sleep(0.01)
      end
      j:close()
    ]]):format(path, tmp .. "/release"))
    local child = helper.spawn({ helper.interpreter(), script }, { env = LUA_ENV })
    local ok, err = pcall(function()
      for _ = 1, 2000 do
        if helper.slurp(child.dir .. "/out"):find("locked") then break end
        socket.sleep(0.01)
      end
      local res, e = journal.create_cases(client, items(3), { path = path })
      assert.is_nil(res)
      assert.same({ "journal", "locked", child.pid }, { e.kind, e.reason, e.pid })
      contains(tostring(e), ("journal %s is in use by process %d"):format(path, child.pid))
      assert.same({}, srv:requests())
    end)
    helper.write_file(tmp .. "/release", "")
    child.wait()
    os.remove(script)
    assert(ok, err)
    assert.equal(3, #journal.create_cases(client, items(3), { path = path }))   -- released: it runs
  end)

  it("a journal is opened once per process: a second open is refused, and the lock still holds", function()
    local path = tmp .. "/j"
    local inner, other
    journal.create_cases(client, items(2), { path = path, concurrency = 1, on_result = function(i)
      if i ~= 1 then return end
      local res, err = journal.create_cases(client, items(2), { path = path })
      inner = { res, err }
      local code, out = helper.run_lua(([[print(require("acquire")._journal_open(%q))]]):format(path), { env = LUA_ENV })
      other = { code, out }
    end })
    assert.is_nil(inner[1])
    contains(tostring(inner[2]), "is in use by this process")
    contains(other[2], "is in use by process " .. helper.my_pid())
  end)

  it("passes the ids it records as created to create_cases as claimed", function()
    local path = tmp .. "/j"
    local list = items(3, { [3] = true })                       -- item 3: 404, sent again next run
    local first = journal.create_cases(client, list, { path = path })
    local seen
    local spy = { create_cases = function(_, l, o) seen = o.claimed return client:create_cases(l, o) end }
    journal.create_cases(spy, list, { path = path })
    table.sort(seen)
    local ids = { first[1].res.data.id, first[2].res.data.id }
    table.sort(ids)
    assert.same(ids, seen)
  end)
end)

describe("acquire.journal over an iterator (issue 21)", function()
  local srv = helper.server()
  local client, tmp

  before_each(function()
    srv:config{ unique_ids = true }
    client = acquire.new{ base_url = srv.base_url, api_key = srv.key }
    tmp = helper.tmpdir()
  end)

  after_each(function()
    client:close()
    helper.rmrf(tmp)
  end)

  local function iter(list)
    local i = 0
    return function()
      i = i + 1
      return list[i]
    end
  end

  it("streams: counts returned, outcomes through on_result, an earlier run's through on_journal", function()
    local path, list = tmp .. "/j", items(6, { [4] = true })
    local got, waves = {}, 0
    local counts, stopped = journal.create_cases(client, iter(list), { path = path, concurrency = 3,
      on_result = function(i, res) got[i] = res and "created" or "failed" end,
      on_wave = function(n) assert(n >= 1) waves = waves + 1 end })
    assert.is_nil(stopped)
    assert.same({ 6, 5, 1, 0, 0, 0 }, { counts.total, counts.created, counts.failed, counts.uncertain,
      counts.journal_created, counts.journal_uncertain })
    assert.same({ "created", "created", "created", "failed", "created", "created" }, got)
    assert.is_true(waves >= 2, "the caller's on_wave runs too")
    local header, recs = read_journal(path)
    assert.is_nil(header.input)                                -- a stream's header: no digest
    assert.equal(12, #recs)
    -- again: the created ones are the journal's, the failed one is sent again
    local seen = {}
    local again = journal.create_cases(client, iter(list), { path = path,
      on_journal = function(i, res, _, state) seen[i] = { state, res.data.id } end,
      on_result = function(i) seen[i] = "sent" end })
    assert.same({ 6, 5, 0, 1 }, { again.total, again.journal_created, again.created, again.failed })
    assert.equal("sent", seen[4])
    for i, r in pairs(seen) do
      if i ~= 4 then assert.same({ "created", cases_by_item(srv)[i][1].id }, r, "item " .. i) end
    end
    assert.same({ 1, 1, 1, 2, 1, 1 }, { requests_by_item(srv)[1], requests_by_item(srv)[2], requests_by_item(srv)[3],
      requests_by_item(srv)[4], requests_by_item(srv)[5], requests_by_item(srv)[6] })
  end)

  it("lookahead: sent records ahead of their start; a stop records those never started not sent", function()
    for _, la in ipairs({ 0, 5 }) do
      srv:reset()
      srv:config{ unique_ids = true }
      local path, list = tmp .. "/la" .. la, items(12)
      local counts, stopped = journal.create_cases(client, iter(list), { path = path, concurrency = 1,
        lookahead = la, on_result = function(i) if i == 3 then error("stop here", 0) end end })
      assert.equal("stop here", stopped, "lookahead " .. la)
      assert.is_table(counts)
      local _, recs = read_journal(path)
      local sent, last = {}, {}
      for _, r in ipairs(recs) do
        if r.state == "sent" then sent[r.item] = true end
        last[r.item] = r
      end
      local got = requests_by_item(srv)
      local ahead = 0
      for i in pairs(sent) do
        if not got[i] then
          ahead = ahead + 1
          assert.same({ "failed", true }, { last[i].state, last[i].error:find("^not sent") ~= nil }, "item " .. i)
        end
      end
      for i in pairs(got) do assert.is_true(sent[i], "item " .. i .. " sent without its record") end
      if la == 0 then assert.equal(0, ahead) else assert.is_true(ahead >= 1 and ahead <= la, "ahead " .. ahead) end
    end
    helper.raises(function() journal.create_cases(client, iter(items(1)), { path = tmp .. "/x", lookahead = -1 }) end,
      "bad option 'lookahead'")
  end)

  it("nothing left to send: no batch at all (create_cases is not called)", function()
    local path, list = tmp .. "/j", items(4)
    journal.create_cases(client, iter(list), { path = path })
    local spy = { create_cases = function() error("called") end }
    local counts = journal.create_cases(spy, iter(list), { path = path })
    assert.same({ 4, 4 }, { counts.total, counts.journal_created })
  end)

  it("precheck: a changed item is refused before anything is sent; without it, the batch stops there", function()
    local path, list = tmp .. "/j", items(4)
    journal.create_cases(client, iter(list), { path = path, concurrency = 1 })
    local sent = #srv:requests()
    local changed = items(6)
    changed[3] = { 597752, { title = "changed" } }
    local res, err = journal.create_cases(client, iter(changed), { path = path,
      precheck = function() return iter(changed) end })
    assert.is_nil(res)
    assert.same({ "journal", "changed", 3 }, { err.kind, err.reason, err.item })
    assert.equal(sent, #srv:requests())
    -- a one-pass stream: items 1 and 2 are the journal's, 3 stops it, 5 and 6 are never drawn
    local drawn = 0
    local counts, stop = journal.create_cases(client, function() drawn = drawn + 1 return changed[drawn] end,
      { path = path })
    assert.same({ "journal", "changed", 3 }, { stop.kind, stop.reason, stop.item })
    assert.same({ 3, 2 }, { counts.total, counts.journal_created })
    assert.equal(3, drawn)
    assert.equal(sent, #srv:requests())
  end)

  it("the index is what cjson reads: a generator of journals, torn tails included", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    local STATES = { "sent", "created", "failed", "maybe_created" }
    local NASTY = { "", "a", ',"id":7', '"', "\\", "é€", '\\",\\"id\\":9', "\n", "x,y}" }
    for round = 0, 19 do
      math.randomseed(seed + round)
      local why = (" (seed %d, round %d: SPEC_SEED=%d repeats it)"):format(seed, round, seed)
      local path = tmp .. "/g" .. round
      local lines = { cjson.encode{ journal = "lua-acquire", format = 1 } }
      local last, ids = {}, {}
      for _ = 1, math.random(0, 60) do
        local i = math.random(1, 25)
        local state = STATES[math.random(#STATES)]
        local digest = ("%04x%04x%04x%04x"):format(math.random(0, 0xffff), math.random(0, 0xffff),
          math.random(0, 0xffff), math.random(0, 0xffff))
        local parts = { ('"item":%d'):format(i), ('"digest":"%s"'):format(digest), ('"state":"%s"'):format(state),
          '"contactId":' .. cjson.encode(tostring(math.random(1, 999999))) }
        if state == "created" then
          local id = math.random(0, 3) > 0 and math.random(1, 0x7fffffff) or nil
          if id then parts[#parts + 1] = ('"id":%d'):format(id) ids[#ids + 1] = id end
          parts[#parts + 1] = '"case_status":' .. cjson.encode(NASTY[math.random(#NASTY)])
        else
          parts[#parts + 1] = '"error":' .. cjson.encode(NASTY[math.random(#NASTY)])
        end
        lines[#lines + 1] = "{" .. table.concat(parts, ",") .. "}"
        last[i] = { state, digest }
      end
      local bad = #lines > 1 and math.random(0, 3) == 0 and math.random(2, #lines)
      if bad then table.insert(lines, bad, ({ "garbage", '{"item":0,"digest":"0000000000000000","state":"sent"}',
        '{"item":1,"digest":"000000000000000g","state":"sent"}', '{"item":1,"state":"sent"}' })[math.random(4)]) end
      local text = table.concat(lines, "\n") .. "\n"
      local keep = #text
      local tail = math.random(0, 2)
      if tail == 1 then text = text .. '{"item":3,"digest":"0123' end                 -- cut short
      if tail == 2 then text = text .. '{"item":3,"digest":"01234567",\n' end         -- whole, unreadable
      helper.write_file(path, text)
      local j = assert(acquire._journal_open(path))
      if bad then                                  -- a record that is none, before the last line
        local no, msg, _, line = j:scan()
        assert.same({ nil, bad }, { no, line }, why)
        contains(msg, ("line %d is not a journal record"):format(bad))
        j:close()
        local res, err = journal.create_cases(client, items(1), { path = path })
        assert.same({ nil, "bad_record" }, { res, err.reason }, why)
        assert.equal(text, helper.slurp(path), "modified" .. why)
      else
        local header, k, hi, size = j:scan()
        assert.equal(lines[1], header, why)
        assert.same({ keep, #text }, { k, size }, why)
        local max = 0
        for i in pairs(last) do if i > max then max = i end end
        assert.equal(max, hi, why)
        for i = 1, 26 do
          assert.same(last[i] or {}, { j:item(i) }, "item " .. i .. why)
          if last[i] then assert.equal(last[i][1], cjson.decode(j:record(i)).state, why) end
        end
        local claimed = j:claimed()
        table.sort(claimed)
        table.sort(ids)
        assert.same(ids, claimed, why)
        j:close()
      end
    end
  end)
end)

describe("the journal's records and digests in C (j:put, j:digest)", function()
  local tmp
  before_each(function() tmp = helper.tmpdir() end)
  after_each(function() helper.rmrf(tmp) end)

  -- a random string: bytes that need escaping (quotes, backslashes, slashes, control bytes, DEL),
  -- UTF-8, the record's own punctuation
  local PIECES = { '"', "\\", "/", "\n", "\r", "\t", "\0", "\1", "\31", "\127", "é", "€", ",", "}", "{", ":",
    '","id":9', "a", "Z", " ", "0" }
  local function rstr(max)
    local t = {}
    for x = 1, math.random(0, max) do t[x] = PIECES[math.random(#PIECES)] end
    return table.concat(t)
  end
  local function hex16()
    return ("%04x%04x%04x%04x"):format(math.random(0, 0xffff), math.random(0, 0xffff), math.random(0, 0xffff),
      math.random(0, 0xffff))
  end

  it("j:put writes what cjson reads back and the index finds: a generator of records", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    local STATES = { "sent", "created", "failed", "maybe_created" }
    local decoder = cjson.new()
    decoder.decode_max_depth(4)
    for round = 0, 9 do
      math.randomseed(seed + round)
      local why = (" (seed %d, round %d: SPEC_SEED=%d repeats it)"):format(seed, round, seed)
      local path = tmp .. "/p" .. round
      local j = assert(acquire._journal_open(path))
      assert(j:append('{"journal":"lua-acquire","format":1}\n'))
      local want, last, ids = {}, {}, {}
      for _ = 1, math.random(1, 400) do
        local i, state, d = math.random(1, 60), STATES[math.random(#STATES)], hex16()
        local c = tostring(math.random(1, 2^31 - 1))
        local a, b, cc
        if state == "created" then
          local kind = math.random(0, 3)
          a = kind == 1 and math.random(1, 2^31 - 1) or kind == 2 and 2^53 - math.random(0, 1000) or kind == 3 and rstr(5)
            or nil
          b = math.random(0, 3) > 0 and rstr(12) or nil
          cc = ({ true, false, nil })[math.random(3)]
          if type(a) == "number" then ids[#ids + 1] = a end
        elseif state ~= "sent" then
          a = math.random(0, 5) > 0 and rstr(40) or nil
        end
        assert(j:put(i, d, c, state, a, b, cc))
        want[#want + 1] = { item = i, digest = d, state = state, contactId = c,
          id = state == "created" and a or nil, case_status = b, reconciled = cc,
          error = state ~= "created" and a or nil }
        last[i] = { state, d }
        local op = math.random(0, 9)               -- written now and then, synced, in the background
        if op == 0 then assert(j:write())
        elseif op == 1 then assert(j:sync())
        elseif op == 2 then assert(j:wait(assert(j:sync_async()))) end
      end
      assert(j:sync())
      j:close()
      local text = helper.slurp(path)
      local n = 0
      for line in text:gmatch("([^\n]*)\n") do
        n = n + 1
        if n > 1 then
          local got, w = decoder.decode(line), want[n - 1]
          for _, key in ipairs{ "item", "digest", "state", "contactId", "id", "case_status", "reconciled", "error" } do
            local g = got[key]
            if type(g) == "number" and type(w[key]) == "number" then g = g + 0.0 == w[key] + 0.0 and w[key] or g end
            assert.equal(w[key], g, ("record %d, %s: %s%s"):format(n - 1, key, line, why))
          end
        end
      end
      assert.equal(#want + 1, n, why)
      j = assert(acquire._journal_open(path))
      local header, keep = j:scan()
      assert.same({ '{"journal":"lua-acquire","format":1}', #text }, { header, keep }, why)
      for i = 1, 61 do assert.same(last[i] or {}, { j:item(i) }, "item " .. i .. why) end
      local claimed = j:claimed()
      table.sort(claimed)
      table.sort(ids)
      for x = 1, #ids do ids[x] = math.floor(ids[x]) end
      for x = 1, #claimed do claimed[x] = math.floor(claimed[x]) end
      assert.same(ids, claimed, why)
      j:close()
    end
  end)

  it("j:digest is FNV-1a 64 of the contact's digits, LF and build_request's body: a generator of items", function()
    local seed = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    math.randomseed(seed)
    local why = (" (seed %d: SPEC_SEED=%d repeats it)"):format(seed, seed)
    local config = { api_key = "x", base_url = "http://journal.invalid", strict = false }
    local j = assert(acquire._journal_open(tmp .. "/d"))
    local input
    local n = 0
    for x = 1, 300 do
      local id = ({ math.random(1, 2^31 - 1), tostring(math.random(1, 2^30) * 1024 + math.random(0, 1023)), "0" .. math.random(1, 999), 0, -3, 1.5,
        "12a", true })[math.random(8)]
      local opts = ({ function() return nil end, function() return {} end, function() return 7 end,
        function()
          return { title = rstr(20), description = math.random(0, 1) == 1 and rstr(30) or nil,
            agentId = ({ nil, math.random(1, 1e6), "x" })[math.random(3)],
            isFromCobrowse = ({ nil, true, false })[math.random(3)],
            fields = math.random(0, 1) == 1 and { [rstr(4) .. "k"] = rstr(6), n = math.random(-1e9, 1e9) } or nil,
            [("extra%d"):format(math.random(1, 3))] = ({ rstr(8), math.random(1, 100), true })[math.random(3)] }
        end })[math.random(4)]()
      local okr, req = pcall(acquire.build_request, id, opts, config)
      local okd, d, contact = pcall(j.digest, j, id, opts, true)
      assert.equal(okr, okd, ("item %d: build_request %s, digest %s%s"):format(x, tostring(req), tostring(d), why))
      if okr then
        n = n + 1
        local c = req.url:match("contactId=(%d+)$")
        assert.same({ journal.fnv1a64(c .. "\n" .. req.body), c }, { d, contact }, "item " .. x .. why)
        input = n == 1 and journal.fnv1a64(d) or j:fnv("\n" .. d, input)
      else                                         -- the same complaint, without build_request's name
        contains(tostring(req), (tostring(d):gsub("^bad argument #%d+ to '[^']*' %((.*)%)$", "%1")))
      end
    end
    assert.equal(n > 0 and input or journal.fnv1a64(""), j:input(), why)
    j:close()
  end)
end)

describe("acquire.journal under short writes (ulimit -f)", function()
  local srv = helper.server()

  -- A child that runs the journal with its file size capped at `blocks` 512-byte blocks (SIGXFSZ
  -- ignored, so write(2) returns short, then EFBIG). -> exit status, its one line of output
  local function capped_run(path, n, blocks)
    local code, out, err = helper.run_lua(([[
      local acquire = require "acquire"
      local client = acquire.new{ base_url = %q, api_key = %q }
      local list = {}
      for i = 1, %d do list[i] = { 597752, { title = "item " .. i } } end
      local results, stopped = require("acquire.journal").create_cases(client, list, { path = %q, concurrency = 4 })
      if not results then print("REFUSED " .. tostring(stopped):sub(1, 200)) os.exit(3) end
      print(stopped and ("STOPPED %%s %%s"):format(stopped.reason, tostring(stopped):sub(1, 300)) or "DONE")
    ]]):format(srv.base_url, srv.key, n, path), { env = LUA_ENV, prefix = ("trap '' XFSZ; ulimit -f %d;"):format(blocks) })
    return code, out .. err
  end

  it("stops with a clear error, no request without its whole record; the re-run resends nothing received", function()
    local base = tonumber(os.getenv("SPEC_SEED") or "") or os.time()
    local stops = 0
    for s = 0, 2 do
      local seed = base + s
      local why = (" (seed %d: SPEC_SEED=%d repeats it)"):format(seed, seed)
      math.randomseed(seed)
      srv:reset()
      srv:config{ unique_ids = true }
      local tmp = helper.tmpdir()
      local path, N = tmp .. "/j", 40
      local blocks = math.random(1, 16)                           -- the whole run writes about 20
      local code, out = capped_run(path, N, blocks)
      why = (" (%d blocks)"):format(blocks) .. why
      assert.equal(0, code, out .. why)
      if out:find("^STOPPED") then
        stops = stops + 1
        contains(out, "STOPPED write journal " .. path .. ": cannot write a record: File too large")
        contains(out, "the batch stopped")
      else
        assert.matches("^DONE", out, why)
      end
      -- every line on disk whole; every request the server received has its "sent" record
      local _, recs, text = read_journal(path)
      assert.equal("\n", text:sub(-1), "a torn record left on disk" .. why)
      local sent = {}
      for _, r in ipairs(recs) do if r.state == "sent" then sent[r.item] = true end end
      local received = requests_by_item(srv)
      for i in pairs(received) do assert.is_true(sent[i], ("item %d sent without its record%s"):format(i, why)) end
      -- run again, without the cap: nothing the server received is sent again
      local client = acquire.new{ base_url = srv.base_url, api_key = srv.key }
      local list = {}
      for i = 1, N do list[i] = { 597752, { title = "item " .. i } } end
      local results, stopped = journal.create_cases(client, list, { path = path, concurrency = 4 })
      client:close()
      assert.is_nil(stopped, tostring(stopped) .. why)
      local after, cases = requests_by_item(srv), cases_by_item(srv)
      for i = 1, N do
        if received[i] then assert.equal(received[i], after[i], ("item %d sent again%s"):format(i, why)) end
        assert.is_true(#(cases[i] or {}) <= 1, ("item %d created twice%s"):format(i, why))
        local r = results[i]
        if r.res then
          assert.equal(1, #cases[i], ("item %d reported created%s"):format(i, why))
          assert.equal(cases[i][1].id, r.res.data.id, ("item %d: its own case%s"):format(i, why))
        else
          assert.is_true(r.err.maybe_created, ("item %d: %s%s"):format(i, tostring(r.err), why))
        end
      end
      helper.rmrf(tmp)
    end
    assert.is_true(stops > 0, "no capped run stopped (seed " .. base .. ")")
  end)
end)

describe("acquire.journal on a slow disk (fdatasync delayed under strace)", function()
  local srv = helper.server()

  -- strace -f -ttt -T: each syscall's start and end, whichever thread made it
  local function syscalls(text)
    local open, list = {}, {}
    for line in text:gmatch("[^\n]+") do
      local pid, ts, rest = line:match("^(%d+)%s+([%d.]+)%s+(.*)$")
      if pid then
        local name = rest:match("^([%w_]+)%(")
        if name then
          local call = { name = name, start = tonumber(ts), text = rest }
          list[#list + 1] = call
          if rest:find("<unfinished %.%.%.>$") then open[pid] = call
          else call.finish = call.start + tonumber(rest:match("<([%d.]+)>$") or "0") end
        else
          local rname, more = rest:match("^<%.%.%. ([%w_]+) resumed>(.*)$")
          local call = open[pid]
          if rname and call and call.name == rname then
            call.text = call.text .. more
            call.finish = call.start + tonumber(more:match("<([%d.]+)>$") or "0")
            open[pid] = nil
          end
        end
      end
    end
    return list
  end

  it("no request leaves before an fdatasync that began after its sent record was written had ended", function()
    local strace = helper.sh("command -v strace"):match("^(/%S+)")
    if not strace then return pending("no strace") end
    if (os.getenv("LD_PRELOAD") or ""):find("libasan", 1, true) then
      return pending("under ASan: LeakSanitizer does not work under ptrace")
    end
    srv:config{ unique_ids = true }
    local tmp = helper.tmpdir()
    local N = 400
    local script = helper.tmpfile(([[
      local acquire = require "acquire"
      local client = acquire.new{ base_url = %q, api_key = %q }
      local i = 0
      local counts, stopped = require("acquire.journal").create_cases(client, function()
        i = i + 1
        if i <= %d then return { 597752, { title = "item " .. i } } end
      end, { path = %q, concurrency = 16, on_result = function() end })
      print(counts.created, stopped)
    ]]):format(srv.base_url, srv.key, N, tmp .. "/j"))
    -- every fdatasync takes 15 ms more than the disk's: the lookahead's, made by the journal's
    -- thread, is still running when the batch draws the items it covers
    local r = helper.run({ strace, "-f", "-ttt", "-T", "-s", "1000000", "-o", tmp .. "/trace", "-e",
      "trace=write,writev,sendto,sendmsg,fdatasync,fsync", "-e", "inject=fdatasync:delay_enter=15000",
      helper.interpreter(), script }, { env = LUA_ENV, limit = 120 })
    os.remove(script)
    assert.equal(0, r.code, r.err)
    assert.equal(("%d\tnil\n"):format(N), r.out, r.err)
    local written, sent, syncs = {}, {}, {}
    for _, call in ipairs(syscalls(helper.slurp(tmp .. "/trace"))) do
      if call.name == "fdatasync" or call.name == "fsync" then
        syncs[#syncs + 1] = call
      elseif call.text:find('\\"journal\\"', 1, true) == nil then
        for i in call.text:gmatch('\\"item\\":(%d+),\\"digest\\":\\"%x+\\",\\"state\\":\\"sent\\"') do
          i = tonumber(i)
          written[i] = written[i] or call.finish
        end
        for i in call.text:gmatch('\\"title\\":\\"item (%d+)\\"') do
          i = tonumber(i)
          sent[i] = sent[i] or call.start
        end
      end
    end
    for i = 1, N do
      assert.is_number(sent[i], "item " .. i .. " never sent")
      assert.is_number(written[i], "item " .. i .. " sent without a sent record")
      local ok = false
      for _, f in ipairs(syncs) do
        if f.finish and f.start >= written[i] and f.finish <= sent[i] then ok = true break end
      end
      assert.is_true(ok, ("item %d sent at %.6f: no fdatasync from after its record (%.6f) had ended")
        :format(i, sent[i], written[i]))
    end
    assert.is_true(#syncs >= 2 and #syncs <= N / 4, #syncs .. " fdatasyncs")
    helper.rmrf(tmp)
  end)
end)
