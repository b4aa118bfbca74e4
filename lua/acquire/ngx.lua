--- acquire.ngx: create Acquire cases from inside nginx/OpenResty without blocking it.
--
--   local client = require("acquire.ngx").new{ account_id = "mycompany", api_key = key }
--   local res, err = client:create_case(597752, { title = "Refund" })  -- content, access, timer...
--
-- Same options and returns as acquire.new (README), over ngx.socket.tcp cosockets, and the
-- same errors as far as the API's answer goes (an http or decode err is field for field the
-- libcurl client's); a transport failure (network, timeout, tls) agrees in kind, status,
-- maybe_created and attempts, but its message is this transport's own and err.code is nil.
-- Through a proxy (acquire.config decides which, if any): a CONNECT tunnel to an https target,
-- pooled like any connection under a name that holds the proxy and the target; the absolute
-- form to an http one. The log's lines (debug, logger) are the libcurl client's, word for word.
-- `timeout` bounds the whole call here (DNS, connect, the proxy's leg, TLS, send, response, and
-- the retries with their waits), so a request handler knows how long it can be held.
-- Never call the libcurl client (acquire.new) in a request handler: curl_easy_perform blocks
-- the whole worker, and every request that worker serves, for as long as the call takes.
-- Here every wait yields to nginx's event loop. Only bytes and time move here: the call's
-- sequence (attempts, retries, the deadline, reconcile, every log line and error text) is the
-- C module's call engine (acquire.engine), which this file drives: it answers "send" (a
-- request), "wait" (seconds) or "done" (res | nil, err), and is told what each step saw.
-- Outside nginx there is no cosocket to move bytes with: one line that says so, rather than
-- "module 'ngx.semaphore' not found" and a search path.
if type(rawget(_G, "ngx")) ~= "table" or type(rawget(_G, "ngx").socket) ~= "table" then
  error("acquire.ngx needs nginx's Lua (ngx_lua/OpenResty); outside nginx use acquire.new", 0)
end
local acquire = require "acquire"
local semaphore = require "ngx.semaphore"             -- lua-resty-core's
local http1 = require "acquire.http1"                 -- HTTP/1.1's bytes
local driver = require "acquire.driver"               -- what every Lua driver shares
local read_head, read_response = http1.read_head, http1.read_response

local ngx = ngx
local tcp, sleep, now, update_time = ngx.socket.tcp, ngx.sleep, ngx.now, ngx.update_time
local spawn, wait, kill = ngx.thread.spawn, ngx.thread.wait, ngx.thread.kill
local normalise, build_request, redact, new_engine =
  acquire.config, acquire.build_request, acquire.redact, acquire.engine
local find, sub, format = string.find, string.sub, string.format
local floor, min, max = math.floor, math.min, math.max
local error, pcall, pairs, type, tonumber, tostring, setmetatable =
  error, pcall, pairs, type, tonumber, tostring, setmetatable

local _M = { _VERSION = acquire._VERSION }

local KEEPALIVE_MS = 30000     -- idle time of a pooled connection
local POOL_SIZE = 32           -- pooled connections per pool and worker
local LOG_LINE = 1024          -- bytes per ngx.log call: nginx cuts a line at 2 KiB

local function version(v)                       -- 10023 -> "0.10.23"
  v = tonumber(v)
  if not v then return "unknown" end
  return format("%d.%d.%d", floor(v / 1000000), floor(v / 1000) % 1000, v % 1000)
end
local USER_AGENT = "lua-acquire/" .. acquire._VERSION .. " ngx_lua/"
  .. version(ngx.config and ngx.config.ngx_lua_version)

local Client = {}
Client.__index = Client
Client.__metatable = "acquire.ngx.Client"          -- getmetatable(client): its type, locked
local state = setmetatable({}, { __mode = "k" })   -- client -> its config, key and all (new())

function Client.__tostring(self)
  local st = state[self]
  local via = st and st.proxy and " via proxy " .. st.proxy.display or ""   -- never its credentials
  return format("acquire.ngx client (%s://%s%s)", st and st.scheme or "?", st and st.host_header or "?", via)
end

local function literal(host)                      -- an IP literal: connected to without DNS
  return find(host, "^%[") ~= nil or find(host, "^%d+%.%d+%.%d+%.%d+$") ~= nil
end

local rethrow, log, attempt                       -- acquire.driver's and this file's, below

