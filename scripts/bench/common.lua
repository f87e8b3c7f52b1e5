-- Shared by the bench scripts: wrk calls init(args) once per thread with the words after `--`:
--   <sessions> <management token> <file of storefront tokens, one per line, for bench-1..K>
local common = {}

function common.init(args)
  common.sessions = tonumber(args[1]) or 1000
  common.manager = args[2] or ""
  common.me = {}
  if args[3] then
    for line in io.lines(args[3]) do common.me[#common.me + 1] = line end
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function common.session()
  return "bench-" .. math.random(common.sessions)
end

function common.me_token()
  return common.me[math.random(#common.me)]
end

return common
