#!/usr/bin/env bash
# The load benchmark: release builds of all four components on SQLite in a
# temporary directory, then wrk against the gateway for transfers between two
# accounts (one hot pair: the worst case for a ledger) and for balance reads.
# Ports 18080 and 15051-15053, so a running `make run` is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-20s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}

if ! command -v wrk >/dev/null 2>&1; then
    echo "make bench needs wrk (Debian/Ubuntu: apt-get install wrk)" >&2
    exit 1
fi

cargo build --release --bins --quiet

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
operator_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
export RUST_LOG=error
export IDENTITY_LISTEN_ADDR=127.0.0.1:15051 ACCOUNT_LISTEN_ADDR=127.0.0.1:15052 LEDGER_LISTEN_ADDR=127.0.0.1:15053
export IDENTITY_ENDPOINT=http://127.0.0.1:15051 ACCOUNT_ENDPOINT=http://127.0.0.1:15052 LEDGER_ENDPOINT=http://127.0.0.1:15053
export GATEWAY_LISTEN_ADDR=127.0.0.1:18080
export IDENTITY_DATABASE_URL="sqlite://$work/identity.db?mode=rwc"
export ACCOUNT_DATABASE_URL="sqlite://$work/account.db?mode=rwc"
export LEDGER_DATABASE_URL="sqlite://$work/ledger.db?mode=rwc"
export IDENTITY_SIGNING_KEYS_DIR="$work/keys"
export IDENTITY_SERVICE_CLIENTS="account=$secret" ACCOUNT_SERVICE_CLIENT_SECRET="$secret"
export BANK_BOOTSTRAP_OPERATOR_EMAIL=bench-operator@bank.local BANK_BOOTSTRAP_OPERATOR_PASSWORD="$operator_password"
export GATEWAY_RATE_LIMIT_PER_MINUTE=100000000 GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE=1000

for component in identity ledger account gateway; do
    "target/release/bank-$component" & pids+=($!)
done

G=http://127.0.0.1:18080
for _ in $(seq 1 100); do
    curl -sf "$G/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -sf "$G/readyz" >/dev/null

field() { tr -d '\n' | sed -E "s/.*\"$1\": *\"?([^\",}]*)\"?.*/\1/"; }
json=(-H 'content-type: application/json')
curl -sf -X POST "$G/v1/auth/register" "${json[@]}" \
    -d '{"email":"bench@bank.local","password":"bench password 123","full_name":"Bench"}' >/dev/null
BENCH_TOKEN=$(curl -sf -X POST "$G/v1/auth/login" "${json[@]}" \
    -d '{"email":"bench@bank.local","password":"bench password 123"}' | field access_token)
BENCH_FROM=$(curl -sf -X POST "$G/v1/accounts" -H "authorization: Bearer $BENCH_TOKEN" "${json[@]}" -d '{"currency":"EUR"}' | field id)
BENCH_TO=$(curl -sf -X POST "$G/v1/accounts" -H "authorization: Bearer $BENCH_TOKEN" "${json[@]}" -d '{"currency":"EUR"}' | field id)
operator=$(curl -sf -X POST "$G/v1/auth/login" "${json[@]}" \
    -d "{\"email\":\"bench-operator@bank.local\",\"password\":\"$operator_password\"}" | field access_token)
curl -sf -X POST "$G/v1/admin/deposits" -H "authorization: Bearer $operator" "${json[@]}" -H 'Idempotency-Key: bench-funding' \
    -d "{\"account_id\":\"$BENCH_FROM\",\"amount\":1000000000000,\"currency\":\"EUR\",\"reference\":\"bench\"}" >/dev/null
export BENCH_TOKEN BENCH_FROM BENCH_TO

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "== POST /v1/transfers (one hot pair of accounts, SQLite), $CONNECTIONS connections, $DURATION"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/transfer.lua "$G"
echo "== GET /v1/accounts/{id}/balance, $CONNECTIONS connections, $DURATION"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/balance.lua "$G"
echo "== ledger verification after the run"
curl -sf "$G/v1/admin/ledger/verify" -H "authorization: Bearer $operator" | head -c 200
echo
