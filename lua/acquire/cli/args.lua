-- acquire-case's arguments: the options (one table builds the parser, the usage and the
-- help, through lua-argparse), the checks between them, the key and the proxy from a file
-- or the environment, and the configuration and opts they make. Part of bin/acquire-case.
local out = require "acquire.cli.output"
local decode = require "acquire.cli.decode"

local fail, usage_error, strip_position = out.fail, out.usage_error, out.strip_position
local EXIT_USAGE, EXIT_SERVER = out.USAGE, out.SERVER
local PROG = out.PROG

local M = {}

-- The options, in the order --help lists them: { names, argname (nil: a flag),
-- what it does, repeat = true for the ones that repeat }, under group titles.
-- argparse builds the parser, the usage and the help from this one table.
local OPTIONS = {
  "Connection",
  { "--account", "ID", "account id: the API is https://ID.acquire.io (default: $ACQUIRE_ACCOUNT_ID)" },
  { "--base-url", "URL", "http(s)://host[:port] instead of the account's host (default: $ACQUIRE_BASE_URL)" },
  { "--proxy", "URL", "reach Acquire through this proxy: http://host:port, no password (default: "
    .. "$https_proxy, $http_proxy, $ALL_PROXY as curl reads them, credentials included, and $NO_PROXY). "
    .. "A password is never taken from an argument: use --proxy-file or those variables." },
  { "--proxy-file", "FILE", "the proxy's URL, credentials included (http://user:password@host:port), "
    .. "from the first line of FILE" },
  { "--no-proxy", nil, "no proxy, whatever the environment says" },
  { "--key-file", "FILE", "read the API key from the first line of FILE (default: the key in "
    .. "$ACQUIRE_API_KEY). The key is never taken from an argument: other users can read a command "
    .. "line (ps, /proc)." },
  "The case (each flag overrides the same key of --json, of a --batch line and of a --csv column)",
  { "--title", "T", "the case's title" },
  { "--message", "M", "the first message" },
  { "--source", "S", "source, e.g. firstMessage" },
  { "--channel", "C", "channel, e.g. chat" },
  { "--agent", "N", "agentId (a non-negative integer)" },
  { "--route-agent", "N", "routeAgentId (a non-negative integer)" },
  { "--mention", "USER", "a user id to mention; repeat for several", rep = true },
  { "--field", "KEY=VALUE", "a custom field (VALUE is a string); repeat for several", rep = true },
  { "--json", "FILE|-", "read the request's opts as a JSON object from FILE, or from standard input with -" },
  "Batch",
  { "--batch", nil, "create many cases: one item a line on standard input, a contact id or a JSON "
    .. "object {\"contactId\": N, ...opts} (its opts override the flags'); one JSON result a line on "
    .. "stdout as each item finishes (each names its line); progress on stderr when it is a terminal" },
  { "--csv", nil, "with --batch: standard input is CSV (RFC 4180), a header row naming contactId "
    .. "and opts columns (title, agentId, mentionUsers, fields.KEY...)" },
  { "--concurrency", "N", "transfers at once in --batch (default 8, at most 64)" },
  { "--rate", "N", "with --batch: at most N requests a second, for the whole batch" },
  { "--journal", "FILE", "with --batch: record each item's fate in FILE (JSON lines, fsync'd); run "
    .. "again with the same FILE and input, it sends only what is not done" },
  { "--resend-uncertain", nil, "with --journal: send again the items the journal says may have been "
    .. "created (by default they are listed, not sent)" },
  "Reliability",
  { "--reconcile", "S", "when a call may have created the case (the request left, no definitive "
    .. "answer), wait S seconds (0 to 60), then look the case up; found exactly once, it is the result "
    .. "(\"reconciled\": true). Never sends the case again." },
  "Output",
  { "--output", "json|summary", "json: the whole response as JSON (the default); summary: the case, "
    .. "its contact and its visits as lines (not with --batch, which writes JSON lines)" },
  { "-h --help", nil, "print this help and exit" },
}

local EPILOG = [[
Options also take the form --option=value; an option's value may start with "-".

Exit status: 0 created (every item, with --batch); 2 usage error (bad or missing argument, no key,
bad contact id, a number it cannot send in exactly its digits, a changed input with --journal);
3 rejected by the API (HTTP 4xx); 4 network, timeout, TLS or proxy failure; 5 server error (HTTP 5xx,
unreadable response, anything else); 6 items left unsent because the journal says they may have
been created; 130 interrupted (Ctrl-C).
See doc/acquire-case.md.]]

