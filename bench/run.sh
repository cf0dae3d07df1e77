#!/usr/bin/env bash
# `make bench`: the load benchmark.
#
# Builds the release binaries (the four components and bank-loadgen), then
#   1. on PostgreSQL (the server of BANK_TEST_POSTGRES_URL, fresh databases):
#      measures the anchors with pgbench (bench/anchor.sql: the same transfer done the
#      plain way, one SQL function call per transfer), starts identity, ledger,
#      account and gateway, and runs the scenarios: REST uniform, REST hot, ledger
#      gRPC direct (at REST's concurrency, then at its own best), deposits, holds
#      placed then posted, transfers during a login storm, one client;
#   2. on SQLite (files in a temporary directory): restarts the four components and
#      runs REST uniform, then the SQLite anchor (bench/sqlite_anchor.py).
# After every scenario GET /v1/admin/ledger/verify must answer "ok":true.
# Prints one markdown table, the CPU each component spent per posting in each
# scenario, peak RSS per service, the machine and the durability settings
# (synchronous_commit and fsync must be on).
#
# Environment:
#   BANK_TEST_POSTGRES_URL  server to use [postgres://postgres@127.0.0.1:5432/postgres]
#   BENCH_SECONDS           measured seconds per scenario [20; short mode 3]
#   BENCH_WARMUP            warmup seconds per scenario [3; short mode 1]
#   BENCH_CLIENTS           concurrent clients of the REST scenarios on PostgreSQL [128]
#   BENCH_GRPC_CLIENTS      concurrent clients of the second ledger gRPC direct scenario [512]
#   BENCH_SQLITE_CLIENTS    concurrent clients of the SQLite scenario [512]
#   BENCH_GATEWAY_WORKERS   the gateway's runtime worker threads (TOKIO_WORKER_THREADS) [1]
#   BENCH_ACCOUNTS          accounts of the uniform scenarios [100; short mode 50]
#   BENCH_SHORT=1           short mode, for CI
#   CARGO_TARGET_DIR        where the release binaries are [target]
# Ports 18080, 15051-15053 and 19051-19053, so a running `make run` is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

short=${BENCH_SHORT:-0}
if [[ $short == 1 ]]; then
    duration=${BENCH_SECONDS:-3}
    warmup=${BENCH_WARMUP:-1}
    n_accounts=${BENCH_ACCOUNTS:-50}
else
    duration=${BENCH_SECONDS:-20}
    warmup=${BENCH_WARMUP:-3}
    n_accounts=${BENCH_ACCOUNTS:-100}
