-- wrk script: POST /v1/transfers between two accounts with a fresh
-- Idempotency-Key per request. Reads the token and account ids from the
-- environment that bench/run.sh sets.
local token = os.getenv("BENCH_TOKEN")
local from = os.getenv("BENCH_FROM")
local to = os.getenv("BENCH_TO")
local counter = 0
local thread_tag = ""

function init(args)
  thread_tag = tostring(math.random(1, 2147483647)) .. "-" .. tostring(os.time())
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"from_account_id":"%s","to_account_id":"%s","amount":1,"currency":"EUR","description":"bench"}',
    from, to)
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "bench-" .. thread_tag .. "-" .. counter,
  }
  return wrk.format("POST", "/v1/transfers", headers, body)
end

local failures = 0
function response(status, headers, body)
  if status ~= 201 then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("non-201 responses: %d\n", summary.errors.status))
end
