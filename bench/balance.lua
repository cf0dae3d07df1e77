-- wrk script: GET an account's balance with a bearer token.
local token = os.getenv("BENCH_TOKEN")
local account = os.getenv("BENCH_FROM")

function request()
  return wrk.format("GET", "/v1/accounts/" .. account .. "/balance", { ["Authorization"] = "Bearer " .. token })
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx responses: %d\n", summary.errors.status))
end