fi
# Each scenario runs at the concurrency that served it best on a 2-core machine:
# REST on PostgreSQL is CPU-bound by 128 clients (more only queue), while gRPC
# direct and SQLite are bound by their one writer's commit cycle, whose groups
# grow with the clients waiting (BENCHMARKS.md has the measurements). gRPC
# direct also runs at the REST scenarios' concurrency, for what the gateway costs.
clients=${BENCH_CLIENTS:-128}
grpc_clients=${BENCH_GRPC_CLIENTS:-512}
sqlite_clients=${BENCH_SQLITE_CLIENTS:-512}
# The gateway only relays: on two cores shared with the other services,
# PostgreSQL and the load generator, its second worker thread cost more in
# wakeups than it added (one worker is also what its k8s CPU limit of one gives it).
gateway_workers=${BENCH_GATEWAY_WORKERS:-1}
storm_clients=4
grpc_connections=4
anchor_clients=8
anchor_threads=2
anchor_accounts=10000
funding=1000000000000
pg_url=${BANK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
api_limit=1000000000
auth_limit=1000000000
gateway_port=18080
identity_port=15051
account_port=15052
ledger_port=15053
identity_admin_port=19051
account_admin_port=19052
ledger_admin_port=19053
G=http://127.0.0.1:$gateway_port

die() {
    echo "bench: $*" >&2
    exit 1
}
log() { echo "bench: [${SECONDS}s] $*" >&2; }

for value in "$duration" "$warmup" "$clients" "$grpc_clients" "$sqlite_clients" "$gateway_workers" "$n_accounts"; do
    [[ $value =~ ^[0-9]+$ ]] || die "BENCH_SECONDS, BENCH_WARMUP, BENCH_CLIENTS, BENCH_GRPC_CLIENTS, BENCH_SQLITE_CLIENTS, BENCH_GATEWAY_WORKERS and BENCH_ACCOUNTS must be whole numbers"
done
((duration > 0 && clients > 0 && grpc_clients > 0 && sqlite_clients > 0 && gateway_workers > 0 && n_accounts >= 2)) ||
    die "need BENCH_SECONDS > 0, BENCH_CLIENTS, BENCH_GRPC_CLIENTS, BENCH_SQLITE_CLIENTS and BENCH_GATEWAY_WORKERS > 0, BENCH_ACCOUNTS >= 2"

# A PostgreSQL client tool: on the PATH, else from the newest server installation.
pg_tool() {
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
        return
    fi
    local candidate
    for candidate in /usr/lib/postgresql/15/bin/"$1" $(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -rV); do
        if [[ -x $candidate ]]; then
            echo "$candidate"
            return
        fi
    done
    die "make bench needs $1 (PostgreSQL client tools)"
}
for tool in cargo curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "make bench needs $tool"
done
psql=$(pg_tool psql)
pgbench=$(pg_tool pgbench)

for port in $gateway_port $identity_port $account_port $ledger_port $identity_admin_port $account_admin_port $ledger_admin_port; do
    if (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; stop whatever listens there first"
    fi
done

log "building release binaries"
cargo build --release --bins --quiet
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
bin=$target_dir/release
for component in identity ledger account gateway; do
    [[ -x $bin/bank-$component ]] || die "missing $bin/bank-$component"
done
loadgen=$bin/bank-loadgen
[[ -x $loadgen ]] || die "missing $loadgen"

# ---------------------------------------------------------------------------
# Clean-up: every process started here and every database created here.

work=$(mktemp -d "${TMPDIR:-/tmp}/bank-bench.XXXXXX")
service_pids=()
service_names=()
background_pids=()
databases=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${background_pids[@]}" "${service_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${background_pids[@]}" "${service_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if ((status != 0)) && compgen -G "$work/logs/*.log" >/dev/null; then
        local file
        for file in "$work"/logs/*.log; do
            echo "---- last lines of $(basename "$file")" >&2
            tail -n 20 "$file" >&2 || true
        done
    fi
    local db
    for db in "${databases[@]}"; do
        "$psql" -Xq "$pg_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
            "$psql" -Xq "$pg_url" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 ||
            echo "bench: could not drop database $db" >&2
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$work/logs" "$work/results"

# ---------------------------------------------------------------------------
# PostgreSQL: durability, version, databases.

sql() { "$psql" -XAtq -v ON_ERROR_STOP=1 "$@"; }
sql "$pg_url" -c 'SELECT 1' >/dev/null || die "cannot connect to PostgreSQL at BANK_TEST_POSTGRES_URL"
synchronous_commit=$(sql "$pg_url" -c 'SHOW synchronous_commit')
fsync=$(sql "$pg_url" -c 'SHOW fsync')
pg_version=$(sql "$pg_url" -c 'SHOW server_version')
# The server's settings that differ from PostgreSQL's defaults and move the
# results (runs on servers set up differently do not compare), for the report.
pg_settings=$(sql "$pg_url" -c "SELECT coalesce(string_agg(name || '=' || current_setting(name), ', ' ORDER BY name), 'none')
    FROM pg_settings WHERE source NOT IN ('default', 'override', 'client', 'session')
      AND (name LIKE 'autovacuum%' OR name LIKE '%wal%' OR name LIKE 'checkpoint%' OR name LIKE 'enable_%'
           OR name IN ('shared_buffers', 'work_mem', 'effective_cache_size', 'random_page_cost',
                       'synchronous_commit', 'fsync', 'full_page_writes', 'commit_delay', 'ssl', 'jit'))")
[[ $synchronous_commit == on && $fsync == on ]] ||
    die "PostgreSQL must acknowledge only durable commits: synchronous_commit=$synchronous_commit, fsync=$fsync (both must be on)"

# The URL of database $1 on the same server (same user, host and options).
pg_query=""
[[ $pg_url == *\?* ]] && pg_query="?${pg_url#*\?}"
pg_base=${pg_url%%\?*}
if [[ $pg_base =~ ^[a-z]+://[^/]*/ ]]; then
    pg_base=${pg_base%/*}
fi
db_url() { echo "$pg_base/$1$pg_query"; }

prefix=bench_$$
# The ledger's database as deploy/postgres-init.sql makes it (the C collation). The
# anchor's keeps the server's defaults, as in every earlier run, so runs compare.
for name in identity account ledger anchor; do
    databases+=("${prefix}_$name")
    case $name in
    ledger) options=" TEMPLATE template0 LOCALE_PROVIDER libc LC_COLLATE 'C'" ;;
    *) options="" ;;
    esac
    sql "$pg_url" -c "CREATE DATABASE ${prefix}_$name$options" >/dev/null
done
anchor_url=$(db_url "${prefix}_anchor")

# ---------------------------------------------------------------------------
# Anchors on PostgreSQL, before the services start: same server, idle.

# Percentiles and counts from pgbench --log files: "client tx latency_us ...".
pgbench_log_summary() { # name tps files...
    python3 - "$@" <<'EOF'
import json, sys
name, tps, files = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
latencies, failed = [], 0
for path in files:
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            if parts[2].isdigit():
                latencies.append(int(parts[2]))
            else:
                failed += 1
latencies.sort()
def ms(q):
    if not latencies:
        return None
    i = min(len(latencies) - 1, max(0, int(q * len(latencies) + 0.5) - 1))
    return round(latencies[i] / 1000.0, 3)
print(json.dumps({"scenario": name, "ok": len(latencies), "errors": failed, "rate": tps,
                  "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999)}))
EOF
}

anchor() { # name script clients threads
    local name=$1 script=$2 c=$3 j=$4 out tps
    if ((warmup > 0)); then
        (cd "$work" && "$pgbench" -n -c "$c" -j "$j" -T "$warmup" -f "$root/bench/$script" "$anchor_url") \
            >/dev/null 2>&1 || die "pgbench warmup of $name failed"
    fi
    out=$(cd "$work" && "$pgbench" -n -c "$c" -j "$j" -T "$duration" -f "$root/bench/$script" \
        -l --log-prefix="$work/pgbench-$name" "$anchor_url" 2>&1) || {
        echo "$out" >&2
        die "pgbench $name failed"
    }
    tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' <<<"$out" | head -n 1)
    [[ -n $tps ]] || die "no tps in the pgbench output of $name"
    pgbench_log_summary "$name" "$tps" "$work/pgbench-$name".* >"$work/results/anchor-$name.json"
    rm -f "$work/pgbench-$name".*
}

log "PostgreSQL anchor: $anchor_accounts accounts, pgbench -c $anchor_clients -j $anchor_threads, ${duration}s each"
sql "$anchor_url" -v accounts=$anchor_accounts -v balance=$funding -f "$root/bench/anchor.sql" >/dev/null
anchor pg-uniform anchor-uniform.pgbench $anchor_clients $anchor_threads
anchor pg-hot anchor-hot.pgbench $anchor_clients $anchor_threads
anchor pg-one-client anchor-uniform.pgbench 1 1

# ---------------------------------------------------------------------------
# The four components.

secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
operator_email=bench-operator@bank.local
operator_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
customer_email=bench-customer@bank.local
storm_email=bench-storm@bank.local
user_password="bench password $(head -c 12 /dev/urandom | base64 | tr -d '/+=\n')"

unset REDIS_URL OTEL_EXPORTER_OTLP_ENDPOINT OTEL_SERVICE_NAME BANK_CORS_ALLOWED_ORIGINS GATEWAY_TRUSTED_PROXIES
export RUST_LOG=error
export IDENTITY_LISTEN_ADDR=127.0.0.1:$identity_port ACCOUNT_LISTEN_ADDR=127.0.0.1:$account_port
export LEDGER_LISTEN_ADDR=127.0.0.1:$ledger_port GATEWAY_LISTEN_ADDR=127.0.0.1:$gateway_port
export IDENTITY_ADMIN_LISTEN_ADDR=127.0.0.1:$identity_admin_port ACCOUNT_ADMIN_LISTEN_ADDR=127.0.0.1:$account_admin_port
export LEDGER_ADMIN_LISTEN_ADDR=127.0.0.1:$ledger_admin_port
export IDENTITY_ENDPOINT=http://127.0.0.1:$identity_port ACCOUNT_ENDPOINT=http://127.0.0.1:$account_port
export LEDGER_ENDPOINT=http://127.0.0.1:$ledger_port
export IDENTITY_SERVICE_CLIENTS="account=$secret,gateway=$secret-gateway" ACCOUNT_SERVICE_CLIENT_SECRET="$secret" ACCOUNT_SERVICE_CLIENT_ID=account
export GATEWAY_SERVICE_CLIENT_SECRET="$secret-gateway"
# The bench's customer holds every account of the uniform scenarios.
export ACCOUNT_MAX_OPEN_PER_USER=$((n_accounts + 10))
export BANK_BOOTSTRAP_OPERATOR_EMAIL=$operator_email BANK_BOOTSTRAP_OPERATOR_PASSWORD=$operator_password
export GATEWAY_RATE_LIMIT_PER_MINUTE=$api_limit GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE=$auth_limit
export GATEWAY_REQUEST_TIMEOUT_SECONDS=120

start_services() { # label
    local label=$1 component deadline pid
    export IDENTITY_SIGNING_KEYS_DIR="$work/$label-keys"
    service_pids=()
    service_names=()
    for component in identity ledger account gateway; do
        # From the work directory, so no .env file of the checkout is read; the
        # other services keep tokio's default of one worker per core.
        (
            cd "$work"
            if [[ $component == gateway ]]; then export TOKIO_WORKER_THREADS=$gateway_workers; fi
            exec "$bin/bank-$component"
        ) >>"$work/logs/$label-$component.log" 2>&1 &
        service_pids+=($!)
        service_names+=("$component")
    done
    deadline=$((SECONDS + 120))
    # The gateway is ready on its own; wait until it sees every service serving.
    until curl -sf "$G/readyz" 2>/dev/null | grep -q '"identity":"serving","account":"serving","ledger":"serving"'; do
        for pid in "${service_pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "a component exited while starting ($label); see the log above"
        done
        ((SECONDS < deadline)) || die "the gateway was not ready within 120 s ($label)"
        sleep 0.2
    done
}

# Peak RSS (VmHWM) of each running component, into results/rss-<label>.json.
record_rss() { # label
    local label=$1 i kib entries=()
    for i in "${!service_pids[@]}"; do
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/${service_pids[$i]}/status" 2>/dev/null || true)
        entries+=("\"${service_names[$i]}\":${kib:-null}")
    done
    (
        IFS=,
        echo "{${entries[*]}}"
    ) >"$work/results/rss-$label.json"
}

stop_services() {
    local pid deadline
    for pid in "${service_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 20))
    for pid in "${service_pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    service_pids=()
    service_names=()
}

# ---------------------------------------------------------------------------
# Setup through the REST API.

field() { tr -d '\n' | sed -E "s/.*\"$1\": *\"?([^\",}]*)\"?.*/\1/"; }
post() { # path token body [idempotency-key]
    local args=(-sS --fail-with-body -X POST "$G$1" -H 'content-type: application/json' -d "$3")
    [[ -n $2 ]] && args+=(-H "authorization: Bearer $2")
    [[ -n ${4:-} ]] && args+=(-H "Idempotency-Key: $4")
    curl "${args[@]}"
}
login() { # email password
    local token
    token=$(post /v1/auth/login "" "{\"email\":\"$1\",\"password\":\"$2\"}" | field access_token) ||
        die "login of $1 failed"
    [[ -n $token ]] || die "login of $1 answered no token"
    echo "$token"
}
open_accounts() { # token count file label
    local i id
    : >"$3"
    for ((i = 0; i < $2; i++)); do
        id=$(post /v1/accounts "$1" '{"currency":"EUR","nickname":"bench"}' | field id) ||
            die "opening an account failed"
        post /v1/admin/deposits "$operator" \
            "{\"account_id\":\"$id\",\"amount\":$funding,\"currency\":\"EUR\",\"reference\":\"bench funding\"}" \
            "fund-$4-$id" >/dev/null || die "funding account $id failed"
        echo "$id" >>"$3"
    done
}
setup() { # label
    local label=$1 customer
    post /v1/auth/register "" "{\"email\":\"$customer_email\",\"password\":\"$user_password\",\"full_name\":\"Bench Customer\"}" \
        >/dev/null || die "registering the customer failed"
    post /v1/auth/register "" "{\"email\":\"$storm_email\",\"password\":\"$user_password\",\"full_name\":\"Bench Storm\"}" \
        >/dev/null || die "registering the login-storm user failed"
    customer=$(login "$customer_email" "$user_password")
    operator=$(login "$operator_email" "$operator_password")
    open_accounts "$customer" "$n_accounts" "$work/$label-uniform.txt" "$label"
    open_accounts "$customer" 2 "$work/$label-hot.txt" "$label"
}

# GET /v1/admin/ledger/verify must answer "ok":true; the answer goes to results/verify-<name>.json.
verify() { # name
    local answer
    operator=$(login "$operator_email" "$operator_password")
    answer=$(curl -sS --fail-with-body "$G/v1/admin/ledger/verify" -H "authorization: Bearer $operator") ||
        die "ledger verification after $1 failed: $answer"
    python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]).get("ok") is True else 1)' "$answer" ||
        die "ledger verification after $1 found mismatches: $(head -c 2000 <<<"$answer")"
    echo "$answer" >"$work/results/verify-$1.json"
}

