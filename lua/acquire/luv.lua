--- acquire.luv: a client's calls on a libuv loop (luv, luvit, Neovim's vim.loop), never blocking it.
--
--   local aq = require "acquire.luv"
--   aq.create_case(client, 597752, { title = "Refund" }, function(res, err) ... end)
--   uv.run()
--
-- Each call is a pending call (client:start_case, src/pending.c) driven by two handles of the
-- loop: a poll handle on p:pollfd() for "r" and a timer for p:timeout(), each stepping it
-- (p:step() never blocks). libuv allows one active poll handle per descriptor: no two running
-- pending calls share one (a finished call's descriptor may serve the client's next call, and
-- its poll handle is closed by then), so one poll handle per call never meets another.
-- callback(res, err) is called once, with what client:create_case would return, after both
-- handles are closed (closing): an error it raises is the loop's to report (luv prints
-- "Uncaught Error" and exits; Neovim shows it) and leaves none of this call's handles open.
-- The loop: `loop` when given (a luv module table: vim.loop), else require "luv" (in Neovim
-- that is vim.loop itself). Returns a handle: handle:cancel() ends the call now, its callback
-- getting nil, err { kind = "cancelled", maybe_created = whether the request may have left };
-- handle:done() is true once the callback has been called.
local acquire = require "acquire"

local error, pcall, type, getmetatable, setmetatable, ipairs, ceil =
  error, pcall, type, getmetatable, setmetatable, ipairs, math.ceil

local M = { _VERSION = acquire._VERSION }

local Call = {}
Call.__index = Call

-- Closes the handles (idempotent); then, once, the callback with p's result.
local function finish(self)
  if self.finished then return end
  self.finished = true
  for _, h in ipairs({ self.poll, self.timer }) do
    if not h:is_closing() then h:close() end
  end
  self.callback(self.p:result())
end

-- The timer, for what p waits for next (nil: only its descriptor can wake it).
local function arm(self)
  local t = self.p:timeout()
  self.timer:stop()
  if t then self.timer:start(ceil(t * 1000), 0, self.on_timer) end
end

-- Does what is ready (never blocks), then re-arms the timer or finishes.
local function tick(self)
  if self.finished then return end
  local ok, done = pcall(self.p.step, self.p)
  if not ok then                      -- misuse (the client was closed under it): raised, handles closed
    self.finished = true
    for _, h in ipairs({ self.poll, self.timer }) do
      if not h:is_closing() then h:close() end
    end
    error(done, 0)
  end
  if done then return finish(self) end
  arm(self)
end

function Call:cancel()
  if self.finished then return end
  self.p:cancel()
  finish(self)
end

function Call:done() return self.finished == true end

local function start(fname, method, client, id, arg, callback, loop)
  if getmetatable(client) ~= "acquire.Client" then
    error(("bad argument #1 to '%s' (acquire client expected, got %s)"):format(fname, type(client)), 3)
  end
  if type(callback) ~= "function" then
    error(("bad argument #4 to '%s' (callback function expected, got %s)"):format(fname, type(callback)), 3)
  end
  if loop ~= nil and (type(loop) ~= "table" or type(loop.new_poll) ~= "function") then
    error(("bad argument #5 to '%s' (a luv module expected, such as vim.loop, got %s)"):format(fname, type(loop)), 3)
  end
  loop = loop or require "luv"
  local ok, p = pcall(client[method], client, id, arg)
  if not ok then
    if type(p) == "string" then
      p = p:gsub("^bad argument #(%d+) to '[^']*'", "bad argument #%1 to '" .. fname .. "'")
    end
    error(p, 3)
  end
  local self = setmetatable({ p = p, callback = callback }, Call)
  local poll, why = loop.new_poll(p:pollfd())
  if not poll then
    p:cancel()
    error(("%s: cannot watch the call's descriptor %d (%s)"):format(fname, p:pollfd(), tostring(why)), 3)
  end
  self.poll = poll
  self.timer = loop.new_timer()
  self.on_timer = function() tick(self) end
  self.poll:start(p:events(), function() tick(self) end)
  arm(self)                           -- never the callback from here: at the earliest, the loop's next turn
  return self
end

--- handle = acquire.luv.create_case(client, contactId, opts, callback [, loop])
function M.create_case(client, contactId, opts, callback, loop)
  return start("create_case", "start_case", client, contactId, opts, callback, loop)
end

--- handle = acquire.luv.find_cases(client, contactId, filter, callback [, loop])
function M.find_cases(client, contactId, filter, callback, loop)
  return start("find_cases", "start_find", client, contactId, filter, callback, loop)
end

return M
