--- acquire.loop: what the event-loop drivers share (acquire.cqueues, acquire.luv). A client's calls
-- on one loop run in one group of pending calls (client:group(), src/group.c): one multi handle
-- and one descriptor for all of them, made on the loop's first call and kept while the client and
-- the loop live. A call starts in it as the driver's own function: misuse raises naming that
-- function's arguments, before anything is sent. No I/O here.
local setmetatable, getmetatable, pcall, error, type = setmetatable, getmetatable, pcall, error, type
local rename = require("acquire.driver").rename    -- (the rule every Lua driver names misuse by)

local M = {}

--- set = M.groups(init): each client's group on each loop, as the driver keeps it:
--    set.find(client, loop) -> its state, or nil; set.make(client, loop) -> a new one,
--    init(client:group(), loop) (raises as client:group() does: a closed client).
-- Weak both ways: a group holds its client only weakly, and a pending call holds it while it runs.
function M.groups(init)
  local states = setmetatable({}, { __mode = "k" })
  local set = {}
  function set.find(client, loop)
    local by = states[client]
    return by and by[loop]
  end
  function set.make(client, loop)
    local by = states[client]
    if not by then
      by = setmetatable({}, { __mode = "k" })
      states[client] = by
    end
    local st = init(client:group(), loop)
    by[loop] = st
    return st
  end
  return set
end

--- M.check_client(client, fname): raises at the caller of fname (two levels above the caller of
-- this) unless client is an acquire client.
function M.check_client(client, fname)
  if getmetatable(client) ~= "acquire.Client" then
    error(("bad argument #1 to '%s' (acquire client expected, got %s)"):format(fname, type(client)), 4)
  end
end

--- st, p = M.start(set, loop, fname, method, client, id, arg): g:<method>(id, arg) in client's
-- group on loop (made if none), raising at the caller of fname as fname would (pcall calls the
-- method as a plain function, so its argument numbers are fname's).
function M.start(set, loop, fname, method, client, id, arg)
  local ok, p
  local st = set.find(client, loop)
  if st then ok = true else ok, st = pcall(set.make, client, loop) end
  if ok then ok, p = pcall(st.g[method], st.g, id, arg) else p = st end
  if not ok then
    if type(p) == "string" then p = rename(p, fname) end
    error(p, 4)
  end
  return st, p
end

return M
