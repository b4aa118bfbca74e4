-- make bench, the HAProxy rows (issue 19): the two Lua services bench/haproxy.lua drives, loaded
-- into a real haproxy (Lua 5.3) by spec/haproxy.lua's launcher. Each creates one case a request
-- against a target and answers 200 with the case's id (500 with the error otherwise):
--   module_<t>: acquire.haproxy's client:create_case (one client for the process, as
--               examples/haproxy.lua has it);
--   raw_<t>:    the same POST written by hand over core.tcp: the same bytes (bench/haproxy.lua
--               compares them before it measures), the status line, the headers, the body by its
--               Content-Length, then cjson.decode of the body.
-- <t> is "bench" (ACQUIRE_BASE_URL, the nginx bench server) or "capture" (BENCH_CAPTURE_URL, a
-- listener of bench/haproxy.lua's that records the request). Both ways open one connection a
-- request and close it after the body: an HAProxy 2.6 Lua socket cannot outlive the stream that
-- made it, so neither can keep it alive; both send `Connection: keep-alive` (the module's header).
-- luacheck: read globals core
local cjson = require "cjson"
local acquire = require "acquire"
local acquire_haproxy = require "acquire.haproxy"

local KEY = os.getenv("ACQUIRE_API_KEY")
local CONTACT = 597752
local TITLE, MESSAGE = "Refund", "I'm reopening the closed case"
local OPTS = { title = TITLE, message = MESSAGE }
local format, concat = string.format, table.concat

local function reply(applet, status, text)
  applet:set_status(status)
  applet:add_header("content-type", "text/plain")
  applet:add_header("content-length", tostring(#text))
  applet:start_response()
  applet:send(text)
end

local function answer(applet, res, err)
  if res then return reply(applet, 200, format("%d", res.data.id)) end   -- raw's is a float (cjson on 5.3)
  core.log(core.err, "bench: " .. tostring(err))
  reply(applet, 500, tostring(err))
end

-- The User-Agent acquire.haproxy sends (it is part of "the same bytes").
local ok_info, info = pcall(core.get_info)
local UA = "lua-acquire/" .. acquire._VERSION .. " haproxy/"
  .. (ok_info and type(info) == "table" and type(info.Version) == "string"
      and info.Version:match("^[%w.%-+]+") or "unknown")

-- The hand-written POST: request bytes built a call, as a script would (cjson for the strings).
local function raw_case(host, port)
  local head = "POST /api/v1/crm/messenger/chat/create?contactId=%d HTTP/1.1\r\n"
    .. "Host: " .. host .. ":" .. port .. "\r\n"
    .. "Content-Type: application/json\r\nAccept: application/json\r\n"
    .. "Authorization: Bearer " .. KEY .. "\r\n"
    .. "User-Agent: " .. UA .. "\r\n"
    .. "Content-Length: %d\r\nConnection: keep-alive\r\n\r\n"
  return function(contact, title, message)
    local body = concat{ '{"title":', cjson.encode(title), ',"message":{"type":"message","message":',
                         cjson.encode(message), ',"translateLangKey":""}}' }
    local sock = core.tcp()
    sock:settimeout(5)
    local function fail(why)
      sock:close()
      return nil, why
    end
    if not sock:connect(host, port) then return fail("connect failed") end
    if not sock:send(format(head, contact, #body) .. body) then return fail("send failed") end
    local line = sock:receive("*l")
    local status = line and tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
    if not status then return fail("no status line") end
    local length
    while true do
      local h = sock:receive("*l")
      if not h then return fail("the headers ended early") end
      h = h:gsub("\r$", "")
      if h == "" then break end
      local name, value = h:match("^([^:]+):%s*(.-)%s*$")
      if name and name:lower() == "content-length" then length = tonumber(value) end
    end
    if not length then return fail("no Content-Length") end
    local body_in = length > 0 and sock:receive(length) or ""
    sock:close()
    if not body_in or #body_in ~= length then return nil, "the body ended early" end
    if status ~= 200 then return nil, "status " .. status end
    return cjson.decode(body_in)
  end
end

for t, base in pairs{ bench = os.getenv("ACQUIRE_BASE_URL"), capture = os.getenv("BENCH_CAPTURE_URL") } do
  local client = acquire_haproxy.new{ base_url = base, api_key = KEY, timeout = 5 }
  core.register_service("module_" .. t, "http", function(applet)
    answer(applet, client:create_case(CONTACT, OPTS))
  end)
  local host, port = base:match("^http://([%d.]+):(%d+)$")
  local raw = raw_case(host, tonumber(port))
  core.register_service("raw_" .. t, "http", function(applet)
    answer(applet, raw(CONTACT, TITLE, MESSAGE))
  end)
end
