-- wrk script for bench/api_bench.sh: every request is a heartbeat from a different agent.
-- Usage: wrk -t2 -c32 -d20s -s bench/api_wrk.lua http://127.0.0.1:PORT -- AGENTS_FILE [JSON_OUT]
-- AGENTS_FILE has "token instance_id" lines (bench/api_seed writes it).
local agents, n, i = {}, 0, 0
local threads, next_id = {}, 0
local json_out

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local tok, id = line:match("^(%S+)%s+(%S+)")
    if tok then n = n + 1; agents[n] = { tok, id } end
  end
  i = ((tid or 1) - 1) * math.floor(n / 2)  -- threads start half the list apart
end

function request()
  i = i % n + 1
  local a = agents[i]
  local body = '{"instance_id":"' .. a[2] .. '","gpu_source":"virtual","gpus":[{"index":0,"name":"RTX 4090",' ..
      '"util_pct":' .. (10 + i % 90) .. ',"mem_used_mb":12000,"mem_total_mb":24564}],"load_1m":1.5,' ..
      '"cpu_cores":8,"ram_total_mb":32000,"ram_used_mb":12000,"disk_total_gb":100,"disk_used_gb":40}'
  return wrk.format("POST", "/api/v1/agent/status",
                    { ["Authorization"] = "Bearer " .. a[1], ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local out = string.format(
    '{"requests": %d, "duration_s": %.3f, "rps": %.1f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}',
    summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.connect, e.read, e.write, e.status, e.timeout)
  print("WRKJSON " .. out)
end
