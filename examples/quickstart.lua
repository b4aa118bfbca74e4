-- examples/quickstart.lua: creates a case where the environment says, ACQUIRE_BASE_URL (or
-- ACQUIRE_ACCOUNT_ID) and ACQUIRE_API_KEY: the local server now, your account later, unchanged.
local acquire = require "acquire"
local res, err = acquire.create_case(597752, { title = "Refund", message = "I'm reopening the closed case" })
if not res then error(tostring(err)) end
print(res.data.id, res.data.status, res.data.title)  --> 2071  active  Refund
