-- The bench scripts' numbers: a "key value" line, a quantile, a summary of rounds.
local M = {}

function M.out(k, v) io.write(k, " ", string.format("%.3f", v), "\n") end

-- q in 0..1, linear between closest ranks (xs is not reordered)
function M.quantile(xs, q)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local h = (#s - 1) * q + 1
  local lo = math.floor(h)
  return s[lo] + (h - lo) * ((s[lo + 1] or s[lo]) - s[lo])
end

-- "<key>_p50", "_p25", "_p75", "_min", "_max" over the rounds' values
function M.summary(key, xs)
  for _, p in ipairs{ { "p50", 0.5 }, { "p25", 0.25 }, { "p75", 0.75 }, { "min", 0 }, { "max", 1 } } do
    M.out(key .. "_" .. p[1], M.quantile(xs, p[2]))
  end
end

return M
