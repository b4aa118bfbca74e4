--- acquire.cqueues: a client's calls inside a cqueues coroutine, never blocking its loop.
--
--   local aq = require "acquire.cqueues"
--   cq:wrap(function() local res, err = aq.create_case(client, 597752, { title = "Refund" }) end)
--
-- The calls a client makes in one controller run in one group of pending calls
-- (client:group(), src/group.c, kept by acquire.loop): one multi handle and one descriptor for
-- all of them, as a batch has. One of the waiting coroutines leads: it polls the group (cqueues
-- polls any object with pollfd, events and timeout) and steps it, and each step hands every call that finished
-- to its coroutine (a cqueues condition); when its own call is done it hands the lead to
-- another waiting coroutine. So the sends, retries, Retry-After waits and reconcile's wait are
-- the loop's own waits, and one wake-up of the loop reads every answer that came and sends
-- every request that is due, together. Returns exactly what client:create_case returns.
-- Outside a cqueues controller it raises rather than block: client:create_case is the
-- blocking call, and a blocking call hidden behind this name would stall a loop unseen.
-- Where the coroutine cannot yield (a C call is between it and the loop: a create_cases hook,
-- a logger, table.sort's comparator) it raises before anything is sent: on Lua 5.3, 5.4 and
-- LuaJIT, which can tell (coroutine.isyieldable), with its own message; on 5.1 and 5.2, which
-- cannot, it yields once first (the loop's next turn), and there that yield raises ("attempt to
-- yield across a C-call boundary").
local cqueues = require "cqueues"
local condition = require "cqueues.condition"
local acquire = require "acquire"
local loop = require "acquire.loop"

local running, poll = cqueues.running, cqueues.poll
local isyieldable, corunning = coroutine.isyieldable, coroutine.running
local error, pcall, next, setmetatable = error, pcall, next, setmetatable

local M = { _VERSION = acquire._VERSION }

-- A client's group in each controller: { g = the group, waiting = { [call] = condition },
-- leading = a coroutine leads, steps = how many steps it took } (acquire.loop).
local groups = loop.groups(function(g) return { g = g, waiting = {}, leading = false, steps = 0 } end)

-- g:<method>(id, arg) for client, in its group of the running controller, raising as `fname`
-- would (misuse names this function's arguments), before anything is sent.
local function start(fname, method, client, id, arg)
  loop.check_client(client, fname)
  local cq = running()
  if not cq then
    error(("acquire.cqueues.%s runs inside a cqueues controller (cq:wrap); outside one, "
      .. "client:%s is the blocking call"):format(fname, fname), 3)
  end
  if isyieldable then
    if not isyieldable() then
      error(("acquire.cqueues.%s cannot yield here (a C call, such as a create_cases hook or a "
        .. "logger, is between this code and the loop); nothing was sent"):format(fname), 3)
    end
  else
    poll(0)       -- 5.1, 5.2: cannot tell; a yield first, which raises there, before anything is sent
  end
  local st, p = loop.start(groups, cq, fname, method, client, id, arg)
  return st, p                          -- (not a tail call: misuse raises at fname's caller)
end

-- Each call that finished to its waiting coroutine (no longer one the lead can go to).
local function deliver(st, done)
  local waiting = st.waiting
  for i = 1, #done do
    local p = done[i]
    local cond = waiting[p]
    if cond then
      waiting[p] = nil
      cond:signal()
    end
  end
end

-- The lead goes to one waiting coroutine (each wakes, finds its call unfinished and nobody
-- leading, and leads); all = true: to every one (a step raised: each finds out for itself).
local function hand_on(st, all)
  for _, cond in next, st.waiting do
    cond:signal()
    if not all then return end
  end
end

-- Each coroutine's own condition, kept between its calls.
local conds = setmetatable({}, { __mode = "k" })

-- A leader is a caller's coroutine: one abandoned inside its call (a coroutine of the user's,
-- resumed through cqueues.auxlib.resume and then dropped) would strand the others. A waiting
-- coroutine looks every LAPSE seconds: when the group had something ready and nobody stepped it
-- in that time, it leads too (two leaders step the same group: still each call once).
local LAPSE = 1

local function stranded(st, seen)
  if st.steps ~= seen then return false end
  local g = st.g
  return poll(g, 0) == g or g:timeout() == 0
end

-- This coroutine leads until its own call is done: it polls and steps the group, each step's
-- finished calls go to their coroutines; then the lead goes on to a waiting coroutine.
local function lead(st, p)
  st.leading = true
  local g = st.g
  -- alone, it steps at once (sends its request); with others, it polls first, so the
  -- requests of every coroutine the loop runs this turn leave together
  if g:count() > 1 then poll(g) end
  local ok, done = pcall(g.step, g)
  while ok do
    st.steps = st.steps + 1
    deliver(st, done)
    if p:done() then break end
    poll(g)
    ok, done = pcall(g.step, g)
  end
  st.leading = false
  hand_on(st, not ok)
  if not ok then error(done, 0) end
end

local function wait(st, p)
  -- nobody leads (a call alone, or the first of a loop turn): no condition, no waiting list
  if not (st.leading or p:done()) then lead(st, p) end
  if not p:done() then
    local co = corunning()
    local cond = conds[co]
    if not cond then
      cond = condition.new()
      conds[co] = cond
    end
    local waiting, seen = st.waiting
    repeat
      if st.leading and not (seen and stranded(st, seen)) then
        waiting[p] = cond
        seen = st.steps
        cond:wait(LAPSE)
      else
        waiting[p] = nil                     -- (a leader is not handed the lead)
        lead(st, p)
      end
    until p:done()
    waiting[p] = nil
  end
  return p:result()
end

--- res, err = acquire.cqueues.create_case(client, contactId, opts)
function M.create_case(client, contactId, opts)
  return wait(start("create_case", "start_case", client, contactId, opts))
end

--- cases, err = acquire.cqueues.find_cases(client, contactId [, filter])
function M.find_cases(client, contactId, filter)
  return wait(start("find_cases", "start_find", client, contactId, filter))
end

return M
