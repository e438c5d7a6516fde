-- wrk script for scripts/bench/routes_throughput.py: write routes with unique keys.
--
--   wrk -t1 -c8 -d10s -s scripts/bench/wrk_routes.lua http://127.0.0.1:PORT -- MODE PREFIX BATCH [PAUSE_MS [PACING [KEYSPACE]]]
--
-- MODE single: PUT /v1/routes/PREFIX-T-N with a small JSON body (one route each)
-- MODE batch:  POST /v1/routes with {"put": [BATCH items]} (BATCH routes each)
-- Keys are unique per wrk process (PREFIX), thread (T) and request (N); with
-- KEYSPACE > 0, N wraps so that a thread writes at most KEYSPACE keys, every
-- write after the first KEYSPACE replaces a route (a steady table, as a fleet's
-- is: with unique keys the table grows by every write, and at 10,000 routes/s
-- reaches the default max_routes of 10^6 in under two minutes).
-- done() prints one line "WRKJSON {...}" with the totals and latency percentiles
-- (microseconds) for the Python driver to parse.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local mode, prefix, batch, pause, pacing, keyspace = "single", "w", 100, 0, "poisson", 0
local counter = 0
local target = '"target":"10.0.0.1:8080","meta":{"bench":"wrk"}'

function init(args)
  mode = args[1] or "single"
  prefix = args[2] or "w"
  batch = tonumber(args[3] or "100")
  pause = tonumber(args[4] or "0")
  pacing = args[5] or "poisson"
  keyspace = tonumber(args[6] or "0")
  wrk.headers["Content-Type"] = "application/json"
  -- Each wrk process draws its own pauses: seeded from its PREFIX.
  local seed = os.time()
  for i = 1, #prefix do
    seed = (seed * 31 + prefix:byte(i)) % 2147483647
  end
  math.randomseed(seed)
end

-- PAUSE > 0 paces each connection (an open-ish loop below saturation; wrk2's
-- fixed-rate mode is not packaged). wrk asks delay() before every request,
-- the first included.
--
-- PACING poisson (the default): a pause drawn from an exponential
-- distribution of mean PAUSE ms, so the connections' requests are
-- independent arrivals, like many writers in a fleet. PACING fixed: exactly
-- PAUSE ms, as this script did until the tenth round. Fixed pauses keep the
-- connections in lock-step: every connection of every node sends at the same
-- moment, waits the same time, and sends again together. With 1,000-route
-- calls that offered the mesh 20,000 routes at once every 2.5 s (saturated
-- for 1.5 s, idle for 1 s) when it was meant to be 8,000 routes/s.
function delay()
  if pause <= 0 then
    return 0
  end
  if pacing == "fixed" then
    return pause
  end
  return math.floor(-pause * math.log(1 - math.random()) + 0.5)
end

function request()
  counter = counter + 1
  local n = counter
  if keyspace > 0 then
    local per = mode == "single" and 1 or batch
    n = (counter - 1) % math.max(1, math.floor(keyspace / per)) + 1
  end
  local base = prefix .. "-" .. tid .. "-" .. n
  if mode == "single" then
    return wrk.format("PUT", "/v1/routes/" .. base, nil, "{" .. target .. "}")
  end
  local items = {}
  for i = 1, batch do
    items[i] = '{"key":"' .. base .. "-" .. i .. '",' .. target .. "}"
  end
  return wrk.format("POST", "/v1/routes", nil, '{"put":[' .. table.concat(items, ",") .. "]}")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"lat_p50_us":%d,"lat_p90_us":%d,' ..
    '"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
