#!/usr/bin/env bash
# Starts the four components on SQLite under ./var/ for local use, and stops all
# of them on Ctrl-C. Secrets for the local shape are generated once into ./var/
# (owner-only files) and reused on later runs; nothing here is for production.
set -euo pipefail

cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/debug"
mkdir -p var
umask 077

# The binaries read ./.env themselves; load it here too (variables already set
# win, as in the binaries) so that the defaults below never shadow it.
if [ -f .env ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line#"${line%%[![:space:]]*}"}"
        case "$line" in '' | '#'*) continue ;; esac
        line="${line#export }"
        key="${line%%=*}"
        value="${line#*=}"
        [[ "$line" == *=* && "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
            value="${BASH_REMATCH[1]}"
        fi
        [ -n "${!key+set}" ] || export "$key=$value"
    done < .env
fi

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
operator_note=""
if [ -z "${BANK_BOOTSTRAP_OPERATOR_EMAIL:-}" ] && [ -z "${BANK_BOOTSTRAP_OPERATOR_PASSWORD:-}" ]; then
    export BANK_BOOTSTRAP_OPERATOR_EMAIL=operator@bank.local
    export BANK_BOOTSTRAP_OPERATOR_PASSWORD="$(secret_file var/operator-password)"
    operator_note=" (password in var/operator-password)"
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
  operator  ${BANK_BOOTSTRAP_OPERATOR_EMAIL:-none}${operator_note}

  Ctrl-C stops all four.

INFO

# Stop everything as soon as any component exits (bash 4.3 and later; older
# shells, e.g. macOS's bash 3.2, wait until Ctrl-C).
if (( BASH_VERSINFO[0] > 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 3) )); then
    wait -n
else
    wait
fi
