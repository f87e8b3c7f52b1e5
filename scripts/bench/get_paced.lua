-- Like get.lua, but each connection waits <delay ms> (the 4th word after `--`) after every
-- answer: a steady load below the maximum, to read latency at a given throughput.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local common = require("common")
local pause = 0
function init(args)
  common.init(args)
  pause = tonumber(args[4]) or 0
end
function delay() return pause end
function request()
  return wrk.format("GET", "/session-context/bench/context/" .. common.session(),
    { ["Authorization"] = "Bearer " .. common.manager })
end
