-- The reference cannot drift: every public name of `require "acquire"`, of a client, of a
-- pending call, of acquire.journal, acquire.ngx, acquire.haproxy, acquire.cqueues and acquire.luv
-- has a heading of its own in doc/api.md, with a `syntax:` line under it; every doc has a table
-- of contents; README stays the front door (at most 300 lines, its quick start within the first 120).
local helper = require "spec.helper"

local ROOT = helper.repo_root

-- doc/api.md's headings (the text after the #s, backticks dropped) -> the lines under each,
-- up to the next heading
local function headings(path)
  local found, current = {}, nil
  local fence = false
  for line in (helper.read_file(path) .. "\n"):gmatch("([^\n]*)\n") do
    if line:match("^```") then fence = not fence end
    local h = not fence and line:match("^#+%s+(.-)%s*$")
    if h then
      current = h:gsub("`", ""):gsub("\\", "")
      found[current] = found[current] or {}
    elseif current then
      table.insert(found[current], line)
    end
  end
  return found
end

local function sorted_keys(t)
  local list = {}
  for k in pairs(t) do list[#list + 1] = k end
  table.sort(list)
  return list
end

-- the names a heading must carry: { heading = "acquire.new", what = "acquire.new (a function)" }
local function public_names()
  local names = {}
  local function add(heading, what) names[#names + 1] = { heading = heading, what = what } end
  local acquire = require "acquire"
  for _, k in ipairs(sorted_keys(acquire)) do
    if not k:match("^_") or k == "_VERSION" then add("acquire." .. k, "acquire." .. k) end
  end
  local client = acquire.new{ base_url = "http://127.0.0.1:9", api_key = "k" }
  local mt = debug.getmetatable(client)
  for _, k in ipairs(sorted_keys(mt.__index)) do add("client:" .. k, "a client's method " .. k) end
  if mt.__tostring then add("tostring(client)", "a client's __tostring") end
  if mt.__close then add("local client <close>", "a client's __close") end
  local p = client:start_case(1, {})              -- a pending call's methods (port 9: nothing listens)
  for _, k in ipairs(sorted_keys(debug.getmetatable(p).__index)) do add("p:" .. k, "a pending call's method " .. k) end
  p:cancel()
  local g = client:group()                        -- a group's methods
  for _, k in ipairs(sorted_keys(debug.getmetatable(g).__index)) do add("g:" .. k, "a group's method " .. k) end
  g:close()
  client:close()
  -- the loop drivers, from their sources (each needs its loop's library to load)
  for _, m in ipairs({ "cqueues", "luv" }) do
    local msrc = helper.read_file(ROOT .. "/lua/acquire/" .. m .. ".lua")
    for name in msrc:gmatch("\nfunction M%.([%w_]+)%s*%(") do add("acquire." .. m .. "." .. name, "acquire." .. m .. "'s " .. name) end
    for name in msrc:gmatch("\nfunction Call:([%w_]+)%s*%(") do add("handle:" .. name, "acquire." .. m .. "'s handle method " .. name) end
  end
  local journal = require "acquire.journal"
  for _, k in ipairs(sorted_keys(journal)) do
    if not k:match("^_") then add("journal." .. k, "acquire.journal's " .. k) end
  end
  -- acquire.ngx needs nginx to load: its definitions, read from the source; the client
  -- methods every Lua driver shares (acquire.driver's d.methods) count as each driver's own
  local shared = helper.read_file(ROOT .. "/lua/acquire/driver.lua"):match("\n%s*function d%.methods.*") or ""
  local function with_shared(text)
    if text:find("d.methods(Client", 1, true) then text = text .. shared:gsub("\n%s+function Client", "\nfunction Client") end
    return text
  end
  local src = with_shared(helper.read_file(ROOT .. "/lua/acquire/ngx.lua"))
  for name in src:gmatch("\nfunction _M%.([%w_]+)%s*%(") do
    add("acquire.ngx." .. name, "acquire.ngx's " .. name)
  end
  for name in src:gmatch("\nfunction Client[:.]([%w_]+)%s*%(") do
    if name == "__tostring" then add("tostring(ngx_client)", "acquire.ngx's client __tostring")
    elseif not name:match("^__") then add("ngx_client:" .. name, "acquire.ngx's client method " .. name) end
  end
  -- acquire.haproxy needs HAProxy's core to load: the same, read from its source
  src = with_shared(helper.read_file(ROOT .. "/lua/acquire/haproxy.lua"))
  for name in src:gmatch("\nfunction _M%.([%w_]+)%s*%(") do
    add("acquire.haproxy." .. name, "acquire.haproxy's " .. name)
  end
  for name in src:gmatch("\nfunction Client[:.]([%w_]+)%s*%(") do
    if name == "__tostring" then add("tostring(haproxy_client)", "acquire.haproxy's client __tostring")
    elseif not name:match("^__") then add("haproxy_client:" .. name, "acquire.haproxy's client method " .. name) end
  end
  return names
end

describe("doc/api.md", function()
  local found = headings(ROOT .. "/doc/api.md")

  it("has a heading, with a syntax: line, for every public function and method", function()
    local names = public_names()
    assert.is_true(#names >= 30, "public names found: " .. #names)
    local missing, nosyntax = {}, {}
    for _, n in ipairs(names) do
      local body = found[n.heading]
      if not body then
        missing[#missing + 1] = n.what .. " (wants a heading `" .. n.heading .. "`)"
      else
        local has = false
        for _, l in ipairs(body) do
          if l:match("^syntax: `.+`$") then has = true break end
        end
        if not has then nosyntax[#nosyntax + 1] = n.heading end
      end
    end
    assert(#missing == 0, "doc/api.md has no heading for:\n  " .. table.concat(missing, "\n  "))
    assert(#nosyntax == 0, "doc/api.md: no `syntax: ...` line under:\n  " .. table.concat(nosyntax, "\n  "))
  end)

  it("gives every option of acquire.new its type, range and default", function()
    local doc = helper.read_file(ROOT .. "/doc/api.md")
    local table_text = doc:match("\n### The options\n(.-)\n###? ")
    assert.is_string(table_text)
    -- every option acquire.config knows, from its normalised table and the README's list
    local options = { "account_id", "api_key", "base_url", "timeout", "connect_timeout", "max_retries",
                      "user_agent", "ca_file", "insecure", "strict", "max_response_bytes", "debug",
                      "logger", "reconcile", "proxy" }
    local acquire = require "acquire"
    for _, o in ipairs(options) do
      local row = table_text:match("\n| `" .. o:gsub("_", "%%_") .. "` |([^\n]*)")
      assert(row, "no row for option " .. o)
      local cells = 0
      for _ in row:gmatch("|") do cells = cells + 1 end
      assert(cells >= 4, "option " .. o .. ": type, range, default and what expected: " .. row)
    end
    -- an unknown option is refused: the list above is the whole list
    local ok, msg = pcall(acquire.config, { base_url = "http://127.0.0.1:9", api_key = "k", nosuch = 1 })
    assert.is_false(ok)
    helper.contains(msg, "nosuch")
  end)
end)

describe("the docs", function()
  local DOCS = { "doc/api.md", "doc/reliability.md", "doc/development.md", "doc/nginx.md", "doc/acquire-case.md",
                 "README.md" }

  for _, f in ipairs(DOCS) do
    it(f .. " has a table of contents whose links reach its headings", function()
      local text = helper.read_file(ROOT .. "/" .. f)
      assert.is_truthy(text:find("\n## Contents\n", 1, true), f .. " has no ## Contents")
      local anchors = {}
      local fence = false
      for line in text:gmatch("[^\n]*") do
        if line:match("^```") then fence = not fence end
        local h = not fence and line:match("^#+%s+(.-)%s*$")
        if h then
          -- GitHub's anchors: lower case, punctuation but - and _ dropped, spaces as -
          local a = h:lower():gsub("[^%w%s%-_]", ""):gsub("%s", "-")
          anchors[a] = true
        end
      end
      local toc = text:match("\n## Contents\n(.-)\n## ")
      for a in toc:gmatch("%]%(#([^)]+)%)") do
        assert(anchors[a], f .. ": the contents link to #" .. a .. ", which no heading makes")
      end
    end)
  end

  it("README.md is at most 300 lines, with the local server and a script against it in its first 120", function()
    local n, first = 0, {}
    for line in helper.read_file(ROOT .. "/README.md"):gmatch("([^\n]*)\n") do
      n = n + 1
      if n <= 120 then first[#first + 1] = line end
    end
    assert(n <= 300, "README.md has " .. n .. " lines")
    local head = table.concat(first, "\n")
    helper.contains(head, "make server")
    helper.contains(head, "test-key")
    helper.contains(head, "ACQUIRE_BASE_URL")
    helper.contains(head, "examples/quickstart.lua")
  end)

  it("README's quick start shows examples/quickstart.lua as it is", function()
    local readme = helper.read_file(ROOT .. "/README.md")
    local block = readme:match("\n<!%-%- file: examples/quickstart%.lua %-%->\n```lua\n(.-\n)```\n")
    assert.is_string(block, "README.md has no ```lua block after <!-- file: examples/quickstart.lua -->")
    assert.equal(helper.read_file(ROOT .. "/examples/quickstart.lua"), block)
  end)
end)
