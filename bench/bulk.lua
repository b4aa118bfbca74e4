-- Bulk imports at size (issue 21), for bench.sh: prints "key value" lines.
--
--   lua5.4 bench/bulk.lua URL SIZES ROUNDS [ROOT]
--
-- URL: the bench server; SIZES: row counts, comma-separated (the largest is also the resume
-- row's); ROUNDS: rounds of the throughput rows, interleaved (plain, journal, journal, plain…);
-- ROOT: the tree whose bin/acquire-case and acquire.so run (default: this one; another
-- checkout measures "before"). Each child runs under /usr/bin/time: wall, user+sys CPU and max
-- RSS. Inputs and journals live in a temporary directory, removed at the end.
-- BULK_PARTS: which rows, comma-separated (default all): rss, resume, tput, strace.
local url, sizes, rounds, root = ...
assert(url and sizes, "usage: bulk.lua URL SIZES ROUNDS [ROOT]")
rounds = tonumber(rounds) or 3
root = root or "."
local CONC = tonumber(os.getenv("BULK_CONCURRENCY") or "") or 16
local ITER_MAX = tonumber(os.getenv("BULK_ITER_MAX") or "") or math.huge   -- create_cases rows up to this size
local PARTS = os.getenv("BULK_PARTS") or "rss,resume,tput,strace"
local function part(name) return ("," .. PARTS .. ","):find("," .. name .. ",", 1, true) ~= nil end

local function sh(cmd)
  local p = io.popen(cmd)
  local s = p:read("*a")
  p:close()
  return s
end
local tmp = sh("mktemp -d"):gsub("%s+$", "")
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local env = ("cd %s && ACQUIRE_API_KEY=bench ACQUIRE_BASE_URL=%s LUA_PATH=%s LUA_CPATH=%s ")
  :format(q(root), q(url), q("./lua/?.lua;./lua/?/init.lua;;"), q("./?.so;;"))

-- a command under /usr/bin/time -> { wall, cpu, rss_kib, code }
local function timed(cmd)
  local tf = tmp .. "/time"
  local code = select(3, os.execute(("%s/usr/bin/time -o %s -f '%%e %%U %%S %%M %%x' sh -c %s")
    :format(env, q(tf), q(cmd)))) or 0
  local f = assert(io.open(tf))
  local text = f:read("*a")
  f:close()
  local e, u, s, m, x = text:match("([%d.]+) ([%d.]+) ([%d.]+) (%d+) (%-?%d+)%s*$")
  assert(e, "no time output: " .. text)
  return { wall = tonumber(e), cpu = tonumber(u) + tonumber(s), rss = tonumber(m), code = tonumber(x) or code }
end

local inputs = {}
local function input(n)
  if inputs[n] then return inputs[n] end
  local path = ("%s/in-%d"):format(tmp, n)
  local f = assert(io.open(path, "w"))
  local buf = {}
  for i = 1, n do
    buf[#buf + 1] = ('{"contactId": 597752, "title": "row %d"}'):format(i)
    if #buf == 4096 then f:write(table.concat(buf, "\n"), "\n") buf = {} end
  end
  if #buf > 0 then f:write(table.concat(buf, "\n"), "\n") end
  f:close()
  inputs[n] = path
  return path
end

local function median(list)
  table.sort(list)
  local n = #list
  return n % 2 == 1 and list[(n + 1) / 2] or (list[n / 2] + list[n / 2 + 1]) / 2
end
local function out(k, v) print(k, type(v) == "number" and (v % 1 == 0 and ("%d"):format(v) or ("%.3f"):format(v)) or v) end

local CLI = "lua5.4 bin/acquire-case --batch --concurrency " .. CONC
local function cli(n, journal, extra)
  return ("%s%s%s <%s >%s/out 2>%s/err"):format(CLI, journal and " --journal " .. q(journal) or "",
    extra or "", q(input(n)), tmp, tmp)
end

local list = {}
for n in sizes:gmatch("%d+") do list[#list + 1] = tonumber(n) end
local largest = list[#list]

-- Max RSS of the CLI with a journal, and of create_cases over an iterator, by size.
for _, n in ipairs(part("rss") and list or {}) do
  local j = tmp .. "/j-" .. n
  os.remove(j)
  local r = timed(cli(n, j))
  assert(r.code == 0, "acquire-case exited " .. r.code .. ": " .. sh("tail -c 600 " .. tmp .. "/err"))
  out("bulk_cli_rss_kib_" .. n, r.rss)
  out("bulk_cli_wall_s_" .. n, r.wall)
  out("bulk_cli_cpu_s_" .. n, r.cpu)
  if n <= ITER_MAX then
    local lib = ([[lua5.4 -e 'local a = require "acquire"; local c = a.new{ base_url = os.getenv "ACQUIRE_BASE_URL",
      api_key = "bench" }; local i = 0; local r = c:create_cases(function() i = i + 1
      if i <= %d then return { 597752, { title = "row " .. i } } end end, { concurrency = %d,
      on_result = function() end }); assert(r.created == %d, r.created)' >/dev/null 2>%s/err]]):format(n, CONC, n, tmp)
    r = timed(lib)
    assert(r.code == 0, "create_cases: " .. sh("tail -c 600 " .. tmp .. "/err"))
    out("bulk_iter_rss_kib_" .. n, r.rss)
    out("bulk_iter_wall_s_" .. n, r.wall)
  end
  if n ~= largest then os.remove(j) end
end

-- Resume: the largest journal again, nothing left to send.
if part("resume") then
  local j = tmp .. "/j-" .. largest
  if not part("rss") then assert(timed(cli(largest, j)).code == 0, "the journal to resume") end
  local times, rss, cpu = {}, {}, {}
  for _ = 1, math.max(1, math.min(rounds, 3)) do
    local r = timed(cli(largest, j))
    assert(r.code == 0, "resume exited " .. r.code .. ": " .. sh("tail -c 600 " .. tmp .. "/err"))
    times[#times + 1], rss[#rss + 1], cpu[#cpu + 1] = r.wall, r.rss, r.cpu
  end
  out("bulk_resume_rows", largest)
  out("bulk_resume_s", median(times))
  out("bulk_resume_min_s", times[1] < times[#times] and times[1] or times[#times])
  out("bulk_resume_max_s", times[#times] > times[1] and times[#times] or times[1])
  out("bulk_resume_cpu_s", median(cpu))
  out("bulk_resume_rss_kib", median(rss))
  local f = io.open(j)
  out("bulk_resume_journal_mib", f:seek("end") / 1048576)
  f:close()
  os.remove(j)
end

-- Throughput with and without the journal, at 16 and 64, interleaved rounds (plain, journal,
-- journal, plain…): each kind's rows/s median [min, max], wall and CPU (user + sys) medians, and
-- the ratio of each round's pair (journal / plain rows/s), median [min, max]: the machine's load
-- moves both runs of a round alike, so the paired ratio spreads less than the rates.
local TN = tonumber(os.getenv("BULK_TPUT_ROWS") or "") or 10000
for _, c in ipairs(part("tput") and { 16, 64 } or {}) do
  local rate = { plain = {}, journal = {} }
  local cpu = { plain = {}, journal = {} }
  local wall = { plain = {}, journal = {} }
  local pair = {}
  for round = 1, rounds do
    local order = round % 2 == 1 and { "plain", "journal" } or { "journal", "plain" }
    local got = {}
    for _, kind in ipairs(order) do
      local j = tmp .. "/jt"
      os.remove(j)
      local cmd = cli(TN, kind == "journal" and j or nil):gsub("%-%-concurrency %d+", "--concurrency " .. c)
      local r = timed(cmd)
      assert(r.code == 0, kind .. " exited " .. r.code)
      table.insert(rate[kind], TN / r.wall)
      table.insert(cpu[kind], r.cpu)
      table.insert(wall[kind], r.wall)
      got[kind] = TN / r.wall
      os.remove(j)
    end
    pair[#pair + 1] = got.journal / got.plain
  end
  for _, kind in ipairs({ "plain", "journal" }) do
    table.sort(rate[kind])
    out(("bulk_tput_%s_%d_rps"):format(kind, c), median(rate[kind]))
    out(("bulk_tput_%s_%d_min"):format(kind, c), rate[kind][1])
    out(("bulk_tput_%s_%d_max"):format(kind, c), rate[kind][#rate[kind]])
    out(("bulk_tput_%s_%d_cpu_s"):format(kind, c), median(cpu[kind]))
    out(("bulk_tput_%s_%d_wall_s"):format(kind, c), median(wall[kind]))
  end
  table.sort(pair)
  out(("bulk_tput_ratio_%d"):format(c), median(pair))
  out(("bulk_tput_ratio_%d_min"):format(c), pair[1])
  out(("bulk_tput_ratio_%d_max"):format(c), pair[#pair])
end
if part("tput") then
  out("bulk_tput_rows", TN)
  out("bulk_tput_rounds", rounds)
end

-- Flushes and writes per item (strace -c), a journal of the smallest size.
if part("strace") then
  local n, j = list[1], tmp .. "/js"
  os.remove(j)
  local so = tmp .. "/strace"
  os.execute(("%sstrace -f -c -o %s -e trace=fdatasync,fsync,write sh -c %s"):format(env, q(so), q(cli(n, j))))
  local text = sh("cat " .. q(so))
  local function calls(name)                     -- % time, seconds, usecs/call, calls, [errors,] syscall
    for line in text:gmatch("[^\n]+") do
      local f = {}
      for w in line:gmatch("%S+") do f[#f + 1] = w end
      if f[#f] == name and tonumber(f[4]) then return tonumber(f[4]) end
    end
    return 0
  end
  out("bulk_strace_rows", n)
  out("bulk_fdatasync_per_item", (calls("fdatasync") + calls("fsync")) / n)
  out("bulk_write_per_item", calls("write") / n)
  os.remove(j)
end

os.execute("rm -rf " .. q(tmp))
