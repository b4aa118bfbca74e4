-- acquire-case's --batch input, read from standard input as it goes: one item a line (a
-- contact id or a JSON object) or CSV rows, as items { n = line (or CSV row) number,
-- id = the contact as given, opts = the flags' opts with the item's over them }; and the
-- check of an item against the module. Part of bin/acquire-case.
local out = require "acquire.cli.output"
local decode = require "acquire.cli.decode"

local fail, usage_error, strip_position, try = out.fail, out.usage_error, out.strip_position, out.try
local EXIT_USAGE, EXIT_SERVER = out.USAGE, out.SERVER

local M = {}

-- A --batch item, checked before anything is sent by the check create_cases
-- runs (acquire.build_request raises as it would for that item), or exit 2
-- naming where it is ("line 3", "row 3"). The id alone first, with no opts:
-- build_request names a bad id as its argument #1, and a line reads better
-- saying what it holds. Returns the contact id as it will be sent: the digits
-- of the request's URL.
local function check_item(acquire, config, id, opts, where)
  local ok, req = try(acquire.build_request, id, opts, config)
  if not ok and not try(acquire.build_request, id, nil, config) then
    local got = (type(id) == "string" or type(id) == "number") and tostring(id)
      or id == acquire.null and "null" or id == nil and "nothing" or type(id)
    fail(EXIT_USAGE, where .. ": contactId must be a positive integer, got " .. got)
  end
  if not ok then fail(EXIT_USAGE, where .. ": " .. strip_position(req)) end
  local digits = type(req) == "table" and type(req.url) == "string" and req.url:match("[?&]contactId=(%d+)$")
  if not digits then fail(EXIT_SERVER, where .. ": internal error: no contactId in the request") end
  return digits
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- Standard input as a file that can be read twice, from where it stands: a pipe (or a
-- terminal) is copied first to an unnamed temporary file, 64 KiB at a time. -> file, offset
local function input_file()
  local at = io.stdin:seek("cur")
  if at then return io.stdin, at end
  local tmp = io.tmpfile()
  if not tmp then fail(EXIT_SERVER, "cannot make a temporary file for standard input") end
  while true do
    local s = io.stdin:read(65536)
    if not s then break end
    assert(tmp:write(s))
  end
  return tmp, 0
end

-- One item a line: a contact id, or a JSON object of contactId and opts. Lines
-- end at LF; a CR before it belongs to the line break. Blank lines are skipped
-- (and counted). A UTF-8 byte order mark at the start is skipped, as with --csv.
-- An iterator over the file from `at` (seeked to on the first call), an item a call.
-- lazy: an item's id and opts are decoded when first read (a row the journal settled is
-- never decoded on a second pass).
local LAZY = {
  __index = function(x, k)
    if k ~= "id" and k ~= "opts" then return nil end
    local item, id = copy(x.flags_opts), x.text
    if id:sub(1, 1) == "{" then
      local ok, doc = decode.decode_line(id, "line " .. x.n)
      if not ok or type(doc) ~= "table" then usage_error("line " .. x.n .. ": not a JSON object") end
      id = doc.contactId
      doc.contactId = nil
      for key, v in pairs(doc) do item[key] = v end
    end
    rawset(x, "id", id)
    rawset(x, "opts", item)
    return rawget(x, k)
  end,
}
local function line_items(flags_opts, fh, at, lazy)
  local n = 0
  return function()
    if n == 0 then fh:seek("set", at) end
    while true do
      local line = fh:read("*l")
      if line == nil then return nil end
      n = n + 1
      if n == 1 and line:sub(1, 3) == "\239\187\191" then line = line:sub(4) end
      local trimmed = line:match("^%s*(.-)%s*$")          -- (a CR before the LF is a space)
      if trimmed ~= "" then
        local x = setmetatable({ n = n, text = trimmed, flags_opts = flags_opts }, LAZY)
        if not lazy then local _ = x.id end
        return x
      end
    end
  end
end

