--- acquire.luv: a client's calls on a libuv loop (luv, luvit, Neovim's vim.loop), never blocking it.
--
--   local aq = require "acquire.luv"
--   aq.create_case(client, 597752, { title = "Refund" }, function(res, err) ... end)
--   uv.run()
--
-- The calls a client makes on one loop run in one group of pending calls (client:group(),
-- src/group.c, kept by acquire.loop), as acquire.cqueues' calls in one controller do: one multi handle and one epoll
-- descriptor for all of them, so one wake-up of the loop reads every answer that came and sends
-- every request that is due, together. The group is driven by two handles of the loop while it
-- has calls: a poll handle on g:pollfd() for "r" and a timer for g:timeout(), each stepping it
-- (g:step() never blocks). libuv allows one active poll handle per descriptor, and a group's
-- descriptor is its own: one poll handle. A call's callback(res, err) is called once, from the
-- loop, with what client:create_case would return; the handles are closed before the callback of
-- the group's last call runs, so a callback that raises leaves none open when no call is left,
-- and its error is the loop's to report (luv prints "Uncaught Error" and exits; Neovim shows it
-- and goes on): the callbacks of other calls that finished in the same step then run on the
-- loop's next turn, each still once. The loop: `loop` when given (a luv module table:
-- vim.loop), else require "luv" (in Neovim that is vim.loop itself). Returns a handle:
-- handle:cancel() ends the call now, its callback getting nil, err { kind = "cancelled",
-- maybe_created = whether the request may have left }; handle:done() is true once the callback
-- has been called.
local acquire = require "acquire"
local loop_groups = require "acquire.loop"

local error, pcall, type, setmetatable, next, ipairs, remove, ceil =
  error, pcall, type, setmetatable, next, ipairs, table.remove, math.ceil

local M = { _VERSION = acquire._VERSION }

local Call = {}
Call.__index = Call

-- A client's group on each loop (acquire.loop): { g = the group, loop = the luv table,
-- calls = { [p] = Call }, n = how many, ready = { Call... } (finished, callbacks not yet called),
-- poll, timer (while it has calls or callbacks to call), soon = the timer is due at the next turn }.
-- (Made below, after tick, which its handlers call.)

local function close_handles(st)
  for _, k in ipairs({ "poll", "timer" }) do
    local h = st[k]
    if h and not h:is_closing() then h:close() end
    st[k] = nil
  end
  st.soon = false
end

-- The timer, for what the group waits for next.
local function arm(st)
  local t = st.g:timeout()
  st.timer:stop()
  st.soon = t == 0
  if t then st.timer:start(ceil(t * 1000), 0, st.on_timer) end
end

-- The timer at the loop's next turn (a call joined, to be sent with the others of this turn; or
-- callbacks are left to call), without asking the group.
local function soon(st)
  if st.soon then return end
  st.timer:stop()
  st.timer:start(0, 0, st.on_timer)
  st.soon = true
end

-- The callbacks of the calls that finished, each once. Before each, the loop's next turn is
-- made sure of while others are left (a callback that raises leaves them to it), and the handles
-- are closed before the last one when the group has no call left.
local function deliver(st)
  local ready = st.ready
  while ready[1] do
    local call = remove(ready, 1)
    call.called = true
    if ready[1] then soon(st) elseif st.n == 0 then close_handles(st) end
    call.callback(call.p:result())
  end
end

-- Does what is ready (never blocks), then the callbacks of the calls that finished.
local function tick(st)
  if not st.timer then return end
  st.soon = false
  local ok, done = pcall(st.g.step, st.g)
  if not ok then                      -- misuse (the client was closed under it): raised, handles closed
    close_handles(st)
    for p, call in next, st.calls do
      call.called = true               -- (no callback will come)
      st.calls[p] = nil
    end
    st.n = 0
    error(done, 0)
  end
  for i = 1, #done do
    local call = st.calls[done[i]]
    if call then                      -- (not one cancelled: its callback was called then)
      st.calls[done[i]] = nil
      st.n = st.n - 1
      call.ready = true
      st.ready[#st.ready + 1] = call
    end
  end
  if st.ready[1] then deliver(st) end
  if st.n > 0 then arm(st)            -- (the handles: made again by a callback's call, if closed)
  elseif st.timer then close_handles(st) end
end

local groups = loop_groups.groups(function(g, loop)
  local st = { g = g, loop = loop, calls = {}, n = 0, ready = {} }
  st.on_timer = function() tick(st) end
  st.on_poll = function() tick(st) end
  return st
end)

-- The group's handles, when it has none (its first call, or the first since it had none left):
-- true, or nil and why.
local function watch(st)
  if st.timer then return true end
  local poll, why = st.loop.new_poll(st.g:pollfd())
  if not poll then return nil, why end
  st.poll, st.timer = poll, st.loop.new_timer()
  poll:start("r", st.on_poll)
  return true
end

-- A call still running is cancelled; one that finished, its callback not yet called (it finished
-- in the step whose callbacks are being called), keeps its result: either way, the callback now.
function Call:cancel()
  if self.called then return end
  local st = self.st
  self.called = true
  if self.ready then
    for i = 1, #st.ready do
      if st.ready[i] == self then remove(st.ready, i) break end
    end
  else
    self.p:cancel()
    st.calls[self.p] = nil
    st.n = st.n - 1
  end
  if st.n == 0 and not st.ready[1] then close_handles(st) end
  self.callback(self.p:result())
end

function Call:done() return self.called == true end

local function start(fname, method, client, id, arg, callback, loop)
  loop_groups.check_client(client, fname)
  if type(callback) ~= "function" then
    error(("bad argument #4 to '%s' (callback function expected, got %s)"):format(fname, type(callback)), 3)
  end
  if loop ~= nil and (type(loop) ~= "table" or type(loop.new_poll) ~= "function") then
    error(("bad argument #5 to '%s' (a luv module expected, such as vim.loop, got %s)"):format(fname, type(loop)), 3)
  end
  loop = loop or require "luv"
  local st, p = loop_groups.start(groups, loop, fname, method, client, id, arg)
  local watched, why = watch(st)
  if not watched then
    p:cancel()
    error(("%s: cannot watch the client's descriptor %d (%s)"):format(fname, st.g:pollfd(), tostring(why)), 3)
  end
  local self = setmetatable({ p = p, callback = callback, st = st }, Call)
  st.calls[p] = self
  st.n = st.n + 1
  soon(st)                            -- never the callback from here: at the earliest, the loop's next turn
  return self
end

--- handle = acquire.luv.create_case(client, contactId, opts, callback [, loop])
function M.create_case(client, contactId, opts, callback, loop)
  local handle = start("create_case", "start_case", client, contactId, opts, callback, loop)
  return handle                       -- (not a tail call: misuse raises at this function's caller)
end

--- handle = acquire.luv.find_cases(client, contactId, filter, callback [, loop])
function M.find_cases(client, contactId, filter, callback, loop)
  local handle = start("find_cases", "start_find", client, contactId, filter, callback, loop)
  return handle
end

return M
