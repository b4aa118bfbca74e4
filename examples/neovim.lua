-- examples/neovim.lua: a case from inside Neovim (0.7+), which never freezes: vim.loop is luv.
-- nvim --headless -u NONE -c 'luafile examples/neovim.lua' -c 'qa!' (ACQUIRE_BASE_URL, ACQUIRE_API_KEY set)
-- luacheck: read globals vim
local acquire, aq = require "acquire", require "acquire.luv"
local client = acquire.new{ base_url = os.getenv("ACQUIRE_BASE_URL"), api_key = os.getenv("ACQUIRE_API_KEY") }
local done = false
aq.create_case(client, 597752, { title = "From Neovim" }, vim.schedule_wrap(function(res, err)
  vim.api.nvim_echo({ { res and res.data.title .. ": " .. res.data.status or tostring(err) } }, true, {})
  done = true
end), vim.loop)
vim.wait(10000, function() return done end)   -- headless: the editor stays up until the answer is in
