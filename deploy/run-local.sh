#!/usr/bin/env bash
# Starts the four components on SQLite under ./var/ for local use, and stops all
# of them on Ctrl-C. Secrets for the local shape are generated once into ./var/
# (owner-only files) and reused on later runs; nothing here is for production.
set -euo pipefail

cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/debug"
mkdir -p var
umask 077

# Whether a variable is configured: set in the environment, or defined in ./.env.
# The binaries read .env themselves (variables already set win); it is only looked
# into here, never parsed, so that the local defaults below never shadow it.
configured() {
    [ -n "${!1:-}" ] && return 0
    # A value that is not empty: bare, or inside quotes (KEY="" is unset).
    [ -f .env ] && grep -Eq "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*([^[:space:]#\"']|\"[^\"]|'[^'])" .env
}

# The value to show for a variable (after an optional prefix such as http://):
# its own, the default, or a pointer to .env, which is not parsed here.
shown() {
    if [ -n "${!1:-}" ]; then
        echo "${3:-}${!1}"
    elif configured "$1"; then
        echo "(as set in .env)"
    else
        echo "${3:-}$2"
    fi
}

secret_file() {
    local path=$1
    if [ ! -s "$path" ]; then
        head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$path"
    fi
    cat "$path"
}

# The account service's credentials at identity: both configured, or both
# generated here (a secret under var/), never one of each.
if configured ACCOUNT_SERVICE_CLIENT_SECRET && configured IDENTITY_SERVICE_CLIENTS; then
    :
elif configured ACCOUNT_SERVICE_CLIENT_SECRET || configured IDENTITY_SERVICE_CLIENTS; then
    echo "set both ACCOUNT_SERVICE_CLIENT_SECRET and IDENTITY_SERVICE_CLIENTS, or neither" >&2
    exit 2
elif [ -z "${ACCOUNT_SERVICE_CLIENT_ID:-}" ] && configured ACCOUNT_SERVICE_CLIENT_ID; then
    echo "ACCOUNT_SERVICE_CLIENT_ID is set in .env: set ACCOUNT_SERVICE_CLIENT_SECRET and IDENTITY_SERVICE_CLIENTS there too" >&2
    exit 2
else
    service_secret=$(secret_file var/account-client-secret)
    gateway_secret=$(secret_file var/gateway-client-secret)
    export ACCOUNT_SERVICE_CLIENT_SECRET="$service_secret"
    # The gateway vouches with its own secret for the client addresses it
    # reports; generated here with its entry at identity, as a pair.
    export GATEWAY_SERVICE_CLIENT_SECRET="$gateway_secret"
    export IDENTITY_SERVICE_CLIENTS="${ACCOUNT_SERVICE_CLIENT_ID:-account}=$service_secret,gateway=$gateway_secret"
fi
operator_note=""
if ! configured BANK_BOOTSTRAP_OPERATOR_EMAIL && ! configured BANK_BOOTSTRAP_OPERATOR_PASSWORD; then
    operator_password=$(secret_file var/operator-password)
    export BANK_BOOTSTRAP_OPERATOR_EMAIL=operator@bank.local
    export BANK_BOOTSTRAP_OPERATOR_PASSWORD="$operator_password"
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

  gateway   $(shown GATEWAY_LISTEN_ADDR 127.0.0.1:8080 http://)
  identity  $(shown IDENTITY_LISTEN_ADDR 127.0.0.1:50051)  (gRPC; probes and metrics on $(shown IDENTITY_ADMIN_LISTEN_ADDR 127.0.0.1:9051 http://))
  account   $(shown ACCOUNT_LISTEN_ADDR 127.0.0.1:50052)  (gRPC; probes and metrics on $(shown ACCOUNT_ADMIN_LISTEN_ADDR 127.0.0.1:9052 http://))
  ledger    $(shown LEDGER_LISTEN_ADDR 127.0.0.1:50053)  (gRPC; probes and metrics on $(shown LEDGER_ADMIN_LISTEN_ADDR 127.0.0.1:9053 http://))
  operator  $(shown BANK_BOOTSTRAP_OPERATOR_EMAIL none)${operator_note}

  Ctrl-C stops all four.

INFO

# Stop everything as soon as any component exits (bash 4.3 and later; older
# shells, e.g. macOS's bash 3.2, wait until Ctrl-C).
if (( BASH_VERSINFO[0] > 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 3) )); then
    wait -n
else
    wait
fi
