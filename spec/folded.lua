-- The folded-header generator (issue: memory safety, finding 1): libcurl before 8.1.0
-- (curl issue 11101) unfolds an answer whose first header line begins with a blank into
-- the previous transfer's freed header when an easy handle is reused. Every path that runs
-- a transfer after another on one client gets, at random, a normal answer or one of the
-- hostile shapes below, on a kept-alive connection, in a random order. Shared by
-- spec/26-memsafety_spec.lua in-process (make memcheck's valgrind, make sanitize's ASan see
-- it) and in a child under valgrind (the plain suite sees it).
--
--   require("spec.folded")(ctl, seed, n) -> nil | error text
--   ctl.reset(), ctl.fault(rule), ctl.client(over): the local Acquire server's control calls
local ANSWERS = {
  -- a continuation line first: nothing to unfold into (the bug's trigger)
  folded_first = "HTTP/1.1 400 Bad Request\r\n x: y\r\nContent-Type: application/json\r\n" ..
                 "Content-Length: 2\r\n\r\n{}",
  -- a continuation line after a header: a legal (obsolete) fold
  folded_later = "HTTP/1.1 400 Bad Request\r\nX-A: a\r\n\tb\r\nContent-Type: application/json\r\n" ..
                 "Content-Length: 2\r\n\r\n{}",
  -- a 1xx head, then a final head that begins with a fold
  informational = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\n x: y\r\n" ..
                  "Content-Length: 2\r\n\r\n{}",
  -- a fold first, on a 200
  folded_200 = "HTTP/1.1 200 OK\r\n\t z\r\nContent-Type: application/json\r\n" ..
               "Content-Length: 2\r\n\r\n{}",
}
local NAMES = { "folded_first", "folded_later", "informational", "folded_200" }
local CONTACT = 597752

return function(ctl, seed, n)
  math.randomseed(seed)
  local client = ctl.client{ max_retries = 1, reconcile = false }
  local reconciler = ctl.client{ max_retries = 0, reconcile = 0 }
  local function check(what, res, err)
    if res == nil and (type(err) ~= "table" or type(err.kind) ~= "string" or tostring(err) == "") then
      return ("%s: no err with a kind (seed %d)"):format(what, seed)
    end
  end
  for i = 1, n do
    local answer = NAMES[math.random(#NAMES)]
    local path = math.random(4)
    ctl.reset()
    -- a normal transfer first, on the same client: the handle (or, now, the share) has
    -- the previous answer's headers behind it
    local res, err = (path == 3 and reconciler or client):create_case(CONTACT, { message = "warm " .. i })
    local bad = check("warm-up", res, err)
    if bad then return bad end
    local raw = { action = "raw", body = ANSWERS[answer], close = false, times = 1 }
    local what = ("op %d (%s, path %d)"):format(i, answer, path)
    if path == 1 then                                  -- create_case
      ctl.fault(raw)
      bad = check(what, client:create_case(CONTACT, { message = "x" }))
    elseif path == 2 then                              -- find_cases: the list's pages
      raw.endpoint = "read"
      ctl.fault(raw)
      bad = check(what, client:find_cases(CONTACT))
    elseif path == 3 then                              -- reconcile's lookup after a 500
      ctl.fault{ action = "status", status = 500, endpoint = "create", times = 1 }
      raw.endpoint = "read"
      ctl.fault(raw)
      bad = check(what, reconciler:create_case(CONTACT, { message = "r" }))
    else                                               -- create_cases, one at a time
      ctl.fault{ action = "delay", seconds = 0, times = 1 }
      ctl.fault(raw)
      local results = client:create_cases({ { CONTACT, { message = "a" } }, { CONTACT, { message = "b" } },
                                            { CONTACT, { message = "c" } } }, { concurrency = 1 })
      for k, r in ipairs(results) do
        bad = bad or check(what .. " item " .. k, r.res, r.err)
      end
    end
    if bad then return bad end
    -- the client is still whole: a normal call after
    res, err = client:create_case(CONTACT, { message = "after " .. i })
    if not res then return ("%s: the next call failed: %s (seed %d)"):format(what, tostring(err), seed) end
  end
  client:close()
  reconciler:close()
end
