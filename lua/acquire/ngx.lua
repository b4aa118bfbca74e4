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
-- Here every wait yields to nginx's event loop. Only the bytes move here: the request, the
-- result and the retry decision are the C module's (build_request, decode_response, retry_after),
-- and so is every option: the client's state is acquire.config's normalised table.
-- Outside nginx there is no cosocket to move bytes with: one line that says so, rather than
-- "module 'ngx.semaphore' not found" and a search path.
if type(rawget(_G, "ngx")) ~= "table" or type(rawget(_G, "ngx").socket) ~= "table" then
  error("acquire.ngx needs nginx's Lua (ngx_lua/OpenResty); outside nginx use acquire.new", 0)
end
local acquire = require "acquire"
local semaphore = require "ngx.semaphore"             -- lua-resty-core's

local ngx = ngx
local tcp, sleep, now, update_time = ngx.socket.tcp, ngx.sleep, ngx.now, ngx.update_time
local spawn, wait, kill = ngx.thread.spawn, ngx.thread.wait, ngx.thread.kill
local normalise, build_request, decode_response, retry_after, redact =
  acquire.config, acquire.build_request, acquire.decode_response, acquire.retry_after, acquire.redact
local build_list_request, match_cases, sent_filter, settle =
  acquire.build_list_request, acquire.match_cases, acquire.sent_filter, acquire.settle
local proxy_answered, new_claims, claim = acquire.proxy_answered, acquire.claims, acquire.claim
local concat, sort, unpack = table.concat, table.sort, table.unpack or unpack
local find, sub, lower, byte, format = string.find, string.sub, string.lower, string.byte, string.format
local floor, min, max = math.floor, math.min, math.max
local error, pcall, pairs, ipairs, type, tonumber, tostring, setmetatable, getmetatable =
  error, pcall, pairs, ipairs, type, tonumber, tostring, setmetatable, getmetatable

local _M = { _VERSION = acquire._VERSION }

local KEEPALIVE_MS = 30000     -- idle time of a pooled connection
local POOL_SIZE = 32           -- pooled connections per pool and worker
local HEAD_MAX = 65536         -- status line and headers
local LINE_MAX = 4096          -- a chunk-size or trailer line
local READ_MAX = 65536         -- bytes asked of one receiveany
local BODY_LOG_MAX = 16384     -- bytes of a body in one log line (debug = "body")
local LOG_LINE = 1024          -- bytes per ngx.log call: nginx cuts a line at 2 KiB

-- err tables carry the module's own metatable, so tostring(err) reads the same everywhere
local ERR_MT = getmetatable(select(2, decode_response(500, nil, "")))

local function fail(kind, message, maybe_created, status)
  return setmetatable({ kind = kind, message = message, maybe_created = maybe_created,
                        status = status }, ERR_MT)
end

-- A failure on the way to the proxy or of the proxy itself: nothing reached Acquire. The
-- message names the proxy by its display form (never its credentials), as the libcurl
-- client's does: "proxy http://127.0.0.1:3128: answered CONNECT with 407".
local function proxy_fail(st, proxy_status, fmt, ...)
  local err = fail("proxy", "proxy " .. st.proxy.display .. ": " .. format(fmt, ...), false)
  err.proxy_status = proxy_status
  return err
end

local function version(v)                       -- 10023 -> "0.10.23"
  v = tonumber(v)
  if not v then return "unknown" end
  return format("%d.%d.%d", floor(v / 1000000), floor(v / 1000) % 1000, v % 1000)
end
local USER_AGENT = "lua-acquire/" .. acquire._VERSION .. " ngx_lua/"
  .. version(ngx.config and ngx.config.ngx_lua_version)

-- A raise from the seam, as create_case/new would raise it, at the caller's level.
local function rethrow(msg, fname)
  if type(msg) == "string" then
    msg = msg:gsub("^[^\n]-ngx%.lua:%d+: ", "")
             :gsub("^bad argument #(%d+) to '[^']*'", "bad argument #%1 to '" .. fname .. "'")
  end
  error(msg, 3)
