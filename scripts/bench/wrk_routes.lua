-- wrk script for scripts/bench/routes_throughput.py: write routes with unique keys.
--
--   wrk -t1 -c8 -d10s -s scripts/bench/wrk_routes.lua http://127.0.0.1:PORT -- MODE PREFIX BATCH [PAUSE_MS]
--
-- MODE single: PUT /v1/routes/PREFIX-T-N with a small JSON body (one route each)
-- MODE batch:  POST /v1/routes with {"put": [BATCH items]} (BATCH routes each)
-- Keys are unique per wrk process (PREFIX), thread (T) and request (N).
-- done() prints one line "WRKJSON {...}" with the totals and latency percentiles
-- (microseconds) for the Python driver to parse.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local mode, prefix, batch, pause = "single", "w", 100, 0
local counter = 0
local target = '"target":"10.0.0.1:8080","meta":{"bench":"wrk"}'

function init(args)
  mode = args[1] or "single"
  prefix = args[2] or "w"
  batch = tonumber(args[3] or "100")
  pause = tonumber(args[4] or "0")
  wrk.headers["Content-Type"] = "application/json"
end

-- PAUSE > 0 paces each connection: PAUSE ms after each answer (an open-ish
-- loop below saturation; wrk2's fixed-rate mode is not packaged).
function delay()
  return pause
end

function request()
  counter = counter + 1
  local base = prefix .. "-" .. tid .. "-" .. counter
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
