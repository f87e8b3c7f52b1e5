-- PATCH /session-context/bench/me/context with If-Match: * and a random storefront token
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local common = require("common")
function init(args) common.init(args) end
function request()
  local body = '{"currency":"EUR","context":{"seen":' .. math.random(1000) .. '}}'
  return wrk.format("PATCH", "/session-context/bench/me/context", {
    ["Authorization"] = "Bearer " .. common.me_token(),
    ["Content-Type"] = "application/json",
    ["If-Match"] = "*",
  }, body)
end