--- new(config) -> client. The options of acquire.new, checked by the same code; raises on misuse.
-- ca_file raises: a cosocket verifies against nginx's lua_ssl_trusted_certificate only.
-- The client's state is acquire.config's normalised table (defaults, scheme, host, port,
-- host_header...), plus what only this transport needs.
function _M.new(config)
  if type(config) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(config) .. ")", 2)
  end
  if config.ca_file ~= nil then
    error("bad option 'ca_file' (not supported by acquire.ngx: nginx verifies with "
      .. "lua_ssl_trusted_certificate)", 2)
  end
  local ok, st = pcall(normalise, config)
  if not ok then rethrow(st, "new") end
  local options = {}                 -- as given, for build_request; the caller's table may change
  for k, v in pairs(config) do options[k] = v end
  local host = st.host               -- as connect wants it (an IPv6 literal in brackets)
  st.options = options
  st.name = host:match("^%[(.*)%]$") or host                        -- verified, sent as SNI
  st.literal = literal(host)
  st.verify = not st.insecure
  st.connect_ms = max(1, floor(min(st.connect_timeout, st.timeout) * 1000))
  -- The pool's name says everything a pooled connection commits to: the target, the TLS
  -- verification it was made with, and the proxy with its credentials (as a digest: the pool's
  -- name is no place for a password). A tunnel never serves another host, setting or proxy.
  local via = "direct"
  local proxy = st.proxy
  if proxy then
    proxy.literal = literal(proxy.host)
    -- an http target's request goes to the proxy whole, on a connection of its own each time:
    -- proxies close after forwarding one, and a request written into a pooled connection the
    -- proxy is closing could not be told from one it forwarded
    st.absolute = st.proxy_mode == "plain"        -- acquire.config decides, as for the C client
    via = format("proxy=%s:%s", proxy.url, proxy.authorization
      and ngx.encode_base64(ngx.sha1_bin(proxy.authorization)) or "-")
  end
  st.connect_opts = { pool = format("acquire:%s:%s:%d:%s:%s:%s", st.scheme, host, st.port, st.name,
                                    st.verify and "verify" or "noverify", via) }
  -- the request's headers, the same for every call (contactId and opts change the url and body)
  st.headers = build_request(1, nil, options).headers
  -- the call engine: this client's calls, their claims and those still in flight
  st.engine = new_engine(options, function(level, text) return log(st, level, text) end)
  local self = setmetatable({}, Client)
  state[self] = st
  return self
end

-- ---- the call's deadline ------------------------------------------------------

local function clock()                            -- now, not the cached time of this tick
  update_time()
  return now()
end

-- The milliseconds left before deadline, set as sock's timeout for its next step; nil when
-- less than 1 ms is left (a timeout of 0 would mean nginx's default): that step times out.
local function arm(sock, deadline)
  local ms = floor((deadline - clock()) * 1000)
  if ms < 1 then return nil end
  sock:settimeout(ms)
  return ms
end

-- A response reader for acquire.http1: up to want bytes within the call's deadline.
local function reader(sock, deadline)
  return { buf = "", more = function(want)
    if not arm(sock, deadline) then return nil, "timeout" end
    return sock:receiveany(want)
  end }
end

-- ---- the log ------------------------------------------------------------------

local LEVEL = { debug = ngx.DEBUG, warn = ngx.WARN, error = ngx.ERR }

-- The default destination: nginx's error log, "acquire: " first, in pieces nginx will not cut.
local function to_error_log(level, text)
  for i = 1, #text, LOG_LINE do
    ngx.log(LEVEL[level], "acquire: ", i > 1 and "... " or "", sub(text, i, i + LOG_LINE - 1))
  end
end

-- What every Lua driver shares (acquire.driver): the log's rule, the failure's observation,
-- the loop that drives a call, the client's methods; this file gives it nginx's clock, sleep,
-- error log and attempt.
local d = driver.new{ file = "ngx", clock = clock, sleep = sleep, sink = to_error_log, redact = redact,
                      attempt = function(st, req) return attempt(st, req) end }
rethrow, log = d.rethrow, d.log
local failed, io_failed = d.failed, d.io_failed

-- ---- one attempt: what it saw, for the engine -------------------------------------
-- An observation: { now, status, headers, body, elapsed } for an answer; else { now, stage,
-- detail, sent, timeout, status, proxy_status, too_large }. The engine words the error.

-- sock:connect to peer (the target, or the proxy) within ms. A host name goes through nginx's
-- resolver, whose wait is its resolver_timeout (30 s by default), not the socket's timeouts:
-- then a light thread connects and is killed if ms pass first (killing it cancels the
-- resolution or the connect). The parent may use the socket afterwards: a cosocket belongs to
-- its request, not to a thread.
local function connect(st, peer, sock, ms)
  if peer.literal then return sock:connect(peer.host, peer.port, st.connect_opts) end
  local done = semaphore.new()
  local th, e = spawn(function()
    local called, ok, err = pcall(sock.connect, sock, peer.host, peer.port, st.connect_opts)
    done:post(1)
    if not called then return nil, tostring(ok) end
    return ok, err
  end)
  if not th then return nil, e end
  if not done:wait(ms / 1000) then
    if not kill(th) then wait(th) end        -- it ended just now: reap it all the same
    sock:close()
    return nil, "timeout"
  end
  local _, ok, err = wait(th)                -- it has ended: its results, and it is reaped
  return ok, err
end

-- The tunnel to the target through the proxy, on a fresh connection to it: CONNECT, and its
-- answer's head (a 2xx has no body; then the connection is the target's). true | nil, obs
local function tunnel(st, sock, deadline)
  local proxy, authority = st.proxy, st.host .. ":" .. st.port
  local auth = proxy.authorization and "Proxy-Authorization: " .. proxy.authorization .. "\r\n" or ""
  if not arm(sock, deadline) then return nil, failed("proxy", "timed out before CONNECT") end
  local ok, e = sock:send(format("CONNECT %s HTTP/1.1\r\nHost: %s\r\n%sUser-Agent: %s\r\n\r\n",
                                 authority, authority, auth, st.user_agent or USER_AGENT))
  if ok then
    local r = reader(sock, deadline)
    local status, head_err = read_head(r)
    if status and status >= 200 and status < 300 then
      if r.buf == "" then return true end        -- the target speaks after the client, in TLS
      return nil, failed("proxy", "sent bytes after its answer to CONNECT")
    end
    if status then
      local o = failed("proxy_answer")
      o.proxy_status = status
      return nil, o
    end
    e = head_err
  end
  if e == "timeout" then
    return nil, failed("proxy", format("no answer to CONNECT in time (timeout %g s)", st.timeout))
  end
  if e == "closed" then return nil, failed("proxy", "closed the tunnel before answering CONNECT") end
  return nil, failed("proxy", format("bad answer to CONNECT (%s)", tostring(e)))
