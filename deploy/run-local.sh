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

# Each component's output goes through a pipe that prefixes its name, which
# would make the binaries log JSON lines: on a terminal, keep them readable.
if [ -t 1 ] && ! configured BANK_LOG_FORMAT; then
    export BANK_LOG_FORMAT=text
fi

# Each component's output, every line prefixed with its name.
names=()
pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped"
}
trap stop EXIT
# Ctrl-C (or a TERM) is the way to stop: not a failure.
trap 'stop; exit 0' INT TERM

start() { # name binary
    "$bin/$2" > >(sed -u "s/^/$(printf '%-8s' "$1")| /") 2>&1 &
    pids+=($!)
    names+=("$1")
}
start identity bank-identity
start ledger bank-ledger
start account bank-account
start gateway bank-gateway

# The name of the component whose process is `pid`.
name_of() {
    local index
    for index in "${!pids[@]}"; do
        [ "${pids[$index]}" = "$1" ] && { echo "${names[$index]}"; return; }
    done
    echo "a component"
}

# Says which component stopped and how, then stops the others. A component
# exits 0 only when it was told to stop (Ctrl-C reaches all of them at once).
exited() { # pid status
    if [ "$2" = 0 ]; then
        exit 0
    fi
    echo "$(name_of "$1") exited with status $2; stopping the others" >&2
    exit 1
}

# The first component that is no longer running, if any.
first_exited() {
    local pid
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "$pid"; return; }
    done
    return 1
}

# Ready: the gateway answers and sees every service serving. Its address may
# come from .env, which is not parsed here: then readiness is not awaited.
gateway_url=$(shown GATEWAY_LISTEN_ADDR 127.0.0.1:8080 http://)
ready=unknown
if [[ $gateway_url == http://* ]] && command -v curl >/dev/null 2>&1; then
    ready=no
    for _ in $(seq 1 600); do
        if pid=$(first_exited); then
            wait "$pid" && status=0 || status=$?
            exited "$pid" "$status"
        fi
        if curl -sf "$gateway_url/readyz" 2>/dev/null \
            | grep -q '"identity":"serving","account":"serving","ledger":"serving"'; then
            ready=yes
            break
        fi
        sleep 0.2
    done
fi
case $ready in
    yes) heading="Ready." ;;
    no) heading="Started, but the gateway does not see every service serving yet ($gateway_url/readyz)." ;;
    *) heading="Started (readiness not checked: the gateway's address is set in .env)." ;;
esac

cat <<INFO

  $heading

  gateway   $gateway_url
  identity  $(shown IDENTITY_LISTEN_ADDR 127.0.0.1:50051)  (gRPC; probes and metrics on $(shown IDENTITY_ADMIN_LISTEN_ADDR 127.0.0.1:9051 http://))
  account   $(shown ACCOUNT_LISTEN_ADDR 127.0.0.1:50052)  (gRPC; probes and metrics on $(shown ACCOUNT_ADMIN_LISTEN_ADDR 127.0.0.1:9052 http://))
  ledger    $(shown LEDGER_LISTEN_ADDR 127.0.0.1:50053)  (gRPC; probes and metrics on $(shown LEDGER_ADMIN_LISTEN_ADDR 127.0.0.1:9053 http://))
  operator  $(shown BANK_BOOTSTRAP_OPERATOR_EMAIL none)${operator_note}

  Ctrl-C stops all four.

INFO

# Stop everything as soon as any component exits, saying which (wait -p needs
# bash 5.1; older shells find it by polling).
if (( BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1) )); then
    status=0
    wait -n -p pid "${pids[@]}" || status=$?
    exited "$pid" "$status"
else
    while ! pid=$(first_exited); do sleep 1; done
    wait "$pid" && status=0 || status=$?
    exited "$pid" "$status"
fi
