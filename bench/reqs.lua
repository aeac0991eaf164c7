-- wrk script for Tether's benchmarks: every request comes from a file, one per line,
--   METHOD <TAB> PATH [<TAB> BODY]
-- Thread t of n sends lines t, t+n, t+2n, … in order, so no two requests share a line (each create-link request
-- names a different pair of issues). Bounded in count as well as in time (wrk -d):
--   BENCH_CYCLE=0  each line is sent once; a thread that has sent all of its lines stops (exhausted=1 in the
--                  result: the run had fewer requests than it was given time for, and its rate reads low);
--   BENCH_CYCLE=1  the lines are sent round and round, at most BENCH_MAX requests per thread.
-- Environment: BENCH_REQS (file), BENCH_THREADS (wrk -t), BENCH_CYCLE, BENCH_MAX, BENCH_TOKEN, BENCH_ORG.
-- done() prints one JSON line: requests, non-2xx, socket errors, duration, p50/p90/p99/max latency (µs).

wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_TOKEN") then
   wrk.headers["Authorization"] = "OAuth " .. os.getenv("BENCH_TOKEN")
end
if os.getenv("BENCH_ORG") then
   wrk.headers["X-Org-ID"] = os.getenv("BENCH_ORG")
end

-- A monotonic clock (LuaJIT's ffi): a run that sends all its lines before wrk's -d is up is timed from the first
-- request to the last answer, so its rate is right even though wrk waits out the duration.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local n = tonumber(os.getenv("BENCH_THREADS") or "1")
   cycle = os.getenv("BENCH_CYCLE") == "1"
   max = tonumber(os.getenv("BENCH_MAX") or "1000000")
   reqs = {}
   local i = 0
   for line in io.lines(os.getenv("BENCH_REQS")) do
      if i % n == tid then
         local m, p, b = line:match("^(%S+)\t([^\t]*)\t?(.*)$")
         if b == "" then b = nil end
         reqs[#reqs + 1] = wrk.format(m, p, nil, b)
      end
      i = i + 1
   end
   idx = 0
   sent = 0
   exhausted = 0
   t_first = 0
   t_last = 0
end

function request()
   if idx >= #reqs then
      if cycle then
         idx = 0
      else
         exhausted = 1
         wrk.thread:stop()
         idx = #reqs - 1
      end
   end
   if sent >= max then
      exhausted = 1
      wrk.thread:stop()
   end
   idx = idx + 1
   sent = sent + 1
   if t_first == 0 then t_first = now_us() end
   return reqs[idx]
end

-- Only for runs bounded by their lines (a response callback costs wrk some speed).
if os.getenv("BENCH_CYCLE") ~= "1" then
   function response(status, headers, body)
      t_last = now_us()
   end
end

function done(summary, latency, requests)
   local ex, first, last = 0, nil, 0
   for _, t in ipairs(threads) do
      ex = ex + (t:get("exhausted") or 0)
      local f, l = t:get("t_first") or 0, t:get("t_last") or 0
      if f > 0 and (first == nil or f < first) then first = f end
      if l > last then last = l end
   end
   local active = 0
   if first ~= nil and last > first then active = last - first end
   io.write(string.format(
      '{"requests":%d,"non2xx":%d,"socket_errors":%d,"duration_us":%d,"active_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"exhausted":%d}\n',
      summary.requests, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
      summary.duration, active, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, ex))
end
