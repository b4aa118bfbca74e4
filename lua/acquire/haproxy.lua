--- acquire.haproxy: create Acquire cases from HAProxy's Lua (actions, services, tasks)
-- without blocking its worker.
--
--   local client = require("acquire.haproxy").new{ base_url = "https://mycompany.acquire.io",
--                                                  api_key = key, via = "127.0.0.1:9443" }
--   local res, err = client:create_case(597752, { title = "Refund" })
--
-- Same options, returns and errors as acquire.ngx (a transport failure agrees in kind, status,
-- maybe_created and attempts; its message is this transport's own, err.code nil), over
-- HAProxy's core.tcp: every wait (connect, send, receive, a retry's sleep) yields to HAProxy.
-- Only bytes and time move here; the call's sequence is the C module's call engine
-- (acquire.engine), driven as acquire.ngx drives it. `timeout` bounds the whole call.
--
-- What HAProxy 2.6's Lua sockets force (doc/haproxy.md):
--   * Socket:connect_ssl never verifies the server's certificate (HAProxy's Lua socket server is
--     "verify none", with no SNI). A verified https target goes through `via`: the address of an
--     HAProxy listener (mode tcp) whose `server` line speaks TLS with `verify required`,
--     `ca-file` and `sni`; the driver speaks plain HTTP/1.1 to it. Without `via`, an https target
--     raises at new() unless `insecure = true` (then connect_ssl, unverified, as asked).
--   * core.tcp resolves no host name: without `via`, the target must be an IP literal.
--   * No proxy (HAProxy's Lua sockets cannot start TLS inside a CONNECT tunnel): a proxy from
--     the option or the environment raises at new() (`proxy = false` sets it aside).
--   * A socket belongs to the stream that made it: one connection per attempt, no pool.
-- Through `via`, bytes that reached the listener may have reached the server: any failure after
-- the request was written is maybe_created, as for any failure after sending.
-- luacheck: read globals core
if type(rawget(_G, "core")) ~= "table" or type(rawget(_G, "core").tcp) ~= "function" then
  error("acquire.haproxy needs HAProxy's Lua (core.tcp); outside HAProxy use acquire.new", 0)
end
local acquire = require "acquire"
local http1 = require "acquire.http1"                 -- HTTP/1.1's bytes
local driver = require "acquire.driver"               -- what every Lua driver shares
local read_response = http1.read_response

local core = core
local normalise, build_request, redact, new_engine =
  acquire.config, acquire.build_request, acquire.redact, acquire.engine
local find, sub, format = string.find, string.sub, string.format
local ceil = math.ceil
local error, pcall, pairs, type, tostring, setmetatable = error, pcall, pairs, type, tostring, setmetatable

local _M = { _VERSION = acquire._VERSION }

local function haproxy_version()
  local ok, info = pcall(core.get_info)
  local v = ok and type(info) == "table" and info.Version
  return type(v) == "string" and v:match("^[%w.%-+]+") or "unknown"
end
local USER_AGENT = "lua-acquire/" .. acquire._VERSION .. " haproxy/" .. haproxy_version()

local Client = {}
Client.__index = Client
Client.__metatable = "acquire.haproxy.Client"      -- getmetatable(client): its type, locked
local state = setmetatable({}, { __mode = "k" })   -- client -> its config, key and all (new())

function Client.__tostring(self)
  local st = state[self]
  local via = st and st.via and " via " .. st.via or ""
  return format("acquire.haproxy client (%s://%s%s)", st and st.scheme or "?", st and st.host_header or "?", via)
end

local function literal(host)                      -- an IP literal: core.tcp connects to nothing else
  return find(host, "^%[") ~= nil or find(host, "^%d+%.%d+%.%d+%.%d+$") ~= nil
end

local rethrow, log, attempt                       -- acquire.driver's and this file's, below

local function bad(option, why) error(format("bad option '%s' (%s)", option, why), 3) end

--- new(config) -> client. The options of acquire.new, checked by the same code, and `via`
-- (this transport's: an HAProxy address, "ip:port", "unix@/path", "abns@name"...); raises on
-- misuse, and on what HAProxy's Lua sockets cannot do (above).
function _M.new(config)
  if type(config) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(config) .. ")", 2)
  end
  if config.ca_file ~= nil then
    bad("ca_file", "not supported by acquire.haproxy: verify on the `server` line `via` reaches (ca-file)")
  end
  local via = config.via
  if via ~= nil and (type(via) ~= "string" or via == "" or find(via, "[%c%s]")) then
    bad("via", "an HAProxy address expected: \"ip:port\", \"unix@/path\", \"abns@name\"")
  end
  local options = {}                 -- as given, for build_request; the caller's table may change
  for k, v in pairs(config) do if k ~= "via" then options[k] = v end end
  local ok, st = pcall(normalise, options)
  if not ok then rethrow(st, "new") end
  if st.proxy then
    bad("proxy", format("not supported by acquire.haproxy: HAProxy's Lua sockets cannot tunnel "
      .. "through a proxy (this one from %s); proxy = false to go direct", st.proxy.from))
  end
  st.via = via
  st.options = options
  st.name = st.host:match("^%[(.*)%]$") or st.host
  if not via then
    if not literal(st.host) then
      bad("base_url", "acquire.haproxy without `via` connects to an IP literal only: core.tcp "
        .. "resolves no host name; give `via`, an HAProxy listener whose server line names the host")
    end
    if st.scheme == "https" and not st.insecure then
      bad("base_url", "HAProxy's Lua sockets cannot verify a certificate (Socket:connect_ssl is "
        .. "verify none): give `via`, an HAProxy listener whose server line verifies (ssl verify "
        .. "required ca-file ... sni ...), or insecure = true to go unverified")
    end
    st.tls = st.scheme == "https"                 -- and insecure: connect_ssl, as asked
  end
  st.headers = build_request(1, nil, options).headers
  st.engine = new_engine(options, function(level, text) return log(st, level, text) end)
  local self = setmetatable({}, Client)
  state[self] = st
  return self
end

-- ---- time -----------------------------------------------------------------------

local function clock()
  local t = core.now()
  return t.sec + t.usec / 1e6
end

-- The seconds left before deadline, set as sock's timeout for its next step (cap: at most
-- that): the time that step must end by; nil, "timeout" when less than 1 ms is left; nil,
-- "closed" when the peer has gone (HAProxy 2.6's settimeout raises "socket: not yet
-- initialised, you can't set timeouts." on a socket whose connection was reset: a read after
-- part of an answer came, say; the chaos spec, spec/35, found it).
local function arm(sock, deadline, cap)
  local t = clock()
  local s = deadline - t
  if cap and cap < s then s = cap end
  if s < 0.001 then return nil, "timeout" end
  if not pcall(sock.settimeout, sock, s) then return nil, "closed" end
  return t + s
