-- acquire-case's output: errors and exit statuses, stderr through acquire.redact, the
-- response as JSON (acquire.encode, the module's one writer) or a summary, a --batch
-- result line. Part of bin/acquire-case (doc/acquire-case.md).
local M = { PROG = "acquire-case" }

-- Exit statuses.
M.OK, M.USAGE, M.REJECTED, M.NETWORK, M.SERVER = 0, 2, 3, 4, 5
M.UNCERTAIN, M.INTERRUPTED = 6, 130

-- Errors: raised as tables { exit = N, msg = "..." } and caught by the launcher.
function M.fail(code, msg)
  error({ exit = code, msg = msg }, 0)
end

function M.usage_error(msg)
  M.fail(M.USAGE, msg .. " (see '" .. M.PROG .. " --help')")
end

-- Lua prefixes errors raised from Lua code with "chunk:line: ".
function M.strip_position(msg)
  return (tostring(msg):gsub("^[^%s:]+:%d+: ", ""))
end

-- One line: newlines and other control characters become spaces.
function M.one_line(s)
  return (tostring(s):gsub("%c", " "))
end

-- Ctrl-C: the interpreter's SIGINT handler makes the next Lua instruction raise
-- "interrupted!" (inside create_cases, in one of its callbacks: the batch stops there).
function M.is_interrupt(e)
  return type(e) == "string" and e:find("interrupted!$") ~= nil
end

-- pcall for the CLI's own checks (a decode, a build, an encode): it catches their errors, never
-- a Ctrl-C. The interpreter's hook fires at any call, so a Ctrl-C that landed inside one of them
-- was taken for its failure ("line 561: not a JSON object"); it goes on to the batch's stop.
local function passing_interrupts(ok, ...)
  if not ok and M.is_interrupt((...)) then error((...), 0) end
  return ok, ...
end
function M.try(f, ...)
  return passing_interrupts(pcall(f, ...))
end

-- The module, once loaded (M.use): its writer and its redaction. Before that, nothing
-- written to stderr has seen the key.
local acquire, secrets = nil, nil

function M.use(module)
  acquire = module
end

-- The key and, once acquire.config has read them, the proxy's credentials: taken out of
-- everything written to stderr by acquire.redact (raw and JSON-escaped forms).
function M.secrets(list)
  secrets = list
end

function M.say_error(msg)
  msg = M.one_line(msg)
  if acquire and secrets and secrets[1] and secrets[1] ~= "" then
    msg = acquire.redact(msg, (table.unpack or unpack)(secrets))
  end
  io.stderr:write(msg, "\n")
end

-- The exit status for an err of the module's.
function M.exit_code_for(err)
  local kind = type(err) == "table" and err.kind or nil
  local status = type(err) == "table" and tonumber(err.status) or nil
  if kind == "http" and status and status >= 400 and status < 500 then
    return M.REJECTED
  elseif kind == "network" or kind == "timeout" or kind == "tls" or kind == "proxy" then
    return M.NETWORK
  end
  return M.SERVER
end

-- ---------------------------------------------------------------------
-- The response.

local function str(v)
  if v == nil or type(v) == "userdata" then return "-" end   -- nil, null
  if type(v) == "number" then
    local ok, text = M.try(acquire.encode, v)
    return ok and text or "null"
  end
  return M.one_line(tostring(v))
end

local function tbl(v)
  if type(v) == "table" then return v end
  return {}
end

function M.summary(res)
  local case = tbl(res.data)
  local contact = tbl(case.contact)
  local fields = {}
  local ok, f = M.try(acquire.fields, contact)
  if ok and type(f) == "table" then fields = f end
  local visits = tbl(contact.visits)
  local last = visits[#visits]
  local lines = {
    "case: " .. str(case.id),
    "status: " .. str(case.status),
    "title: " .. str(case.title),
    "contact: " .. str(contact.id),
    "name: " .. str(fields.name),
    "ip: " .. str(fields.ip),
    "countryId: " .. str(fields.countryId),
    "visits: " .. #visits,
    "last visit: " .. str(type(last) == "table" and last.url or nil),
  }
  io.stdout:write(table.concat(lines, "\n"), "\n")
end

function M.print_json(res)
  local ok, text = M.try(acquire.encode, res)
  if not ok then M.fail(M.SERVER, "cannot print the response as JSON: " .. M.strip_position(text)) end
  io.stdout:write(text, "\n")
end

-- ---------------------------------------------------------------------
-- A --batch result: one JSON line, its keys in this order (those nil left out).
local RESULT_ORDER = { "line", "row", "contactId", "ok", "id", "case_status", "kind", "http_status", "type",
  "error", "maybe_created", "reconciled", "reconcile", "journal" }
local ORDER = { order = RESULT_ORDER }

-- r: the result's fields. Text from outside that is not UTF-8 (a server's message cut
-- short, say) has no JSON string: its bytes past ASCII become "?".
function M.result_line(r)
  local ok, text = M.try(acquire.encode, r, ORDER)
  if not ok then
    for k, v in pairs(r) do
      if type(v) == "string" then r[k] = v:gsub("[\128-\255]", "?") end
    end
    text = acquire.encode(r, ORDER)
  end
  return text .. "\n"
end

return M
