-- POST /session-context/bench/context/{random seeded session}/attributes, one of ten keys
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local common = require("common")
function init(args) common.init(args) end
function request()
  local body = '{"key":"k' .. math.random(10) .. '","value":{"n":' .. math.random(1000) .. '}}'
  return wrk.format("POST", "/session-context/bench/context/" .. common.session() .. "/attributes", {
    ["Authorization"] = "Bearer " .. common.manager,
    ["Content-Type"] = "application/json",
  }, body)
end
