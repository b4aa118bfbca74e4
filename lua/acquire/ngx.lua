--- acquire.ngx: create cases from inside nginx/OpenResty, without blocking.
--
--   local client = require("acquire.ngx").new{ account_id = "mycompany", api_key = key }
--   local res, err = client:create_case(597752, { title = "Refund" })
--
-- Same options, returns and errors as acquire.new, over ngx.socket.tcp
-- cosockets: HTTP/1.1 with keep-alive pools, TLS with verification
-- (lua_ssl_trusted_certificate), timeouts, retries with ngx.sleep.
-- The libcurl client (acquire.new) must not run in a request handler:
-- curl_easy_perform blocks the whole worker, and every request on it, for
-- the length of the call. This transport yields to nginx's event loop instead.
-- It adds only the byte moving: the request, the response and the retry
-- policy are the module's own (build_request, decode_response, retry_after).
local acquire = require "acquire"

local ngx = ngx
local tcp = ngx.socket.tcp
local concat = table.concat

local _M = { _VERSION = acquire._VERSION }
local Client = {}
Client.__index = Client

-- err tables share the module's metatable, so tostring(err) reads the same
local ERR_MT = getmetatable(select(2, acquire.decode_response(500, nil, "")))

local function fail(kind, message, maybe_created, status)
  return setmetatable({ kind = kind, message = message, maybe_created = maybe_created,
                        status = status }, ERR_MT)
end

local function seconds_ms(v, default)
  return math.ceil((v or default) * 1000)
end

--- new(config) -> client; raises on bad configuration, as acquire.new does.
function _M.new(config)
  if type(config) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(config) .. ")", 2)
  end
  local cfg = {}
  for k, v in pairs(config) do cfg[k] = v end
  -- every option is checked by the same code that checks acquire.new's
  local probe = acquire.build_request(1, nil, cfg)
  local scheme, authority = probe.url:match("^(https?)://([^/]+)/")
  local host, port = authority:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  return setmetatable({
    cfg = cfg,
    tls = scheme == "https",
    host = host,
    port = port,
    authority = authority,
    verify = not cfg.insecure,
    connect_ms = seconds_ms(cfg.connect_timeout, 10),
    timeout_ms = seconds_ms(cfg.timeout, 30),
    max_retries = cfg.max_retries or 2,
    max_bytes = cfg.max_response_bytes or 8388608,
    pool = ("acquire:%s:%d:%s"):format(host, port, scheme),
  }, Client)
end

-- Reads exactly n bytes, or chunked, or to the close; returns body or nil, why.
local function read_body(self, sock, headers)
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, total = {}, 0
    while true do
      local line, e = sock:receive("*l")
      if not line then return nil, e end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if not size then return nil, "bad chunk size" end
      if size == 0 then                                  -- trailers, then the end
        repeat
          line, e = sock:receive("*l")
          if not line then return nil, e end
        until line == ""
        return concat(parts)
      end
      total = total + size
      if total > self.max_bytes then return nil, "too large" end
      local data, e2 = sock:receive(size)
      if not data then return nil, e2 end
      parts[#parts + 1] = data
      local crlf, e3 = sock:receive(2)
      if not crlf then return nil, e3 end
    end
  end
  local len = headers["content-length"]
  if len then
    len = tonumber(len)
    if not len or len < 0 then return nil, "bad Content-Length" end
    if len > self.max_bytes then return nil, "too large" end
    if len == 0 then return "" end
    return sock:receive(len)
  end
  local data, e = sock:receive("*a")
  if not data then return nil, e end
  if #data > self.max_bytes then return nil, "too large" end
  return data
end

-- One attempt: res, or nil and err.
function Client:once(req, path)
  local sock = tcp()
  sock:settimeouts(self.connect_ms, self.timeout_ms, self.timeout_ms)
  local ok, e = sock:connect(self.host, self.port, { pool = self.pool })
  if not ok then
    return nil, fail(e == "timeout" and "timeout" or "network", "connect: " .. tostring(e), false)
  end
  if self.tls and sock:getreusedtimes() == 0 then
    ok, e = sock:sslhandshake(nil, self.host, self.verify)
    if not ok then
      sock:close()
      return nil, fail("tls", "TLS handshake: " .. tostring(e), false)
    end
  end
  local head = { "POST ", path, " HTTP/1.1\r\nHost: ", self.authority,
                 "\r\nContent-Length: ", #req.body, "\r\nConnection: keep-alive\r\n" }
  for name, value in pairs(req.headers) do
    head[#head + 1] = name .. ": " .. value .. "\r\n"
  end
  head[#head + 1] = "\r\n"
  head[#head + 1] = req.body
  ok, e = sock:send(concat(head))
  if not ok then
    -- some bytes may have left: the case may exist
    sock:close()
    return nil, fail(e == "timeout" and "timeout" or "network", "send: " .. tostring(e), true)
  end
  local line
  line, e = sock:receive("*l")
  if not line then
    sock:close()
    return nil, fail(e == "timeout" and "timeout" or "network", "receive: " .. tostring(e), true)
  end
  local status = tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
  if not status then
    sock:close()
    return nil, fail("network", "not an HTTP response", true)
  end
  local headers = {}
  while true do
    line, e = sock:receive("*l")
    if not line then
      sock:close()
      return nil, fail(e == "timeout" and "timeout" or "network", "receive: " .. tostring(e), true, status)
    end
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name:lower()] = value end
  end
  local body
  body, e = read_body(self, sock, headers)
  if not body then
    sock:close()
    if e == "too large" then
      return nil, fail("http", "response body exceeds max_response_bytes (" .. self.max_bytes .. ")",
                       true, status)
    end
    return nil, fail(e == "timeout" and "timeout" or "network", "receive: " .. tostring(e), true, status)
  end
  local conn = headers["connection"]
  if (conn and conn:lower() == "close") or not (headers["content-length"] or headers["transfer-encoding"]) then
    sock:close()
  else
    sock:setkeepalive(60000, 64)
  end
  return acquire.decode_response(status, headers, body)
end

--- client:create_case(contactId, opts) -> res | nil, err (as acquire's)
function Client:create_case(contactId, opts)
  local req = acquire.build_request(contactId, opts, self.cfg)      -- raises on misuse
  if not self.cfg.user_agent then                                   -- not libcurl here
    req.headers["User-Agent"] = "lua-acquire/" .. acquire._VERSION .. " ngx_lua/"
      .. tostring(ngx.config and ngx.config.ngx_lua_version)
  end
  local path = req.url:match("^https?://[^/]+(/.*)$")
  local attempt = 0
  while true do
    attempt = attempt + 1
    local res, err = self:once(req, path)
    if res then return res end
    local wait = acquire.retry_after(err, attempt, self.max_retries)
    if not wait then
      err.attempts = attempt
      return nil, err
    end
    ngx.sleep(wait)
  end
end

return _M
