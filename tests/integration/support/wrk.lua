-- wrk's script for the tests: progress a test can wait on, and the counts
-- in one line a test can parse.
--
-- Every 100 responses, each wrk thread appends one byte to $WRK_PROGRESS.
local progress = os.getenv("WRK_PROGRESS")
local seen = 0

function response(status, headers, body)
  seen = seen + 1
  if progress and seen % 100 == 0 then
    local f = io.open(progress, "a")
    f:write(".")
    f:close()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk-result requests=%d connect=%d read=%d write=%d status=%d timeout=%d p50=%d p99=%d max=%d\n",
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