end

-- sock:sslhandshake, whose lua-resty-core (Debian's; fixed upstream in its PR 500) raises
-- "assertion failed!" when a handshake that ended at once failed (a certificate nginx does
-- not trust, on loopback): that is a failed handshake like any other, not a raise.
local function handshake(sock, st)
  local okp, ok, e = pcall(sock.sslhandshake, sock, nil, st.name, st.verify)
  if okp then return ok, e end
  return nil, "the handshake ended at once with an error lua-resty-core could not read ("
    .. tostring(ok):gsub("^.-([^/]+:%d+: )", "%1") .. ")"
end

-- A connection ready for the request: from the pool as it was left, or new: connected (to
-- the proxy, when there is one), tunnelled through it (an https target), TLS verified end to
-- end with the target. true | nil, obs (sock closed, nothing sent)
local function open(st, sock, deadline)
  local proxy = st.proxy
  local ms = arm(sock, deadline)
  local ok, e
  if ms then
    local cms = min(st.connect_ms, ms)
    sock:settimeouts(cms, ms, ms)
    ok, e = connect(st, proxy or st, sock, cms)
  else
    e = "timeout"
  end
  if not ok then
    sock:close()
    if proxy then return nil, failed("proxy_connect", e == "timeout" and "timed out" or tostring(e)) end
    if e == "timeout" then
      return nil, failed("connect", "connecting to " .. st.host_header .. " timed out", false, true)
    end
    return nil, failed("connect", format("could not connect to %s: %s", st.host_header, tostring(e)))
  end
  if st.scheme ~= "https" or sock:getreusedtimes() > 0 then return true end
  if proxy then
    ok, e = tunnel(st, sock, deadline)
    if not ok then
      sock:close()
      return nil, e
    end
  end
  if not arm(sock, deadline) then e = "timeout" else ok, e = handshake(sock, st) end
  if ok then return true end
  sock:close()
  if e == "timeout" then
    return nil, failed("tls", format("TLS handshake with %s timed out", st.host_header), false, true)
  end
  return nil, failed("tls", format("TLS handshake with %s failed: %s", st.host_header, tostring(e)))
end

-- One attempt of the engine's request: what it saw.
function attempt(st, req)
  local started = clock()
  local deadline = req.deadline or started + st.timeout
  local sock = tcp()
  local ok, o = open(st, sock, deadline)
  if not ok then return o end
  if not arm(sock, deadline) then
    sock:close()
    return failed("send", format("timed out before sending (timeout %g s)", st.timeout), false, true)
  end
  local e
  ok, e = sock:send(http1.request(req, st.headers, {
    target = st.absolute and req.url or sub(req.url, #st.base_url + 1),   -- base_url .. target
    host = st.host_header, user_agent = USER_AGENT,
    proxy_authorization = st.absolute and st.proxy.authorization or nil }))
  if not ok then                        -- a cosocket cannot tell how much left: the case may exist
    sock:close()
    return io_failed(st, "send", e, "sending the request to", true)
  end
  local status, headers, body, reuse = read_response(reader(sock, deadline), st.max_response_bytes)
  if not status then
    sock:close()
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
  -- a plain proxy closes after forwarding one request
  if reuse and not st.absolute then sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE) else sock:close() end
  local t = clock()
  return { now = t, status = status, headers = headers, body = body, elapsed = t - started, sent = true }
end

d.methods(Client, state)                          -- create_case, find_cases, close

return _M
