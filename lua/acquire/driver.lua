--- acquire.driver: what every Lua driver of the call engine shares (acquire.ngx, acquire.haproxy;
-- acquire.loop names misuse by its rename too).
-- A host gives its clock, its sleep, its log's destination and its attempt (the bytes of one
-- request over its sockets -> an observation); this gives back the rest, once for all hosts:
-- the loop that drives a call (acquire.engine's "send" / "wait" / "done"), the client's
-- create_case / find_cases / close with misuse raised at the caller's level, the log's rule (a
-- logger that raises changes nothing for the call) and a failure's observation. No I/O here.
local format, tostring, type, error, pcall = string.format, tostring, type, error, pcall
local unpack = table.unpack or unpack

local M = {}

--- M.rename(msg, fname): a misuse message of the C module's ("bad argument #N to 'x' (...)")
-- as fname's own, for a Lua function that calls the C one with the same arguments.
function M.rename(msg, fname)
  return (msg:gsub("^bad argument #(%d+) to '[^']*'", "bad argument #%1 to '" .. fname .. "'"))
end

--- M.new{ file = "ngx", clock = fn, sleep = fn(seconds), sink = fn(level, text),
--         attempt = fn(st, req) -> obs, redact = acquire.redact } -> d
function M.new(host)
  local clock, sleep, sink, redact = host.clock, host.sleep, host.sink, host.redact
  local strip = "^[^\n]-" .. host.file .. "%.lua:%d+: "
  local d = {}

  -- A raise from the engine or the config's check, as the C client's would read, at the
  -- level of the caller of the function that calls this (create_case, new...).
  function d.rethrow(msg, fname)
    if type(msg) == "string" then
      msg = M.rename(msg:gsub(strip, ""):gsub("^[^\n]-driver%.lua:%d+: ", ""), fname)
    end
    error(msg, 3)
  end

  -- One line of the engine's (worded and redacted there), to the logger or the host's log.
  -- A logger that raises: its error (redacted) and the line go to the host's log.
  function d.log(st, level, text)
    local logger = st.logger
    if not logger then return sink(level, text) end
    local ok, e = pcall(logger, level, text)
    if not ok then
      local shown, msg = pcall(tostring, e)
      sink("error", "logger raised: " .. redact(shown and msg or "(an error tostring raises on)",
                                               unpack(st.secrets)))
      sink(level, text)
    end
  end

  -- An observation of a failure: { now, stage, detail, sent, timeout, status }.
  function d.failed(stage, detail, sent, timeout, status)
    return { now = clock(), stage = stage, detail = detail, sent = sent, timeout = timeout,
             status = status }
  end

  -- A socket's error e while doing something to the target: a timeout, or its own words.
  function d.io_failed(st, stage, e, doing, sent, status)
    if e == "timeout" then
      return d.failed(stage, format("timed out %s (timeout %g s)", doing, st.timeout), sent, true, status)
    end
    return d.failed(stage, format("%s %s: %s", doing, st.host_header, tostring(e)), sent, false, status)
  end

  -- The engine's call, driven to its end: its requests sent, its waits slept (the host's
  -- sleep, which yields to its event loop). res | nil, err
  local function drive(st, call)
    local action, a, b = call:next({ now = clock() })
    while action ~= "done" do
      local obs
      if action == "wait" then
        sleep(a)
        obs = { now = clock() }
      else
        obs = host.attempt(st, a)
      end
      action, a, b = call:next(obs)
    end
    return a, b
  end

  -- The client's methods over the state table (client -> its state, with st.engine).
  function d.methods(Client, state)
    local function checked(self, fname)
      local st = state[self]
      if not st then error(format("bad argument #1 to '%s' (client expected; call client:%s)", fname, fname), 3) end
      if st.closed then error("client is closed", 3) end
      return st
    end

    --- client:create_case(contactId, opts) -> res | nil, err: as acquire's (README).
    function Client:create_case(contactId, opts)
      local st = checked(self, "create_case")
      local engine = st.engine
      local ok, call = pcall(function()          -- misuse raises, nothing sent (no tail call: the
        local c = engine:create_case(contactId, opts)   -- message counts contactId as #1)
        return c
      end)
      if not ok then d.rethrow(call, "create_case") end
      return drive(st, call)
    end

    --- client:find_cases(contactId [, filter]) -> { case, ... } | nil, err: as acquire's (README).
    function Client:find_cases(contactId, filter)
      local st = checked(self, "find_cases")
      local engine = st.engine
      local ok, call = pcall(function()
        local c = engine:find_cases(contactId, filter)
        return c
      end)
      if not ok then d.rethrow(call, "find_cases") end
      return drive(st, call)
    end

    --- client:close(): as acquire's (idempotent).
    function Client:close()
      local st = state[self]
      if st then st.closed = true end
    end
  end

  return d
end

return M
