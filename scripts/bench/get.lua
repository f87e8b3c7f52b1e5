-- GET /session-context/bench/context/{random seeded session}
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local common = require("common")
function init(args) common.init(args) end
function request()
  return wrk.format("GET", "/session-context/bench/context/" .. common.session(),
    { ["Authorization"] = "Bearer " .. common.manager })
end
