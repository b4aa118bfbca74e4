-- examples/haproxy.lua: the service of examples/haproxy.cfg. One client for the whole process
-- (new() touches no socket, so it runs while HAProxy loads this file); each request's call
-- yields to HAProxy while it waits. POST /cases?contact=N, body: the case's opts as JSON.
-- luacheck: read globals core
local cjson = require "cjson"
local acquire_haproxy = require "acquire.haproxy"

local config = { api_key = os.getenv("ACQUIRE_API_KEY"), timeout = 10, reconcile = true }
if os.getenv("ACQUIRE_BASE_URL") then            -- make demo-haproxy: the local server, plain http
  config.base_url = os.getenv("ACQUIRE_BASE_URL")
else
  config.base_url = "https://mycompany.acquire.io"   -- CHANGE
  config.via = "127.0.0.1:9443"                      -- examples/haproxy.cfg's listen acquire_tls
end
local client = acquire_haproxy.new(config)

local function answer(applet, status, doc)
  local body = cjson.encode(doc)
  applet:set_status(status)
  applet:add_header("content-type", "application/json")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end

core.register_service("acquire_case", "http", function(applet)
  local contact = tonumber(applet.qs:match("contact=(%d+)"))
  local ok, opts = pcall(cjson.decode, applet:receive() or "")
  if not contact or not ok or type(opts) ~= "table" then
    return answer(applet, 400, { error = "POST /cases?contact=N with a JSON object of opts" })
  end
  local called, res, err = pcall(client.create_case, client, contact, opts)   -- bad opts raise
  if not called then return answer(applet, 400, { error = tostring(res) }) end
  if res then return answer(applet, 201, { id = res.data.id, title = res.data.title }) end
  core.log(core.err, tostring(err))
  answer(applet, err.status == 404 and 404 or 502, { error = tostring(err), maybe_created = err.maybe_created })
end)