-- RFC 4180 records: fields separated by commas, records by CRLF, LF or CR; a
-- field in double quotes may hold commas, line breaks and quotes (written "").
-- A UTF-8 byte order mark before the first record is skipped (Excel writes
-- one). Read from the file as it goes, 64 KiB at a time: an iterator of
-- { fields, quoted (per field), line (where it starts) }.
local function csv_records(fh, at)
  local text, pos, eof, line, row, started = "", 1, false, 1, 0, false
  local function more()
    local s = fh:read(65536)
    if not s then eof = true return end
    text = text:sub(pos) .. s
    pos = 1
  end
  -- one record from pos, or nil when the text read so far may not hold all of it
  local function record()
    local n, p = #text, pos
    local r = { fields = {}, quoted = {}, line = line }
    local function bad(what)
      usage_error(("row %d (line %d): %s"):format(row + 1, r.line, what))
    end
    local breaks = 0
    while true do
      local field, quoted
      if text:byte(p) == 34 then
        local parts, q0 = {}, p + 1
        while true do
          local q = text:find('"', q0, true)
          if not q then
            if not eof then return nil end
            bad("a quoted field never closes")
          end
          if q + 1 > n and not eof then return nil end
          parts[#parts + 1] = text:sub(q0, q - 1)
          if text:byte(q + 1) ~= 34 then q0 = q + 1 break end
          parts[#parts + 1] = '"'
          q0 = q + 2
        end
        field, quoted, p = table.concat(parts), true, q0
        local c = text:byte(p)
        if c and c ~= 44 and c ~= 10 and c ~= 13 then
          bad("a quoted field goes on after its closing quote (a quote inside a quoted field is "
            .. "written twice: \"\")")
        end
        local _, nb = field:gsub("\r\n", "\n"):gsub("[\r\n]", "")
        breaks = breaks + nb
      else
        local e = text:find('[,\r\n"]', p)
        if not e then
          if not eof then return nil end
          e = n + 1
        end
        if text:byte(e) == 34 then
          bad("a quote inside an unquoted field (quote the field, and write the quote twice)")
        end
        field, quoted, p = text:sub(p, e - 1), false, e
      end
      r.fields[#r.fields + 1] = field
      r.quoted[#r.fields] = quoted
      if text:byte(p) ~= 44 then break end
      p = p + 1
    end
    if text:byte(p) == 13 then
      if p + 1 > n and not eof then return nil end
      if text:byte(p + 1) == 10 then p = p + 2 else p = p + 1 end
    else
      p = p + 1
    end
    line = line + breaks + 1
    row = row + 1
    pos = p
    return r
  end
  return function()
    if not started then
      started = true
      fh:seek("set", at)
      repeat more() until eof or #text >= 3
      if text:sub(1, 3) == "\239\187\191" then pos = 4 end
    end
    while true do
      if pos > #text then
        if eof then return nil end
        more()
      else
        local r = record()
        if r then return r end
        more()
      end
    end
  end
end

-- How a column's cells become opts, from the type the module gives the field
-- (acquire.request_fields): ids are integers (exact, as in a JSON line), a boolean is
-- true/false, users are comma-separated ids, fields.KEY a custom field; any other column
-- is a string the module checks (the header's names are checked with it first).
local KINDS = { id = "integer", boolean = "boolean", users = "users" }

local function csv_column(acquire, config, i, name)
  name = name:match("^%s*(.-)%s*$")
  if name == "" then usage_error(("row 1: column %d has no name"):format(i)) end
  if name == "contactId" then return { name = name, kind = "contact" } end
  local kind = KINDS[acquire.request_fields()[name]]
  if kind then return { name = name, kind = kind } end
  if name:sub(1, 7) == "fields." then
    if #name == 7 then usage_error("row 1: column 'fields.' names no field (fields.KEY)") end
    return { name = name, kind = "field", key = name:sub(8) }
  end
  if name == "fields" then usage_error("row 1: column 'fields': a custom field is a column of its own, fields.KEY") end
  local ok, e = try(acquire.build_request, "1", { [name] = "" }, config)
  if not ok then usage_error(("row 1: column '%s': %s"):format(name, strip_position(e))) end
  return { name = name, kind = "string" }
end

-- A cell's value for its column, or a usage error naming the row.
local function csv_value(col, cell, row)
  local where = ("row %d: %s"):format(row, col.name)
  if col.kind == "string" or col.kind == "field" then return cell end
  local v = cell:match("^%s*(.-)%s*$")
  if col.kind == "contact" then return v end
  if col.kind == "boolean" then
    if v ~= "true" and v ~= "false" then usage_error(where .. ": true or false expected, got '" .. cell .. "'") end
    return v == "true"
  elseif col.kind == "users" then
    local list = {}
    for user in (v .. ","):gmatch("([^,]*),") do
      user = user:match("^%s*(.-)%s*$")
      if user == "" then usage_error(where .. ": an empty user id in '" .. cell .. "'") end
      list[#list + 1] = user
    end
    return list
  end
  local sign, digits = v:match("^(%-?)(%d+)$")                 -- integer
  if not digits then usage_error(where .. ": an integer expected, got '" .. cell .. "'") end
  digits = digits:gsub("^0+(%d)", "%1")
  local exact = decode.exact_integer((digits ~= "0" and sign or "") .. digits)
  if exact == nil then usage_error(where .. " " .. v .. " cannot be carried exactly (" .. decode.TOO_BIG .. ")") end
  return exact
end

-- --csv: the header row (row 1) names the columns; each later row is an item.
-- An empty cell leaves its key out (the flags' value stands); a quoted empty
-- cell ("") is an empty string. Rows whose cells are all empty are skipped.
-- An iterator, as line_items.
local function csv_items(acquire, config, flags_opts, fh, at)
  local next_record = csv_records(fh, at)
  local columns, row = nil, 1
  return function()
    if not columns then
      local head = next_record()
      if not head then return nil end
      columns = {}
      local seen = {}
      for i, name in ipairs(head.fields) do
        columns[i] = csv_column(acquire, config, i, name)
        if seen[columns[i].name] then usage_error(("row 1: column '%s' appears twice"):format(columns[i].name)) end
        seen[columns[i].name] = true
      end
      if not seen.contactId then usage_error("row 1: no contactId column (the first row names the columns)") end
    end
    while true do
      local r = next_record()
      if not r then return nil end
      row = row + 1
      local empty = true
      for i, cell in ipairs(r.fields) do empty = empty and cell == "" and not r.quoted[i] end
      if not empty then
        if #r.fields ~= #columns then
          usage_error(("row %d: %d fields, but the header row names %d columns"):format(row, #r.fields, #columns))
        end
        local opts, id = copy(flags_opts), nil
        for i, col in ipairs(columns) do
          local cell = r.fields[i]
          if cell ~= "" or r.quoted[i] then
            local v = csv_value(col, cell, row)
            if col.kind == "contact" then
              id = v
            elseif col.kind == "field" then
              if opts.fields == flags_opts.fields then opts.fields = copy(flags_opts.fields or {}) end
              opts.fields[col.key] = v
            else
              opts[col.name] = v
            end
          end
        end
        return { n = row, id = id, opts = opts }
      end
    end
  end
end

M.check_item, M.input_file, M.line_items, M.csv_items = check_item, input_file, line_items, csv_items
M.copy = copy
return M