end

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
    st.absolute = st.scheme == "http"
    via = format("proxy=%s:%s", proxy.url, proxy.authorization
      and ngx.encode_base64(ngx.sha1_bin(proxy.authorization)) or "-")
  end
  st.connect_opts = { pool = format("acquire:%s:%s:%d:%s:%s:%s", st.scheme, host, st.port, st.name,
                                    st.verify and "verify" or "noverify", via) }
  st.claims = new_claims()           -- the case ids this client's calls have (reconcile)
  st.inflight = {}                   -- content_key -> calls of it whose answer is to come
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

-- ---- reading a response, within the call's deadline -------------------------
-- r = { sock, buf (read, not yet used), deadline }

-- Up to READ_MAX more bytes: data, or nil and the cosocket's error ("timeout", "closed"...).
local function more(r, want)
  if not arm(r.sock, r.deadline) then return nil, "timeout" end
  return r.sock:receiveany(want or READ_MAX)
end

local function line(r, limit)                     -- one line, without its CRLF
  local from = 1
  while true do
    local i = find(r.buf, "\n", from, true)
    if i then
      local l = sub(r.buf, 1, i - 1)
      r.buf = sub(r.buf, i + 1)
      if byte(l, -1) == 13 then l = sub(l, 1, -2) end
      return l
    end
    if #r.buf > limit then return nil, "line too long" end
    from = #r.buf + 1
    local data, e = more(r)
    if not data then return nil, e end
    r.buf = r.buf .. data
  end
end

