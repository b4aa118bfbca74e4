-- Create a case and print a readable summary of it.
--
--   ACQUIRE_ACCOUNT_ID=mycompany ACQUIRE_API_KEY=... lua5.4 examples/create_case.lua [contactId]
--
-- `make demo` runs it against the local Acquire server (ACQUIRE_BASE_URL).
local acquire = require "acquire"

local contact_id = arg[1] or 597752
local res, err = acquire.create_case(contact_id, {
  title = "Refund",
  message = "I'm reopening the closed case",
  channel = "chat",
})
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end

local case = res.data
local contact = case.contact
local fields = acquire.fields(contact)
local visits = contact.visits

print(("case %s: %s (%s)"):format(tostring(case.id), case.status, case.title))
print(("contact %s: %s, ip %s, country id %s"):format(
  tostring(contact.id), fields.name or "(no name)", fields.ip or "?", fields.countryId or "?"))
print(("%d visits, last: %s"):format(#visits, #visits > 0 and visits[#visits].url or "none"))