# The ledger's commit-group counters (sum of sizes, groups, seconds), from its metrics.
ledger_groups() {
    curl -sf "http://127.0.0.1:$ledger_port/metrics" 2>/dev/null | awk '
        /^ledger_commit_group_size_sum[ {]/ { size += $NF }
        /^ledger_commit_group_size_count[ {]/ { groups += $NF }
        /^ledger_commit_group_seconds_sum[ {]/ { seconds += $NF }
        END { printf "%s %s %s\n", size + 0, groups + 0, seconds + 0 }' || echo "0 0 0"
}

# CPU time (user + system, in clock ticks) each component has used so far, as
# "name=ticks" words: the four services (from /proc/<pid>/stat), each process of
# a PostgreSQL server on this machine ("postgres.<pid>"; none when the server is
# elsewhere) and this shell's finished children, which over a scenario is the
# load generator (bash's `times`, whose second line is the children's minutes
# and seconds).
cpu_ticks() {
    local i ticks pid
    for i in "${!service_pids[@]}"; do
        ticks=$(awk '{print $14 + $15}' "/proc/${service_pids[$i]}/stat" 2>/dev/null || echo "")
        if [[ -n $ticks ]]; then printf '%s=%s ' "${service_names[$i]}" "$ticks"; fi
    done
    for pid in $(pgrep -x postgres 2>/dev/null); do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo "")
        if [[ -n $ticks ]]; then printf 'postgres.%s=%s ' "$pid" "$ticks"; fi
    done
    times >"$work/times"
    awk -v hz="$clock_ticks" 'NR == 2 {
        n = split($1 " " $2, parts, " ")
        for (i = 1; i <= n; i++) { split(parts[i], ms, "m"); sub("s", "", ms[2]); total += ms[1] * 60 + ms[2] }
        printf "loadgen=%d\n", total * hz }' "$work/times"
}
clock_ticks=$(getconf CLK_TCK 2>/dev/null || echo 100)

# One scenario: bank-loadgen's JSON line, plus what the report needs to know.
scenario() { # name title anchor loadgen-args...
    local name=$1 title=$2 anchor_name=$3 line before after cpu_before cpu_after
    shift 3
    log "scenario $title"
    before=$(ledger_groups)
    cpu_ticks >"$work/cpu.before"
    line=$("$loadgen" "$@" --duration "$duration" --warmup "$warmup") || die "bank-loadgen failed in $name"
    cpu_ticks >"$work/cpu.after"
    after=$(ledger_groups)
    cpu_before=$(<"$work/cpu.before")
    cpu_after=$(<"$work/cpu.after")
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
r.update(name=sys.argv[2], title=sys.argv[3], anchor=sys.argv[4])
b = [float(x) for x in sys.argv[5].split()]
a = [float(x) for x in sys.argv[6].split()]
groups = a[1] - b[1]
if groups > 0:
    r.update(groups=int(groups), group_mean_size=(a[0] - b[0]) / groups, group_mean_ms=1000 * (a[2] - b[2]) / groups)
# CPU per posting committed, both over the same window (warmup included).
ticks = lambda words: dict((k, int(float(v))) for k, v in (w.split("=") for w in words.split()))
cb, ca, hz = ticks(sys.argv[7]), ticks(sys.argv[8]), float(sys.argv[9])
postings = a[0] - b[0]
# A server process counts from the first snapshot, or from its start if it
# started later; one that ended meanwhile is missed.
used = {}
for k, v in ca.items():
    if k in cb or k.startswith("postgres."):
        name = k.split(".")[0]
        used[name] = used.get(name, 0) + v - cb.get(k, 0)
if postings > 0:
    r["cpu_us_per_posting"] = {k: 1e6 * v / hz / postings for k, v in used.items()}
print(json.dumps(r))' "$line" "$name" "$title" "$anchor_name" "$before" "$after" \
        "$cpu_before" "$cpu_after" "$clock_ticks" >"$work/results/scenario-$name.json"
    verify "$name"
}

# ---------------------------------------------------------------------------
# PostgreSQL scenarios.

export IDENTITY_DATABASE_URL=$(db_url "${prefix}_identity")
export ACCOUNT_DATABASE_URL=$(db_url "${prefix}_account")
export LEDGER_DATABASE_URL=$(db_url "${prefix}_ledger")
log "starting the components on PostgreSQL; rate limiter out of the way (GATEWAY_RATE_LIMIT_PER_MINUTE=$api_limit, GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE=$auth_limit); gateway with $gateway_workers runtime worker(s)"
start_services pg
log "setup: $n_accounts + 2 accounts, funded by operator deposits"
setup pg
uniform=$work/pg-uniform.txt
hot=$work/pg-hot.txt

token=$(login "$customer_email" "$user_password")
scenario 1-rest-uniform "REST uniform ($n_accounts accounts)" pg-uniform \
    rest-transfer --target "$G" --token "$token" --accounts-file "$uniform" --clients "$clients"

token=$(login "$customer_email" "$user_password")
scenario 2-rest-hot "REST hot (2 accounts)" pg-hot \
    rest-transfer --target "$G" --token "$token" --accounts-file "$hot" --hot --clients "$clients"

# gRPC direct at the REST scenarios' concurrency (what the gateway costs), then
# at the concurrency that serves the ledger best.
token=$(login "$customer_email" "$user_password")
scenario 3-grpc-uniform "ledger gRPC direct, uniform ($grpc_connections HTTP/2 connections)" pg-uniform \
    grpc-transfer --target "http://127.0.0.1:$ledger_port" --token "$token" --accounts-file "$uniform" \
    --clients "$clients" --connections "$grpc_connections"
token=$(login "$customer_email" "$user_password")
scenario 3b-grpc-uniform-best "ledger gRPC direct, uniform, its best concurrency ($grpc_connections HTTP/2 connections)" pg-uniform \
    grpc-transfer --target "http://127.0.0.1:$ledger_port" --token "$token" --accounts-file "$uniform" \
    --clients "$grpc_clients" --connections "$grpc_connections"

operator=$(login "$operator_email" "$operator_password")
scenario 4-deposits "REST deposits (settlement account)" pg-hot \
    rest-deposit --target "$G" --token "$operator" --accounts-file "$uniform" --clients "$clients"

token=$(login "$customer_email" "$user_password")
scenario 4h-hold-post "REST hold then post (two calls per transfer, uniform)" pg-uniform \
    rest-hold-post --target "$G" --token "$token" --accounts-file "$uniform" --clients "$clients"

token=$(login "$customer_email" "$user_password")
"$loadgen" login-storm --target "$G" --email "$storm_email" --password "$user_password" \
    --clients "$storm_clients" --duration "$duration" --warmup "$warmup" >"$work/results/storm.json" &
storm_pid=$!
background_pids+=("$storm_pid")
scenario 5-login-storm "REST uniform during a login storm ($storm_clients login clients)" pg-uniform \
    rest-transfer --target "$G" --token "$token" --accounts-file "$uniform" --clients "$clients"
wait "$storm_pid" || die "the login storm failed"
background_pids=()

token=$(login "$customer_email" "$user_password")
scenario 6-one-client "REST uniform, one client" pg-one-client \
    rest-transfer --target "$G" --token "$token" --accounts-file "$uniform" --clients 1

record_rss pg
stop_services

# ---------------------------------------------------------------------------
# SQLite: the same components on files in the work directory.

mkdir -p "$work/sqlite"
export IDENTITY_DATABASE_URL="sqlite://$work/sqlite/identity.db?mode=rwc"
export ACCOUNT_DATABASE_URL="sqlite://$work/sqlite/account.db?mode=rwc"
export LEDGER_DATABASE_URL="sqlite://$work/sqlite/ledger.db?mode=rwc"
log "starting the components on SQLite"
start_services sqlite
setup sqlite
token=$(login "$customer_email" "$user_password")
scenario 7-sqlite-uniform "SQLite, REST uniform ($n_accounts accounts)" sqlite \
    rest-transfer --target "$G" --token "$token" --accounts-file "$work/sqlite-uniform.txt" --clients "$sqlite_clients"
record_rss sqlite
stop_services

log "SQLite anchor: one connection, WAL, synchronous=FULL"
python3 "$root/bench/sqlite_anchor.py" --db "$work/sqlite/anchor.db" --accounts $anchor_accounts \
    --duration "$duration" --warmup "$warmup" >"$work/results/anchor-sqlite.json" || die "the SQLite anchor failed"

# ---------------------------------------------------------------------------
# Report.

memory=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
BENCH_REPORT_WARMUP=$warmup BENCH_REPORT_DURATION=$duration BENCH_REPORT_ANCHOR_CLIENTS=$anchor_clients \
    BENCH_REPORT_GATEWAY_WORKERS=$gateway_workers \
    BENCH_REPORT_API_LIMIT=$api_limit BENCH_REPORT_AUTH_LIMIT=$auth_limit \
    BENCH_REPORT_MACHINE="$(nproc) cores, $memory, $(uname -sr); PostgreSQL $pg_version" \
    BENCH_REPORT_DURABILITY="synchronous_commit=$synchronous_commit, fsync=$fsync" \
    BENCH_REPORT_PG_SETTINGS="$pg_settings" \
    python3 - "$work/results" <<'EOF'

import glob, json, os, sys
results = sys.argv[1]
env = os.environ
def load(path):
    with open(path) as f:
        return json.loads(f.read())
anchors = {os.path.basename(p)[len("anchor-"):-len(".json")]: load(p)
           for p in glob.glob(os.path.join(results, "anchor-*.json"))}
rows = sorted((load(p) for p in glob.glob(os.path.join(results, "scenario-*.json"))),
              key=lambda r: r["name"])
def ms(value):
    return "n/a" if value is None else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"
def num(value):
    return "n/a" if value is None else f"{value:,.0f}"
def errors(r):
    if not r["errors"]:
        return "0"
    codes = ", ".join(f"{code} {count}" for code, count in sorted(r["error_codes"].items()))
    return f'{r["errors"]:,} ({codes})'
anchor_label = {
    "pg-uniform": f'pgbench uniform, -c {env["BENCH_REPORT_ANCHOR_CLIENTS"]}',
    "pg-hot": f'pgbench hot, -c {env["BENCH_REPORT_ANCHOR_CLIENTS"]}',
    "pg-one-client": "pgbench uniform, -c 1",
    "sqlite": "sqlite3, 1 connection",
}
print()
print("## make bench")
print()
print(f'Each scenario: {env["BENCH_REPORT_WARMUP"]} s warmup, then {env["BENCH_REPORT_DURATION"]} s measured; closed loop; load generator on the same machine.')
print(f'Rate limiter out of the way: GATEWAY_RATE_LIMIT_PER_MINUTE={env["BENCH_REPORT_API_LIMIT"]}, GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE={env["BENCH_REPORT_AUTH_LIMIT"]}.')
print(f'The gateway runs {env["BENCH_REPORT_GATEWAY_WORKERS"]} runtime worker thread(s) (TOKIO_WORKER_THREADS); the other services one per core.'
      " Each scenario runs at the concurrency that served it best here (the clients column).")
print("Latencies of successful requests; ratio = transfers/s of the scenario over the anchor's, measured in this run on the same server.")
print()
print("| scenario | clients | transfers/s | p50 | p99 | p99.9 | errors | anchor/s | ratio |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    a = anchors.get(r["anchor"], {})
    ratio = (f'{r["rate"] / a["rate"]:.2f}x' if a.get("rate") and r.get("rate") is not None else "n/a")
    anchor_text = f'{num(a.get("rate"))} ({anchor_label.get(r["anchor"], r["anchor"])})'
    print(f'| {r["title"]} | {r["clients"]} | {num(r["rate"])} | {ms(r["p50_ms"])} | {ms(r["p99_ms"])} '
          f'| {ms(r["p999_ms"])} | {errors(r)} | {anchor_text} | {ratio} |')
# The issue's targets, checked against this run.
by_name = {r["name"]: r for r in rows}
def ratio_of(name):
    r, a = by_name.get(name), anchors.get(by_name.get(name, {}).get("anchor"), {})
    if not r or not a.get("rate") or r.get("rate") is None:
        return None
    return r["rate"] / a["rate"]
checks = []
for name, label, floor in (("1-rest-uniform", "REST uniform", 2.0), ("2-rest-hot", "REST hot", 1.5),
                           ("4-deposits", "REST deposits (settlement account)", 1.5),
                           ("7-sqlite-uniform", "SQLite, REST uniform", 2.0)):
    value = ratio_of(name)
    if value is not None:
        checks.append((f"{label} >= {floor:g}x its anchor", f"{value:.2f}x", value >= floor))
grpc = [(ratio_of(n), by_name[n]["clients"]) for n in ("3-grpc-uniform", "3b-grpc-uniform-best") if ratio_of(n) is not None]
if grpc:
    value, at = max(grpc)
    checks.append(("ledger gRPC direct >= 3x the uniform anchor", f"{value:.2f}x ({at} clients)", value >= 3.0))
rest, same = by_name.get("1-rest-uniform"), by_name.get("3-grpc-uniform")
if rest and same and same.get("rate"):
    share = rest["rate"] / same["rate"]
    checks.append(("REST uniform >= two thirds of gRPC direct at the same concurrency",
                   f"{100 * share:.0f} %", share >= 2 / 3))
one, a1 = by_name.get("6-one-client"), anchors.get("pg-one-client", {})
if one and one.get("p50_ms") and a1.get("p50_ms"):
    times = one["p50_ms"] / a1["p50_ms"]
    checks.append(("one client: p50 <= 2x the anchor's", f"{times:.1f}x", times <= 2.0))
peaks = []
for label in ("pg", "sqlite"):
    path = os.path.join(results, f"rss-{label}.json")
    if os.path.exists(path):
        peaks += [kib for kib in load(path).values() if kib is not None]
if peaks:
    checks.append(("each service <= 64 MiB peak RSS", f"{max(peaks) / 1024:.0f} MiB at most", max(peaks) <= 64 * 1024))
if checks:
    print()
    print("Targets (the ledger issue's, checked against this run):")
    print()
    print("| target | this run | met |")
    print("|---|---|---|")
    for label, value, met in checks:
        print(f"| {label} | {value} | {'yes' if met else 'no'} |")
print()
print("Anchors (the same transfer done the plain way: idempotency key, transfer row, two entries,")
print("two guarded balance updates, one transaction per transfer; pgbench latencies from --log):")
print()
print("| anchor | transfers/s | p50 | p99 | p99.9 | errors |")
print("|---|---|---|---|---|---|")
for name in ("pg-uniform", "pg-hot", "pg-one-client", "sqlite"):
    a = anchors.get(name)
    if a:
        print(f'| {anchor_label[name]} ({"10,000" if name != "pg-hot" else "2"} accounts) | {num(a["rate"])} '
              f'| {ms(a["p50_ms"])} | {ms(a["p99_ms"])} | {ms(a["p999_ms"])} | {a["errors"]} |')
one = next((r for r in rows if r["anchor"] == "pg-one-client"), None)
if one and anchors.get("pg-one-client"):
    a = anchors["pg-one-client"]
    print()
    print(f'One client: REST p50 {ms(one["p50_ms"])} against the anchor\'s one-client p50 {ms(a["p50_ms"])} '
          f'(pgbench -c 1, per-transaction latencies from pgbench --log): {one["p50_ms"] / a["p50_ms"]:.1f}x.')
storm_path = os.path.join(results, "storm.json")
if os.path.exists(storm_path):
    s = load(storm_path)
    print(f'Login storm alongside scenario 5: {num(s["rate"])} logins/s, p50 {ms(s["p50_ms"])}, p99 {ms(s["p99_ms"])}, errors {errors(s)}.')
costed = [r for r in rows if r.get("cpu_us_per_posting")]
if costed:
    print()
    print("CPU per posting (µs of user and system time from /proc, over each scenario including its warmup,")
    print("divided by the postings the ledger committed; PostgreSQL is every server process on this machine")
    print("that was running at the scenario's end, the load generator the scenario's bank-loadgen):")
    print()
    columns = [("gateway", "gateway"), ("ledger", "ledger"), ("postgres", "PostgreSQL"),
               ("identity", "identity"), ("account", "account"), ("loadgen", "load generator")]
    print("| scenario | " + " | ".join(label for _, label in columns) + " | total |")
    print("|---|" + "---|" * (len(columns) + 1))
    for r in costed:
        cpu = r["cpu_us_per_posting"]
        cells = ["n/a" if key not in cpu else f"{cpu[key]:.0f}" for key, _ in columns]
        print(f'| {r["title"]} | ' + " | ".join(cells) + f' | {sum(cpu.values()):.0f} |')
grouped = [r for r in rows if r.get("groups")]
if grouped:
    print()
    print("Ledger commit groups (from the ledger's metrics, over each scenario including its warmup):")
    print()
    for r in grouped:
        print(f'- {r["title"]}: {r["groups"]:,} groups, {r["group_mean_size"]:.1f} postings and {r["group_mean_ms"]:.1f} ms per group on average')
print()
print("Peak RSS (VmHWM) per service:")
print()
sets = [(label, os.path.join(results, f"rss-{label}.json")) for label in ("pg", "sqlite")]
sets = [(label, load(path)) for label, path in sets if os.path.exists(path)]
print("| service | " + " | ".join({"pg": "PostgreSQL scenarios", "sqlite": "SQLite scenario"}[l] for l, _ in sets) + " |")
print("|---|" + "---|" * len(sets))
for service in ("identity", "account", "ledger", "gateway"):
    cells = []
    for _, rss in sets:
        kib = rss.get(service)
        cells.append("n/a" if kib is None else f"{kib / 1024:.0f} MiB")
    print(f"| {service} | " + " | ".join(cells) + " |")
print()
for r in rows:
    v = load(os.path.join(results, f'verify-{r["name"]}.json'))
    print(f'Ledger verified after {r["title"]}: ok, {v.get("accounts_checked")} accounts, {v.get("entries_checked")} entries.')
print()
print(f'Machine: {env["BENCH_REPORT_MACHINE"]}.')
print(f'PostgreSQL settings away from their defaults that bear on the results: {env["BENCH_REPORT_PG_SETTINGS"]}.')
print(f'Durability: PostgreSQL {env["BENCH_REPORT_DURABILITY"]} (read from the server);'
      " SQLite WAL with synchronous=FULL (the services' driver default; set explicitly by the anchor).")
EOF
