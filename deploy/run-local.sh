#!/usr/bin/env bash
# Starts the four components on SQLite under ./var/ for local use, and stops all
# of them on Ctrl-C. Secrets for the local shape are generated once into ./var/
# (owner-only files) and reused on later runs; nothing here is for production.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=target/debug
mkdir -p var
umask 077

secret_file() {
    local path=$1
    if [ ! -s "$path" ]; then
        head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$path"
    fi
    cat "$path"
}

service_secret=$(secret_file var/account-client-secret)
export IDENTITY_SERVICE_CLIENTS="${IDENTITY_SERVICE_CLIENTS:-account=$service_secret}"
export ACCOUNT_SERVICE_CLIENT_SECRET="${ACCOUNT_SERVICE_CLIENT_SECRET:-$service_secret}"
if [ -z "${BANK_BOOTSTRAP_OPERATOR_EMAIL:-}" ]; then
    export BANK_BOOTSTRAP_OPERATOR_EMAIL=operator@bank.local
    export BANK_BOOTSTRAP_OPERATOR_PASSWORD="$(secret_file var/operator-password)"
fi

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped"
}
trap stop INT TERM EXIT

"$bin/bank-identity" & pids+=($!)
"$bin/bank-ledger" & pids+=($!)
"$bin/bank-account" & pids+=($!)
"$bin/bank-gateway" & pids+=($!)

cat <<INFO

  gateway   http://${GATEWAY_LISTEN_ADDR:-127.0.0.1:8080}
  identity  ${IDENTITY_LISTEN_ADDR:-127.0.0.1:50051}  (gRPC)
  account   ${ACCOUNT_LISTEN_ADDR:-127.0.0.1:50052}  (gRPC)
  ledger    ${LEDGER_LISTEN_ADDR:-127.0.0.1:50053}  (gRPC)
  operator  ${BANK_BOOTSTRAP_OPERATOR_EMAIL}$( [ -f var/operator-password ] && echo " (password in var/operator-password)")

  Ctrl-C stops all four.

INFO

# Stop everything as soon as any component exits.
wait -n
