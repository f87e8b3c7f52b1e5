-- PUT /session-context/bench/context/{random seeded session} with If-Match: * (no 409s)
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local common = require("common")
local body = '{"siteCode":"main","currency":"EUR","targetLocation":"DE","language":"de","cartId":"c1"}'
function init(args) common.init(args) end
function request()
  return wrk.format("PUT", "/session-context/bench/context/" .. common.session(), {
    ["Authorization"] = "Bearer " .. common.manager,
    ["Content-Type"] = "application/json",
    ["If-Match"] = "*",
  }, body)
end
