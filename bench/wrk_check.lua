-- wrk script of `tripq bench`: POST a JSON body, check every reply, print one JSON line at the end.
--
-- Arguments (after `--`): the body file, and how many `"duration":` a good reply holds (1 for one
-- trip, the batch size for a batch). A body holding the marker @ID@ gets a fresh request_id per
-- request ("<thread>-<n>"); any other body is sent as it is.
--
-- A reply is ok when its status is 200, it holds "reply_code":0 and exactly the expected number of
-- "duration": fields. Each thread counts in its own Lua state; done() sums the threads' counters.
-- Requests still in flight at the end count as unfinished, neither ok nor errors.

local threads = {}
local expect = 1
local fixed_request = nil
local body_prefix, body_suffix = nil, nil

-- Per-thread counters, read by done() through thread:get.
started = 0
ok = 0
errors = 0

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local body = file:read("*a")
   file:close()
   expect = tonumber(args[2])
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   local first, last = body:find("@ID@", 1, true)
   if first then
      body_prefix, body_suffix = body:sub(1, first - 1), body:sub(last + 1)
   else
      fixed_request = wrk.format(nil, nil, nil, body)
   end
end

function request()
   started = started + 1
   if fixed_request then
      return fixed_request
   end
   return wrk.format(nil, nil, nil, body_prefix .. thread_id .. "-" .. started .. body_suffix)
end

local function count_plain(text, needle)
   local found, position = 0, 1
   while true do
      local first, last = text:find(needle, position, true)
      if not first then
         return found
      end
      found = found + 1
      position = last + 1
   end
end

function response(status, headers, body)
   if status == 200 and body:find('"reply_code":0', 1, true)
      and count_plain(body, '"duration":') == expect then
      ok = ok + 1
   else
      errors = errors + 1
   end
end

function done(summary, latency, requests)
   local started_total, ok_total, bad_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      started_total = started_total + thread:get("started")
      ok_total = ok_total + thread:get("ok")
      bad_total = bad_total + thread:get("errors")
   end
   local e = summary.errors
   -- A request lost to a socket error or a timeout has no reply; it counts as an error too.
   local lost = e.connect + e.read + e.write + e.timeout
   -- Sent but neither answered nor lost when the run ended: a server too slow for the duration.
   -- wrk calls request() once more than it sends, on its first thread, to check the request.
   local unfinished = math.max(0, started_total - 1 - ok_total - bad_total - e.read - e.write)
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"ok":%d,"errors":%d,"unfinished":%d,"p50_ms":%.3f,'
         .. '"p99_ms":%.3f,"duration_s":%.3f}\n',
      ok_total + bad_total + lost, ok_total, bad_total + lost, unfinished,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
