--- acquire.cqueues: a client's calls inside a cqueues coroutine, never blocking its loop.
--
--   local aq = require "acquire.cqueues"
--   cq:wrap(function() local res, err = aq.create_case(client, 597752, { title = "Refund" }) end)
--
-- Each call is a pending call (client:start_case, src/pending.c) that this coroutine polls
-- until it is done: `repeat cqueues.poll(p) until p:step()` (cqueues polls any object
-- with pollfd, events and timeout), so its sends, retries, Retry-After waits and reconcile's
-- wait are the loop's own waits. Returns exactly what client:create_case returns. Many
-- coroutines may share one client: each pending call has its own descriptor.
-- Outside a cqueues controller it raises rather than block: client:create_case is the
-- blocking call, and a blocking call hidden behind this name would stall a loop unseen.
-- Where the coroutine cannot yield (a C call is between it and the loop: a create_cases hook,
-- a logger, table.sort's comparator) it raises before anything is sent, on Lua 5.3, 5.4 and
-- LuaJIT, which can tell (coroutine.isyieldable); on 5.1 and 5.2 the yield itself raises
-- ("attempt to yield across a C-call boundary"), after the request was started: the pending
-- call is then collected unfinished, cancelled, with a log line when its request had left.
local cqueues = require "cqueues"
local acquire = require "acquire"

local running, poll = cqueues.running, cqueues.poll
local isyieldable = coroutine.isyieldable
local error, pcall, type, getmetatable = error, pcall, type, getmetatable

local M = { _VERSION = acquire._VERSION }

-- client:<method>(id, arg), raising as `fname` would: misuse names this function's arguments
-- (pcall calls the method as a plain function, so its argument numbers are ours).
local function start(fname, method, client, id, arg)
  if getmetatable(client) ~= "acquire.Client" then
    error(("bad argument #1 to '%s' (acquire client expected, got %s)"):format(fname, type(client)), 3)
  end
  if not running() then
    error(("acquire.cqueues.%s runs inside a cqueues controller (cq:wrap); outside one, "
      .. "client:%s is the blocking call"):format(fname, fname), 3)
  end
  if isyieldable and not isyieldable() then
    error(("acquire.cqueues.%s cannot yield here (a C call, such as a create_cases hook or a "
      .. "logger, is between this code and the loop); nothing was sent"):format(fname), 3)
  end
  local ok, p = pcall(client[method], client, id, arg)
  if not ok then
    if type(p) == "string" then
      p = p:gsub("^bad argument #(%d+) to '[^']*'", "bad argument #%1 to '" .. fname .. "'")
    end
    error(p, 3)
  end
  return p
end

-- Polls first: a call just started has sent nothing yet (its timeout is 0), so the loop runs
-- the other ready coroutines before this one's request leaves, and requests go out together.
local function wait(p)
  repeat poll(p) until p:step()
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