end

-- HAProxy 2.6's sockets say "connection closed." for a close and for a timeout alike (and
-- "Can't connect" for both while connecting): a step that failed once its time was up timed out.
local function why(e, ends)
  if clock() >= ends - 0.001 then return "timeout" end
  if e == "connection closed." then return "closed" end
  return e
end

-- A response reader for acquire.http1. HAProxy's receive(n) waits for all n bytes (or the
-- close, then answers what came), so the reader asks for what http1 says it needs: a line,
-- exactly want bytes, or any to the close.
local function reader(sock, deadline)
  return { buf = "", more = function(want, how)
    local ends, gone = arm(sock, deadline)
    if not ends then return nil, gone end
    local data, e = sock:receive(how == "line" and "*l" or want)
    if not data then return nil, why(e, ends) end
    return how == "line" and data .. "\n" or data
  end }
end

-- ---- the log ----------------------------------------------------------------------

-- debug = true's lines at info: HAProxy prints core.debug's only when started with -d.
local LEVEL = { debug = "info", warn = "warning", error = "err" }

local function to_haproxy_log(level, text)
  core.log(core[LEVEL[level]] or core.info, "acquire: " .. text)
end

-- What every Lua driver shares (acquire.driver); this file gives it HAProxy's clock, sleep
-- (core.msleep, yielding to HAProxy), log and attempt.
local d = driver.new{ file = "haproxy", clock = clock, sleep = function(s) core.msleep(ceil(s * 1000)) end,
                      sink = to_haproxy_log, redact = redact,
                      attempt = function(st, req) return attempt(st, req) end }
rethrow, log = d.rethrow, d.log
local failed, io_failed = d.failed, d.io_failed

-- ---- one attempt: what it saw, for the engine -------------------------------------

-- A connection ready for the request: to `via`, or to the target (TLS unverified when asked).
-- true | nil, obs (nothing sent). A bad address raises in core.tcp: caught, a connect failure.
local function open(st, sock, deadline)
  local ok, e
  local ends, gone = arm(sock, deadline, st.connect_timeout)
  if ends then
    local called
    if st.via then
      called, ok, e = pcall(sock.connect, sock, st.via)
    else
      called, ok, e = pcall(st.tls and sock.connect_ssl or sock.connect, sock, st.name, st.port)
    end
    if not called then ok, e = nil, ok elseif not ok then e = why(e, ends) end
  else
    e = gone
  end
  if ok then return true end
  sock:close()
  local where = st.via and st.host_header .. " via " .. st.via or st.host_header
  if e == "timeout" then
    return nil, failed("connect", "connecting to " .. where .. " timed out", false, true)
  end
  return nil, failed("connect", format("could not connect to %s: %s", where, tostring(e)))
end

function attempt(st, req)
  local started = clock()
  local deadline = req.deadline or started + st.timeout
  local sock = core.tcp()
  local ok, o = open(st, sock, deadline)
  if not ok then return o end
  local ends, gone = arm(sock, deadline)
  if not ends then
    sock:close()
    if gone == "closed" then           -- reset before a byte was written: nothing can exist
      return io_failed(st, "send", "connection closed", "sending the request to", false)
    end
    return failed("send", format("timed out before sending (timeout %g s)", st.timeout), false, true)
  end
  local e
  ok, e = sock:send(http1.request(req, st.headers, {
    target = sub(req.url, #st.base_url + 1), host = st.host_header, user_agent = USER_AGENT }))
  if not ok or ok < 0 then               -- how much left cannot be told: the case may exist
    sock:close()
    return io_failed(st, "send", why(e or "connection closed.", ends), "sending the request to", true)
  end
  local status, headers, body = read_response(reader(sock, deadline), st.max_response_bytes)
  sock:close()
  if not status then
    e, status = headers, body
    if e == "too large" then
      o = failed("recv", nil, true, false, status)
      o.too_large = true
      return o
    end
    if e == "timeout" then return io_failed(st, "recv", e, "waiting for the response", true, status) end
    if e == "closed" then e = "connection closed" end
    return io_failed(st, "recv", e, "reading the response from", true, status)
  end
  local t = clock()
  return { now = t, status = status, headers = headers, body = body, elapsed = t - started, sent = true }
end

d.methods(Client, state)                          -- create_case, find_cases, close

return _M