local function parser()
  local ok, argparse = pcall(require, "argparse")
  if not ok then fail(EXIT_SERVER, "cannot load lua-argparse: " .. strip_position(argparse)) end
  local p = argparse(PROG, "Create a case for contact CONTACT_ID in Acquire's CRM and print it; "
      .. "with --batch, one for each line of standard input.", EPILOG)
    :add_help(false):help_max_width(100):help_usage_margin(2):help_description_margin(24)
  p:argument("CONTACT_ID"):target("contact_id"):argname("CONTACT_ID"):args("?")
    :description("the contact (a positive integer); none with --batch")
  local groups = {}
  for _, o in ipairs(OPTIONS) do
    if type(o) == "string" then
      groups[#groups + 1] = { o }
    else
      local opt = o[2] and p:option(o[1]):argname(o[2]) or p:flag(o[1])
      opt:description(o[3])
      if o.rep then opt:count("*") end
      table.insert(groups[#groups], opt)
    end
  end
  for _, g in ipairs(groups) do p:group((table.unpack or unpack)(g)) end
  return p
end

-- Whether a proxy URL ([scheme://][user[:password]@]host[:port][/…]) carries a
-- password: a ':' in its userinfo.
local function proxy_password(url)
  local rest = url:gsub("^%a[%w+.-]*://", "")
  local authority = rest:match("^[^/?#]*")
  local userinfo = authority:match("^(.*)@")
  return userinfo ~= nil and userinfo:find(":", 1, true) ~= nil
end

-- argparse reads any word that starts with "-" as an option, even where an
-- option wants its value ("--title -x", "--agent -1"); the command always took
-- the word after an option as its value. So such pairs are joined first into
-- "--title=-x", which argparse reads as the value. The key is refused here,
-- before anything else: it never belongs on a command line.
local function join_values(argv)
  local valued = {}
  for _, o in ipairs(OPTIONS) do
    if type(o) == "table" and o[2] then valued[o[1]] = true end
  end
  local words, i = {}, 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i, #argv do words[#words + 1] = argv[j] end
      break
    end
    local name = a:match("^(%-%-[^=]*)")
    if name == "--key" or name == "--api-key" then
      usage_error(name .. " is refused: a key on the command line can be read "
        .. "by other users (ps, /proc); set ACQUIRE_API_KEY or use --key-file FILE")
    end
    if name == "--proxy" then
      local url = a:match("^%-%-proxy=(.*)$") or argv[i + 1] or ""
      if proxy_password(url) then
        usage_error("--proxy with a password is refused: a command line can be read by other users "
          .. "(ps, /proc); put the URL in a file (--proxy-file FILE) or in https_proxy, http_proxy "
          .. "or ALL_PROXY")
      end
    end
    if valued[a] and i < #argv then
      words[#words + 1] = a .. "=" .. argv[i + 1]
      i = i + 2
    else
      words[#words + 1] = a
      i = i + 1
    end
  end
  return words
end

-- Which options need which: { option, needs, message }.
local NEEDS = {
  { "concurrency", "batch", "--concurrency goes with --batch" },
  { "csv", "batch", "--csv goes with --batch" },
  { "rate", "batch", "--rate goes with --batch" },
  { "journal", "batch", "--journal goes with --batch" },
  { "resend_uncertain", "journal", "--resend-uncertain goes with --journal" },
}

local function parse_args(argv)
  local p = parser()
  local ok, o = p:pparse(join_values(argv))
  if not ok then usage_error((o:gsub("\nDid you mean", "; did you mean"))) end
  if o.help then
    o.usage = p:get_help()
    return o
  end
  o.mention, o.field = o.mention or {}, o.field or {}
  o.output = o.output or "json"
  if o.output ~= "json" and o.output ~= "summary" then
    usage_error("--output must be json or summary, got '" .. o.output .. "'")
  end
  for _, n in ipairs(NEEDS) do
    if o[n[1]] and not o[n[2]] then usage_error(n[3]) end
  end
  if o.batch then
    if o.output == "summary" then
      usage_error("--output summary does not go with --batch (it writes one JSON result a line)")
    end
    if o.contact_id then
      usage_error("unexpected argument '" .. o.contact_id
        .. "' (--batch reads contact ids from standard input)")
    end
    return o
  end
  if not o.contact_id then usage_error("missing CONTACT_ID") end
  return o
end

-- What the environment configures (ACQUIRE_API_KEY, ACQUIRE_BASE_URL or ACQUIRE_ACCOUNT_ID), read
-- by the module as its default client reads it; the options given beat it.
local function env()
  return require("acquire").env()
end

-- The first line of FILE for option `name`, trailing blanks cut; empty is an error.
local function first_line(name, path)
  local f, err = io.open(path, "rb")
  if not f then fail(EXIT_USAGE, "cannot read " .. name .. ": " .. tostring(err)) end
  local line = f:read("*l") or ""
  f:close()
  line = line:gsub("%s+$", "")
  if line == "" then fail(EXIT_USAGE, name .. " " .. path .. ": the first line is empty") end
  return line
end

local function read_key(o)
  local key
  if o.key_file then
    key = first_line("--key-file", o.key_file)
  else
    key = env().api_key
    if not key then
      fail(EXIT_USAGE, "no API key: set ACQUIRE_API_KEY or use --key-file FILE")
    end
  end
  return key
end

-- The configuration's target: { api_key, base_url | account_id [, reconcile] }.
local function config_for(o, key)
  local config = { api_key = key }
  if o.base_url then
    config.base_url = o.base_url
  elseif o.account then
    config.account_id = o.account       -- an explicit account beats $ACQUIRE_BASE_URL
  elseif env().base_url or env().account_id then
    config.base_url, config.account_id = env().base_url, env().account_id
  else
    fail(EXIT_USAGE, "no account: use --account ID or set ACQUIRE_ACCOUNT_ID "
      .. "(or --base-url URL / ACQUIRE_BASE_URL)")
  end
  if o.reconcile then
    config.reconcile = tonumber(o.reconcile)
    if not config.reconcile then usage_error("--reconcile expects seconds, got '" .. o.reconcile .. "'") end
  end
  return config
end

-- --proxy, --proxy-file, --no-proxy into config.proxy (the module reads the environment).
local function set_proxy(o, config)
  if o.proxy and o.no_proxy then usage_error("--proxy and --no-proxy exclude each other") end
  if o.proxy_file and (o.proxy or o.no_proxy) then
    usage_error("--proxy-file excludes --proxy and --no-proxy")
  end
  if o.proxy_file then o.proxy = first_line("--proxy-file", o.proxy_file) end
  if o.proxy then config.proxy = o.proxy elseif o.no_proxy then config.proxy = false end
end

-- The request's opts: --json's, with the flags over them.
local function opts_for(o)
  local opts = {}
  if o.json then opts = decode.read_json_opts(o.json) end
  if o.title then opts.title = o.title end
  if o.message then opts.message = o.message end
  if o.source then opts.source = o.source end
  if o.channel then opts.channel = o.channel end
  if o.agent then opts.agentId = decode.parse_uint("agent", o.agent) end
  if o.route_agent then opts.routeAgentId = decode.parse_uint("route-agent", o.route_agent) end
  if #o.mention > 0 then opts.mentionUsers = o.mention end
  if #o.field > 0 then
    if opts.fields == nil then opts.fields = {} end
    if type(opts.fields) ~= "table" then
      fail(EXIT_USAGE, "--field: 'fields' in --json is not an object")
    end
    for _, kv in ipairs(o.field) do
      local k, v = kv:match("^([^=]+)=(.*)$")
      if not k then usage_error("--field expects KEY=VALUE, got '" .. kv .. "'") end
      opts.fields[k] = v
    end
  end
  return opts
end

-- --batch's numbers: -> concurrency, rate (nil: not given, create_cases' defaults).
local function batch_numbers(o)
  local concurrency = o.concurrency and decode.parse_uint("concurrency", o.concurrency) or nil
  local rate = nil
  if o.rate then
    rate = tonumber(o.rate)
    if not rate or rate ~= rate or rate <= 0 or rate == math.huge then
      usage_error("--rate expects a positive number of requests a second, got '" .. o.rate .. "'")
    end
  end
  return concurrency, rate
end

M.parse, M.read_key, M.config_for, M.set_proxy = parse_args, read_key, config_for, set_proxy
M.opts_for, M.batch_numbers = opts_for, batch_numbers
return M
