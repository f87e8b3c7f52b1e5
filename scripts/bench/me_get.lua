-- GET /session-context/bench/me/context with a random storefront token
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local common = require("common")
function init(args) common.init(args) end
function request()
  return wrk.format("GET", "/session-context/bench/me/context",
    { ["Authorization"] = "Bearer " .. common.me_token() })
end
