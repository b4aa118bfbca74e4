--- acquire.http1: HTTP/1.1's bytes on any stream socket, for the drivers written in Lua
-- (acquire.ngx's cosockets). A request's bytes from the call engine's "send", and a response
-- read within limits: the status line and headers (1xx skipped, folding joined, conflicting
-- Content-Length refused), a body by Content-Length, chunked, or to the close. No I/O of its
-- own: the reader r = { buf = "", more = function(want) -> data | nil, err } is the driver's,
-- which keeps the time (its socket's timeout) and says "timeout" or "closed". more's second
-- argument says what the bytes are for: "line" (up to the next LF), "exact" (want bytes, all
-- needed), "close" (any, to the close); a reader that can return whatever has arrived
-- (a cosocket's receiveany) ignores it; one whose reads block for a count (HAProxy's) needs it.
local concat, sort = table.concat, table.sort
local find, sub, lower, byte = string.find, string.sub, string.lower, string.byte
local ipairs, pairs, tonumber = ipairs, pairs, tonumber

local _M = {}

local HEAD_MAX = 65536         -- status line and headers
local LINE_MAX = 4096          -- a chunk-size or trailer line
local READ_MAX = 65536         -- bytes asked of one read

-- Up to READ_MAX more bytes: data, or nil and the socket's error ("timeout", "closed"...).
local function more(r, want, how)
  return r.more(want or READ_MAX, how)
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
    local data, e = more(r, nil, "line")
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
    local data, e = more(r, n < READ_MAX and n or READ_MAX, "exact")
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
    local data, e = more(r, nil, "close")
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
function _M.read_head(r)
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
function _M.read_response(r, limit)
  local status, headers, http10 = _M.read_head(r)
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

local FIRST = { "Host", "Content-Type", "Accept", "Authorization", "Proxy-Authorization", "User-Agent" }

-- The bytes of the engine's request req (method, url, body) with the client's headers: to
-- o.target (the path, or the whole url in absolute form through a plain proxy), Host o.host,
-- o.user_agent unless the headers have one, o.proxy_authorization when given.
function _M.request(req, headers, o)
  local given = {}
  for name, value in pairs(headers) do given[name] = value end
  given.Host = o.host
  if o.proxy_authorization then given["Proxy-Authorization"] = o.proxy_authorization end
  if given["User-Agent"] == nil then given["User-Agent"] = o.user_agent end  -- the transport's own
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
  local head = { req.method, " ", o.target, " HTTP/1.1\r\n" }
  for _, name in ipairs(names) do head[#head + 1] = name .. ": " .. given[name] .. "\r\n" end
  if req.body then head[#head + 1] = "Content-Length: " .. #req.body .. "\r\n" end  -- a GET has none
  head[#head + 1] = "Connection: keep-alive\r\n\r\n"
  head[#head + 1] = req.body or ""
  return concat(head)
end

return _M