local function take(r, n, parts)                  -- exactly n bytes into parts
  local buf = r.buf
  if #buf >= n then
    parts[#parts + 1] = sub(buf, 1, n)
    r.buf = sub(buf, n + 1)
    return true
  end
  parts[#parts + 1] = buf
  n = n - #buf
  r.buf = ""
  while n > 0 do
    local data, e = more(r, n < READ_MAX and n or READ_MAX)
    if not data then return nil, e end
    parts[#parts + 1] = data
    n = n - #data
  end
  return true
end

local function read_chunked(r, limit)
  local parts, total = {}, 0
  while true do
    local l, e = line(r, LINE_MAX)
    if not l then return nil, e end
    local hex, rest = l:match("^[ \t]*(%x+)(.*)$")           -- then ";ext=..." maybe
    if not hex or not (rest:match("^[ \t]*$") or rest:match("^[ \t]*;")) then
      return nil, "bad chunk size line"
    end
    local size = #hex <= 12 and tonumber(hex, 16) or math.huge
    if size == 0 then                                         -- trailers, then the end
      for _ = 1, 100 do
        l, e = line(r, LINE_MAX)
        if not l then return nil, e end
        if l == "" then return concat(parts) end
      end
      return nil, "too many trailers"
    end
    total = total + size
    if total > limit then return nil, "too large" end
    local ok
    ok, e = take(r, size, parts)
    if not ok then return nil, e end
    l, e = line(r, 2)
    if not l then return nil, e end
    if l ~= "" then return nil, "bad chunk" end
  end
end

local function read_to_close(r, limit)
  local parts, total = { r.buf }, #r.buf
  r.buf = ""
  while true do
    if total > limit then return nil, "too large" end
    local data, e = more(r)
    if not data then
      if e == "closed" then return concat(parts) end
      return nil, e
    end
    parts[#parts + 1] = data
    total = total + #data
  end
end

-- A response's status line and headers: status, headers (lowercase names), HTTP/1.0?;
-- or nil, error, status. 1xx answers are skipped.
local function read_head(r)
  local status, http10, headers
  repeat
    local l, e = line(r, HEAD_MAX)
    if not l then return nil, e end
    local minor, code = l:match("^HTTP/1%.([01]) (%d%d%d)")
    if not code then return nil, "not an HTTP/1.x response" end
    status, http10, headers = tonumber(code), minor == "0", {}
    local budget, last = HEAD_MAX, nil
    while true do
      l, e = line(r, budget)
      if not l then return nil, e, status end
      if l == "" then break end
      budget = budget - #l - 2
      if budget < 0 then return nil, "response head too large", status end
      if last and find(l, "^[ \t]") then                      -- obsolete line folding
        headers[last] = headers[last] .. " " .. l:match("^[ \t]*(.-)[ \t]*$")
      else
        local name, value = l:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
        if not name then return nil, "bad header line", status end
        name = lower(name)
        local had = headers[name]
        if had and name == "content-length" and had ~= value then
          return nil, "conflicting Content-Length", status
        end
        headers[name] = had and name ~= "content-length" and had .. ", " .. value or value
        last = name
      end
    end
  until status >= 200 or status == 101
  return status, headers, http10
end

-- Status, headers (lowercase names), body, reusable; or nil, error, status.
local function read_response(r, limit)
  local status, headers, http10 = read_head(r)
  if not status then return nil, headers, http10 end
  local conn = lower(headers["connection"] or "")
  local reuse = not find(conn, "close", 1, true) and (not http10 or find(conn, "keep-alive", 1, true))
  local body, e
  local te, cl = headers["transfer-encoding"], headers["content-length"]
  if status == 204 or status == 304 or status < 200 then
    body = ""
  elseif te then
    if find(lower(te), "chunked%s*$") then
      body, e = read_chunked(r, limit)
    else
      reuse = false
      body, e = read_to_close(r, limit)
    end
  elseif cl then
    local n = cl:match("^%d+$") and tonumber(cl)
    if not n then return nil, "bad Content-Length", status end
    if n > limit then return nil, "too large", status end
    local parts = {}
    body, e = take(r, n, parts)
    body = body and concat(parts)
  else
    reuse = false
    body, e = read_to_close(r, limit)
  end
  if not body then return nil, e, status end
  return status, headers, body, reuse and r.buf == ""
end

-- ---- the log ------------------------------------------------------------------

local LEVEL = { debug = ngx.DEBUG, warn = ngx.WARN, error = ngx.ERR }

-- The default destination: nginx's error log, "acquire: " first, in pieces nginx will not cut.
local function to_error_log(level, text)
  for i = 1, #text, LOG_LINE do
    ngx.log(LEVEL[level], "acquire: ", i > 1 and "... " or "", sub(text, i, i + LOG_LINE - 1))
  end
end

-- One line, whole through acquire.redact (every secret: the key, the proxy's credentials),
-- to the logger, or to nginx's error log. A logger that raises changes nothing for the call:
-- its error and the line go to the error log, and the next line to the logger again.
local function log(st, level, text)
  text = redact(text, unpack(st.secrets))
  local logger = st.logger
  if not logger then return to_error_log(level, text) end
  local ok, e = pcall(logger, level, text)
  if not ok then
    local shown, msg = pcall(tostring, e)
    to_error_log("error", "logger raised: " .. redact(shown and msg or "(an error tostring raises on)",
                                                    unpack(st.secrets)))
    to_error_log(level, text)
  end
end

-- A body for a "body" line: redacted whole, then cut, on one line.
local function body_text(st, body)
  body = redact(body, unpack(st.secrets))
  local more_bytes = #body - BODY_LOG_MAX
  if more_bytes > 0 then body = sub(body, 1, BODY_LOG_MAX) end
  body = body:gsub("\r", "\\r"):gsub("\n", "\\n")
  if more_bytes > 0 then body = format("%s (%d more bytes not logged)", body, more_bytes) end
  return body
end

-- ---- one attempt -------------------------------------------------------------

local function io_fail(st, e, doing, maybe_created, status)
  if e == "timeout" then
    return fail("timeout", format("timed out %s (timeout %g s)", doing, st.timeout), maybe_created, status)
  end
  return fail("network", format("%s %s: %s", doing, st.host_header, tostring(e)), maybe_created, status)
end

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
-- answer's head (a 2xx has no body; then the connection is the target's). true | nil, err
local function tunnel(st, sock, deadline)
  local proxy, authority = st.proxy, st.host .. ":" .. st.port
  local auth = proxy.authorization and "Proxy-Authorization: " .. proxy.authorization .. "\r\n" or ""
  if not arm(sock, deadline) then return nil, proxy_fail(st, nil, "timed out before CONNECT") end
  local ok, e = sock:send(format("CONNECT %s HTTP/1.1\r\nHost: %s\r\n%sUser-Agent: %s\r\n\r\n",
                                 authority, authority, auth, st.user_agent or USER_AGENT))
  if ok then
    local r = { sock = sock, buf = "", deadline = deadline }
    local status, head_err = read_head(r)
    if status and status >= 200 and status < 300 then
      if r.buf == "" then return true end        -- the target speaks after the client, in TLS
      return nil, proxy_fail(st, nil, "sent bytes after its answer to CONNECT")
    end
    if status then return nil, proxy_fail(st, status, "answered CONNECT with %d", status) end
    e = head_err
  end
  if e == "timeout" then return nil, proxy_fail(st, nil, "no answer to CONNECT in time (timeout %g s)", st.timeout) end
  if e == "closed" then return nil, proxy_fail(st, nil, "closed the tunnel before answering CONNECT") end
  return nil, proxy_fail(st, nil, "bad answer to CONNECT (%s)", tostring(e))
end

-- A connection ready for the request: from the pool as it was left, or new: connected (to
-- the proxy, when there is one), tunnelled through it (an https target), TLS verified end to
-- end with the target. true | nil, err (sock closed, the case not created)
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
    if proxy then
      return nil, proxy_fail(st, nil, "could not connect (%s)", e == "timeout" and "timed out" or tostring(e))
    end
    if e == "timeout" then return nil, fail("timeout", "connecting to " .. st.host_header .. " timed out", false) end
    return nil, fail("network", format("could not connect to %s: %s", st.host_header, tostring(e)), false)
  end
  if st.scheme ~= "https" or sock:getreusedtimes() > 0 then return true end
  if proxy then
    ok, e = tunnel(st, sock, deadline)
    if not ok then
      sock:close()
      return nil, e
    end
  end
  if not arm(sock, deadline) then e = "timeout" else ok, e = sock:sslhandshake(nil, st.name, st.verify) end
  if ok then return true end
  sock:close()
  if e == "timeout" then
    return nil, fail("timeout", format("TLS handshake with %s timed out", st.host_header), false)
  end
  return nil, fail("tls", format("TLS handshake with %s failed: %s", st.host_header, tostring(e)), false)
end

-- One attempt of the request msg (payload()'s): res | nil, err.
local function once(st, msg, attempt, deadline)
  local started = clock()
  if st.debug then
    log(st, "debug", format("attempt %d: %s", attempt, msg.line))
    if st.debug == "body" and msg.body then
      log(st, "debug", format("attempt %d: > %s", attempt, body_text(st, msg.body)))
    end
  end
  local sock = tcp()
  local ok, e = open(st, sock, deadline)
  if not ok then return nil, e end
  if not arm(sock, deadline) then
    sock:close()
    return nil, fail("timeout", format("timed out before sending (timeout %g s)", st.timeout), false)
  end
  ok, e = sock:send(msg.bytes)
  if not ok then                        -- a cosocket cannot tell how much left: the case may exist
    sock:close()
    return nil, io_fail(st, e, "sending the request to", true)
  end
  local status, headers, body, reuse = read_response({ sock = sock, buf = "", deadline = deadline },
                                                    st.max_response_bytes)
  -- whose answer is it: acquire.proxy_answered's rule, by stage (through a tunnel, everything
  -- after CONNECT is Acquire's, a 407 included; through a plain proxy a 407 is the proxy's,
  -- its status line enough: tinyproxy resets the connection after it, the body unread)
  local proxy_407 = st.proxy and proxy_answered(st.absolute and "plain" or "tunnel", 0, status or body)
  if not status then
    sock:close()
    e, status = headers, body
    if proxy_407 then return nil, proxy_fail(st, 407, "answered 407 (Proxy Authentication Required)") end
    if e == "too large" then
      return nil, fail("http", format("response body exceeds max_response_bytes (%d)", st.max_response_bytes),
                       true, status)
    end
    if e == "timeout" then return nil, io_fail(st, e, "waiting for the response", true, status) end
    if e == "closed" then e = "connection closed" end
    return nil, io_fail(st, e, "reading the response from", true, status)
  end
  if reuse and not st.absolute then sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE) else sock:close() end
  if proxy_407 then return nil, proxy_fail(st, 407, "answered 407 (Proxy Authentication Required)") end
  if st.debug then
    log(st, "debug", format("attempt %d: %d in %.1f ms, %d bytes", attempt, status, (clock() - started) * 1000, #body))
    if st.debug == "body" then log(st, "debug", format("attempt %d: < %s", attempt, body_text(st, body))) end
  end
  -- the key and the proxy's credentials are redacted from err as the libcurl client redacts them
  return decode_response(status, headers, body, st.secrets)
end

local FIRST = { "Host", "Content-Type", "Accept", "Authorization", "Proxy-Authorization", "User-Agent" }

-- The request, the same for every attempt: { bytes, line (for the log), body }. Through a
-- proxy, an http target's request is in absolute form, with the proxy's credentials.
local function payload(st, req)
  local proxy, absolute = st.proxy, st.absolute
  local path = absolute and req.url or sub(req.url, #st.base_url + 1)  -- the url is base_url .. target .. id
  local given = {}
  for name, value in pairs(req.headers) do given[name] = value end
  given.Host = st.host_header
  if absolute and proxy.authorization then given["Proxy-Authorization"] = proxy.authorization end
  if given["User-Agent"] == nil then given["User-Agent"] = USER_AGENT end  -- the transport's own
  local names, seen = {}, {}
  for _, name in ipairs(FIRST) do
    if given[name] then names[#names + 1] = name; seen[name] = true end
  end
  local rest = {}
  for name in pairs(given) do
    local l = lower(name)
    if not seen[name] and l ~= "content-length" and l ~= "connection" and l ~= "host" then
      rest[#rest + 1] = name
    end
  end
  sort(rest)
  for _, name in ipairs(rest) do names[#names + 1] = name end
  local head = { req.method, " ", path, " HTTP/1.1\r\n" }
  for _, name in ipairs(names) do head[#head + 1] = name .. ": " .. given[name] .. "\r\n" end
  local body = req.body or ""                 -- a GET (the case list) has none
  if req.body then head[#head + 1] = "Content-Length: " .. #body .. "\r\n" end
  head[#head + 1] = "Connection: keep-alive\r\n\r\n"
  head[#head + 1] = body
  return { bytes = concat(head), body = req.body,
           line = req.method .. " " .. req.url .. (proxy and " via proxy " .. proxy.display or "") }
end

-- The retry step, after attempt failed with err: the seconds to wait before the next
-- attempt, or nil (err.attempts stamped) to give up. acquire.retry_after decides, and a retry
-- starts only if its wait ends before the call's deadline.
local function next_delay(st, err, attempt, deadline)
  local delay = retry_after(err, attempt, st.max_retries)
  if delay and clock() + delay >= deadline then delay = nil end
  if st.debug then
    if delay then
      log(st, "warn", format("attempt %d failed: %s; retrying in %.2f s", attempt, tostring(err), delay))
    else
      log(st, "error", format("attempt %d failed: %s; giving up", attempt, tostring(err)))
    end
  end
  if not delay then err.attempts = attempt end
  return delay
end

-- The case list for contactId, page by page, the cases matching filter: { case, ... } | nil,
-- err. A read creates nothing: whatever happened on the wire it is retried as the policy
-- allows, within its own deadline (timeout).
local function find_cases(st, contactId, filter)
  local found, page, next_page = {}, 0, true
  local deadline = clock() + st.timeout
  while next_page do
    local msg = payload(st, build_list_request(contactId, page, st.options))
    local attempt, res = 0
    repeat
      attempt = attempt + 1
      local err
      res, err = once(st, msg, attempt, deadline)
      if not res then
        err.maybe_created = false
        local delay = next_delay(st, err, attempt, deadline)
        if not delay then return nil, err end
        sleep(delay)
      end
    until res
    local cases
    cases, next_page = match_cases(res, filter, page)
    for i = 1, #cases do found[#found + 1] = cases[i] end
    page = page + 1
  end
  return found
end

local function checked(self, fname)
  local st = state[self]
  if not st then error(format("bad argument #1 to '%s' (client expected; call client:%s)", fname, fname), 3) end
  if st.closed then error("client is closed", 3) end
  return st
end

-- The calls of this client whose answer is still to come, by what they send (contact, title,
-- text): light threads run calls at once, and a case another call created but whose answer
-- has not arrived is not claimed yet, so a lookup must not take it for its own.
local function content_key(filter)
  local d = filter.description
  return table.concat({ tostring(filter.contactId), tostring(filter.title),
                        d == acquire.null and "" or tostring(d) }, "\0")
end

--- client:create_case(contactId, opts) -> res | nil, err: as acquire's (README).
function Client:create_case(contactId, opts)
  local st = checked(self, "create_case")
  local ok, req = pcall(build_request, contactId, opts, st.options)  -- misuse raises, nothing sent
  if not ok then rethrow(req, "create_case") end
  local msg = payload(st, req)
  local started = clock()
  local deadline = started + st.timeout        -- the whole call's, retries included
  local key = st.reconcile and content_key(sent_filter(contactId, opts, started))
  if key then st.inflight[key] = (st.inflight[key] or 0) + 1 end
  local attempt = 0
  while true do
    attempt = attempt + 1
    local res, err = once(st, msg, attempt, deadline)
    if res then
      claim(st.claims, res)                    -- its case settles no other call's reconcile
      if key then st.inflight[key] = st.inflight[key] - 1 end
      return res
    end
    local delay = next_delay(st, err, attempt, deadline)
    if not delay then
      if key then st.inflight[key] = st.inflight[key] - 1 end
      if not (st.reconcile and err.maybe_created) then return nil, err end
      sleep(st.reconcile)                      -- reconcile: look the case up, never resend
      -- the same content still on its way in another call: wait for it (within a timeout)
      local until_ = clock() + st.timeout
      while (st.inflight[key] or 0) > 0 and clock() < until_ do sleep(0.01) end
      local found, lookup_err = find_cases(st, contactId, sent_filter(contactId, opts, started))
      if (st.inflight[key] or 0) > 0 and found then
        -- still: a case found may be that call's, its answer not in yet
        err.reconcile, err.in_flight = "ambiguous", st.inflight[key]
        local ids = {}
        for i, c in ipairs(found) do ids[i] = c.id end
        err.candidates = ids
        return nil, err
      end
      return settle(err, found, lookup_err, st.claims)   -- a case another call has is not this one
    end
    sleep(delay)
  end
end

--- client:find_cases(contactId [, filter]) -> { case, ... } | nil, err: as acquire's (README).
function Client:find_cases(contactId, filter)
  local st = checked(self, "find_cases")
  local ok, e = pcall(build_list_request, contactId, 0, st.options)  -- misuse raises, nothing sent
  if ok then ok, e = pcall(match_cases, {}, filter) end
  if not ok then rethrow(e, "find_cases") end
  local f = { contactId = contactId }
  for k, v in pairs(filter or {}) do f[k] = v end
  return find_cases(st, contactId, f)
end

--- client:close(): as acquire's (idempotent; pooled connections stay nginx's).
function Client:close()
  local st = state[self]
  if st then st.closed = true end
end

return _M
