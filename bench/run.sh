#!/usr/bin/env bash
# Regenerates the benchmark table of BENCHMARKS.md on this machine.
#
# Builds the release binaries, then for each backend (SQLite in a temporary
# directory; PostgreSQL in a fresh database on 127.0.0.1:5432, user postgres)
# starts the real clerk-sync-service and clerk-sync-gateway as separate
# processes on free loopback ports, with a write token (gateway -> service)
# and a read token (bench -> directory), and runs clerk-sync-bench against
# them: baselines, ingest (with end-state verification) at each connection
# count, every query method, and a storm with memory at start, middle, end.
# Then, per backend, the seed's stack (bench/seed: the original Express +
# svix endpoint, its Mongoose calls ported to the same database) on a fresh
# database of its own, driven by the same ingest, side by side.
# Prints the markdown table and writes it to $BENCH_OUT.
#
# Settings (environment):
#   BENCH_BACKENDS     "sqlite postgres"
#   BENCH_USERS        4000   users per ingest run (each 1 create + BENCH_UPDATES updates)
#   BENCH_UPDATES      4
#   BENCH_CONNECTIONS  "32 256"
#   BENCH_CALLS        20000  calls per query method (CheckPermission and
#                      GetMembership over memberships seed-organizations made)
#   BENCH_STORM_SECS   60     0 skips the storm
#   BENCH_WATCHERS     "0 100 1000"  change feed fan-out: for each count, the
#                      ingest (BENCH_USERS x (1 + BENCH_UPDATES) webhooks at the
#                      first connection count) with that many WatchUsers streams
#                      held by a `clerk-sync-bench watch` process of its own, a
#                      tenth of them never reading: ingest rate, the log reads it
#                      cost (the service's feed_reads metric) and the
#                      sync-service's memory. Then, the watchers still held, the
#                      delivery latency from send to watcher, at the same load
#                      for every count: an open-loop ingest of
#                      BENCH_FANOUT_USERS x (1 + BENCH_UPDATES) webhooks at
#                      BENCH_FANOUT_RATE events/s, each upsert stamped with its
#                      send time. "" skips. The service's watcher limits are
#                      raised to fit.
#   BENCH_FANOUT_RATE  250
#   BENCH_FANOUT_USERS 500
#   BENCH_SCALE_USERS  1000000  users loaded for the scale figures (0 skips):
#                      ingest, random GetUser / FindUserByEmail over all of
#                      them, a full ListUsers pass, database bytes per user,
#                      and the sync-service's start-up time on that database
#   BENCH_SEED         1      0 skips the seed's stack. It needs node (20 or
#                      later) and npm; bench/seed/node_modules is installed
#                      with `npm ci` when missing (its SQLite driver is
#                      compiled from source: a few minutes). Same warm-up and ingest
#                      (BENCH_USERS x (1 + BENCH_UPDATES) at each connection
#                      count) against one node process; its end state is
#                      checked in its own table (bench/seed/check.js).
#   BENCH_ONLY         ""     "ingest": only clerk-sync's ingest and the
#                      seed's (no baselines, queries, storm, fan-out, scale)
#   BENCH_OUT          target/bench/results.md
#   PG_HOST / PG_PORT / PG_USER   127.0.0.1 / 5432 / postgres
#   CARGO_TARGET_DIR   where cargo puts the release binaries (default target)
#   BENCH_NO_BUILD     1: use the release binaries already built
# Everything listens on 127.0.0.1 only; every step is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BENCH_BACKENDS:-sqlite postgres}
USERS=${BENCH_USERS:-4000}
UPDATES=${BENCH_UPDATES:-4}
CONNECTIONS=${BENCH_CONNECTIONS:-32 256}
CALLS=${BENCH_CALLS:-20000}
STORM_SECS=${BENCH_STORM_SECS:-60}
WATCHER_COUNTS=${BENCH_WATCHERS-0 100 1000}
FANOUT_RATE=${BENCH_FANOUT_RATE:-250}
FANOUT_USERS=${BENCH_FANOUT_USERS:-500}
SCALE_USERS=${BENCH_SCALE_USERS:-1000000}
SEED=${BENCH_SEED:-1}
ONLY=${BENCH_ONLY:-}
OUT=${BENCH_OUT:-target/bench/results.md}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
BIN=${CARGO_TARGET_DIR:-target}/release
[[ $SEED == 0 || $SEED == 1 ]] || { echo "bench/run.sh: BENCH_SEED: expected 0 or 1, got '$SEED'" >&2; exit 2; }
case $ONLY in
  "") ;;
  ingest) STORM_SECS=0 WATCHER_COUNTS="" SCALE_USERS=0 ;;
  *) echo "bench/run.sh: BENCH_ONLY: expected ingest, got '$ONLY'" >&2; exit 2 ;;
esac
STEP_TIMEOUT=$((STORM_SECS + 300 + SCALE_USERS / 1000))

MAX_WATCHERS=256
for n in $WATCHER_COUNTS; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "bench/run.sh: BENCH_WATCHERS: expected numbers, got '$n'" >&2; exit 2; }
  ((n + 16 > MAX_WATCHERS)) && MAX_WATCHERS=$((n + 16))
done
for n in "$USERS" "$UPDATES" "$CALLS" "$STORM_SECS" "$SCALE_USERS" "$FANOUT_USERS"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "bench/run.sh: expected a number, got '$n'" >&2; exit 2; }
done
[[ $FANOUT_RATE =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench/run.sh: BENCH_FANOUT_RATE: expected events per second, got '$FANOUT_RATE'" >&2; exit 2; }

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
  echo "== building release binaries" >&2
  timeout 3600 cargo build --release --locked -p clerk-sync-service -p clerk-sync-gateway -p clerk-sync-bench >&2
fi

# The seed's stack: its node modules, installed once into bench/seed.
seed_ready() {
  (cd bench/seed && node --input-type=module -e "const { default: sqlite3 } = await import('sqlite3')
    await new Promise((resolve, reject) => new sqlite3.Database(':memory:', (e) => (e ? reject(e) : resolve())))
    await Promise.all(['express', 'svix', 'pg'].map((name) => import(name)))") >/dev/null 2>&1
}
if [[ $SEED == 1 ]]; then
  command -v node >/dev/null && command -v npm >/dev/null ||
    { echo "bench/run.sh: the seed's stack needs node (20 or later) and npm; BENCH_SEED=0 skips it" >&2; exit 2; }
  if ! seed_ready; then
    echo "== installing bench/seed (npm ci; the sqlite3 driver is compiled from source)" >&2
    (
      cd bench/seed
      # No prebuilt binary download; node's headers from the system when it has them.
      export npm_config_build_from_source=true
      [[ ! -f /usr/include/node/node_api.h ]] || export npm_config_nodedir=${npm_config_nodedir:-/usr}
      timeout 1800 npm ci --no-audit --no-fund >&2
    )
    seed_ready || { echo "bench/run.sh: bench/seed's modules do not load after npm ci" >&2; exit 1; }
  fi
fi

WORK=$(mktemp -d)
PIDS=()
PG_DATABASES=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in "${PG_DATABASES[@]}"; do
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

random_token() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'; }
# A loopback port nothing listens on.
# A port nothing listens on, below the ephemeral range: a port a client's
# connection just used (the baselines open hundreds) can refuse a listener.
free_port() {
  local port low
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  while :; do
    port=$((10000 + RANDOM % (low - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
# field NAME LINE: the value of NAME=… in a RESULT line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
result() { grep -m1 "^RESULT $1" "$2" || { echo "bench/run.sh: no '$1' result in $2" >&2; cat "$2" >&2; exit 1; }; }
cpu() { sed -n "s/^RESULT cpu pid=$1 us_per_request=\(.*\)/\1/p" "$2" | head -1; }
rss_mib() { # rss_mib PID WHEN FILE: peak RSS in MiB
  local kib
  kib=$(sed -n "s/^RESULT rss pid=$1 when=$2 peak_kib=\([0-9]*\).*/\1/p" "$3" | head -1)
  [[ -n $kib ]] && awk -v k="$kib" 'BEGIN { printf "%.0f", k / 1024 }' || echo "?"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "?" }'; }
bench() { # [TOKEN=…] bench LOGNAME ARGS…: runs clerk-sync-bench (with the read token unless TOKEN is set), keeps its output
  local name=$1 log=$WORK/$1.log
  shift
  echo "== clerk-sync-bench $*" >&2
  if ! timeout "$STEP_TIMEOUT" env SYNC_SERVICE_TOKEN="${TOKEN:-$READ_TOKEN}" "$BIN/clerk-sync-bench" "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "bench/run.sh: step $name failed" >&2
    exit 1
  fi
  cat "$log" >&2
}

# Starts the sync-service of $backend on $DATABASE_URL and $SYNC_PORT, its
# metrics on $METRICS_PORT, with room for the fan-out phase's watchers (all
# on the read token).
start_sync() {
  DATABASE_URL=$DATABASE_URL SYNC_SERVICE_LISTEN_ADDR="127.0.0.1:$SYNC_PORT" \
    SYNC_SERVICE_METRICS_LISTEN_ADDR="127.0.0.1:$METRICS_PORT" \
    SYNC_SERVICE_MAX_WATCHERS=$MAX_WATCHERS SYNC_SERVICE_MAX_WATCHERS_PER_TOKEN=$MAX_WATCHERS \
    SYNC_SERVICE_WRITE_TOKENS=$WRITE_TOKEN SYNC_SERVICE_READ_TOKENS=$READ_TOKEN RUST_LOG=warn \
    "$BIN/clerk-sync-service" 2>>"$WORK/$backend-sync.log" &
  SYNC_PID=$!
  PIDS+=("$SYNC_PID")
}
# Bytes the $backend database takes on disk.
database_bytes() {
  case $backend in
    sqlite) du -cb "$WORK"/sqlite/clerk-sync.db* | tail -1 | cut -f1 ;;
    postgres) psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -qAtc "SELECT pg_database_size('$db')" postgres ;;
  esac
}

SECRET="whsec_$(head -c 24 /dev/urandom | base64)"
WRITE_TOKEN=$(random_token)
READ_TOKEN=$(random_token)
ROWS=()
FANOUT_ROWS=()
SCALE_NOTES=()
# feed_reads READER: the sync-service's users' log reads by READER so far
# ("n/a" from a sync-service without the metric).
feed_reads() {
  curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
    awk -v series="clerk_sync_service_feed_reads_total{feed=\"users\",reader=\"$1\"}" \
      '$1 == series { v = $2 } END { print (v == "" ? "n/a" : v) }'
}
delta() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else printf "%.0f", b - a }'; }
row() { ROWS+=("| $(IFS='|'; echo "$*" | sed 's/|/ | /g') |"); }
SEED_ROWS=()
SEED_PG_POOL=10 # the seed's pg Pool: pg's default size
# clerk-sync's ingest figures by "backend connections", for the seed's table.
declare -A CS_RATE CS_P50 CS_P99 CS_CPU
xratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f×", a / b; else print "?" }'; }

LOAD_BEFORE=$(uptime)
START=$(date -u '+%Y-%m-%d %H:%M UTC')

# Baselines: the machine's ceiling for an HTTP/1.1 request and a tonic call.
declare -A HYPER TONIC
for c in $CONNECTIONS; do
  [[ -z $ONLY ]] || break
  bench "baselines-$c" baselines --connections "$c" --requests "$((USERS * (UPDATES + 1)))"
  line=$(result "baseline kind=hyper" "$WORK/baselines-$c.log")
  HYPER[$c]=$(field rate "$line")
  row "-" "baseline: hyper \`200 {}\`" "$c" "${HYPER[$c]}" "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" "100%" "" ""
  line=$(result "baseline kind=tonic" "$WORK/baselines-$c.log")
  TONIC[$c]=$(field rate "$line")
  row "-" "baseline: tonic health Check" "$c" "${TONIC[$c]}" "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" "100%" "" ""
done
FIRST_C=${CONNECTIONS%% *}

for backend in $BACKENDS; do
  case $backend in
    sqlite)
      mkdir -p "$WORK/sqlite"
      DATABASE_URL="sqlite://$WORK/sqlite/clerk-sync.db?mode=rwc" ;;
    postgres)
      db="clerk_sync_bench_$$_$RANDOM"
      psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -qc "CREATE DATABASE $db" postgres
      PG_DATABASES+=("$db")
      DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$db" ;;
    *) echo "bench/run.sh: BENCH_BACKENDS: unknown backend '$backend'" >&2; exit 2 ;;
  esac
  SYNC_PORT=$(free_port)
  METRICS_PORT=$(free_port)
  GATEWAY_PORT=$(free_port)
  echo "== $backend: sync-service on 127.0.0.1:$SYNC_PORT, gateway on 127.0.0.1:$GATEWAY_PORT" >&2
  start_sync
  # Ingest plans are signed up front: a long scale load outlives the default
  # 5-minute timestamp tolerance, so the bench's gateway allows an hour.
  GATEWAY_LISTEN_ADDR="127.0.0.1:$GATEWAY_PORT" CLERK_WEBHOOK_SECRET=$SECRET WEBHOOK_TIMESTAMP_TOLERANCE_SECS=3600 \
    SYNC_SERVICE_URL="http://127.0.0.1:$SYNC_PORT" SYNC_SERVICE_TOKEN=$WRITE_TOKEN RUST_LOG=warn \
    "$BIN/clerk-sync-gateway" 2>"$WORK/$backend-gateway.log" &
  GATEWAY_PID=$!
  PIDS+=("$GATEWAY_PID")
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null || {
    cat "$WORK/$backend-sync.log" "$WORK/$backend-gateway.log" >&2
    echo "bench/run.sh: the $backend stack never became ready" >&2
    exit 1
  }
  GW="http://127.0.0.1:$GATEWAY_PORT/clerk"
  SYNC="http://127.0.0.1:$SYNC_PORT"
  PIDS_ARG="$GATEWAY_PID,$SYNC_PID"
  export CLERK_WEBHOOK_SECRET=$SECRET

  # Warm-up on users of their own: connections, caches, prepared statements.
  bench "$backend-warmup" ingest --gateway-url "$GW" --users 400 --updates "$UPDATES" --connections "$FIRST_C"

  for c in $CONNECTIONS; do
    bench "$backend-ingest-$c" ingest --gateway-url "$GW" --users "$USERS" --updates "$UPDATES" \
      --connections "$c" --sync-service-url "$SYNC" --server-pids "$PIDS_ARG"
    log=$WORK/$backend-ingest-$c.log
    line=$(result "ingest " "$log")
    verify=$(result "verify " "$log")
    row "$backend" "ingest ($(field count "$line") events, verified: $(field mismatches "$verify") mismatches)" "$c" \
      "$(field rate "$line")" "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
      "$(ratio "$(field rate "$line")" "${HYPER[$c]:-}") of hyper" \
      "gateway $(cpu "$GATEWAY_PID" "$log"), sync $(cpu "$SYNC_PID" "$log")" \
      "gateway $(rss_mib "$GATEWAY_PID" end "$log"), sync $(rss_mib "$SYNC_PID" end "$log")"
    CS_RATE[$backend $c]=$(field rate "$line")
    CS_P50[$backend $c]=$(field p50_ms "$line")
    CS_P99[$backend $c]=$(field p99_ms "$line")
    CS_CPU[$backend $c]=$(awk -v g="$(cpu "$GATEWAY_PID" "$log")" -v s="$(cpu "$SYNC_PID" "$log")" 'BEGIN { printf "%.1f", g + s }')
  done

  # Organizations for CheckPermission / GetMembership: the first 4,000
  # users become members of 20 organizations, half of them teachers.
  [[ -n $ONLY ]] || TOKEN=$WRITE_TOKEN bench "$backend-seed-organizations" seed-organizations \
    --sync-service-url "$SYNC" --organizations 20 --sample 4000
  for method in health get-user batch-get-users find-user-by-email list-users check-permission get-membership; do
    [[ -z $ONLY ]] || break
    bench "$backend-query-$method" query --sync-service-url "$SYNC" --method "$method" \
      --calls "$CALLS" --connections "$FIRST_C" --sample 4000 --warm-up --server-pids "$SYNC_PID"
    log=$WORK/$backend-query-$method.log
    line=$(result "query " "$log")
    rate=$(field rate "$line")
    [[ $method == health ]] && HEALTH=$rate
    case $method in
      batch-get-users) what="BatchGetUsers (100 ids)" ;;
      list-users) what="ListUsers (first page of 100)" ;;
      *) what=$method ;;
    esac
    row "$backend" "query: $what" "$FIRST_C" "$rate" "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
      "$(ratio "$rate" "$HEALTH") of health, $(ratio "$rate" "${TONIC[$FIRST_C]}") of tonic" \
      "sync $(cpu "$SYNC_PID" "$log")" "sync $(rss_mib "$SYNC_PID" end "$log")"
  done

  if [[ $STORM_SECS -gt 0 ]]; then
    bench "$backend-storm" ingest --gateway-url "$GW" --updates "$UPDATES" --duration "$STORM_SECS" \
      --connections "$FIRST_C" --server-pids "$PIDS_ARG"
    log=$WORK/$backend-storm.log
    line=$(result "ingest " "$log")
    rss() { echo "$(rss_mib "$1" start "$log") / $(rss_mib "$1" middle "$log") / $(rss_mib "$1" end "$log")"; }
    row "$backend" "storm ${STORM_SECS} s ($(field count "$line") events; peak RSS start / middle / end)" "$FIRST_C" \
      "$(field rate "$line")" "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
      "$(ratio "$(field rate "$line")" "${HYPER[$FIRST_C]}") of hyper" \
      "gateway $(cpu "$GATEWAY_PID" "$log"), sync $(cpu "$SYNC_PID" "$log")" \
      "gateway $(rss "$GATEWAY_PID"), sync $(rss "$SYNC_PID")"
  fi

  # Change feed fan-out: the same ingest with W watchers held by a process of
  # their own (a tenth never read) from before the first webhook; then, the
  # watchers still held and caught up, a stamped open-loop ingest at a rate
  # every W gets alike, for the delivery latency (the watchers time stamped
  # messages only). After the storm: peak RSS is a high-water mark, and 1,000
  # watchers raise it above what the storm's flat-memory check must see.
  for w in $WATCHER_COUNTS; do
    name=$backend-fanout-$w
    wlog=$WORK/$name-watch.log
    WATCH_PID=
    if [[ $w -gt 0 ]]; then
      echo "== clerk-sync-bench watch --count $w --idle $((w / 10))" >&2
      timeout "$STEP_TIMEOUT" env SYNC_SERVICE_TOKEN="$READ_TOKEN" "$BIN/clerk-sync-bench" watch \
        --sync-service-url "$SYNC" --count "$w" --idle "$((w / 10))" --quiet 10 --hold "$STEP_TIMEOUT" \
        --server-pids "$SYNC_PID" >"$wlog" 2>&1 &
      WATCH_PID=$!
      for _ in $(seq 1200); do
        grep -q '^RESULT watch-ready' "$wlog" && break
        kill -0 "$WATCH_PID" 2>/dev/null || break
        sleep 0.1
      done
      grep -q '^RESULT watch-ready' "$wlog" || { cat "$wlog" >&2; echo "bench/run.sh: the watchers never opened" >&2; exit 1; }
    fi
    shared_before=$(feed_reads shared)
    watcher_before=$(feed_reads watcher)
    bench "$name" ingest --gateway-url "$GW" --users "$USERS" --updates "$UPDATES" \
      --connections "$FIRST_C" --sync-service-url "$SYNC" --server-pids "$PIDS_ARG"
    log=$WORK/$name.log
    line=$(result "ingest " "$log")
    verify=$(result "verify " "$log")
    reads="$(delta "$shared_before" "$(feed_reads shared)") / $(delta "$watcher_before" "$(feed_reads watcher)")"
    delivery="-" ended="-" max_rss="$(rss_mib "$SYNC_PID" end "$log")"
    if [[ -n $WATCH_PID ]]; then
      sleep 2
      bench "$name-delivery" ingest --gateway-url "$GW" --users "$FANOUT_USERS" --updates "$UPDATES" --stamp-send-time \
        --rate "$FANOUT_RATE" --connections "$FIRST_C" --sync-service-url "$SYNC"
      wait "$WATCH_PID" || { cat "$wlog" >&2; echo "bench/run.sh: step $name-watch failed" >&2; exit 1; }
      cat "$wlog" >&2
      wline=$(result "watch " "$wlog")
      delivery="$(field p50_ms "$wline") / $(field p99_ms "$wline") ($(field stamped "$wline") messages)"
      ended=$(field ended "$wline")
      kib=$(sed -n "s/^RESULT watch-rss pid=$SYNC_PID max_rss_kib=\([0-9]*\).*/\1/p" "$wlog" | head -1)
      [[ -n $kib ]] && max_rss=$(awk -v k="$kib" 'BEGIN { printf "%.0f", k / 1024 }')
    fi
    FANOUT_ROWS+=("| $backend | $w ($((w / 10)) never read) | $(field rate "$line") ($(field mismatches "$verify") mismatches) | $(field p50_ms "$line") / $(field p99_ms "$line") | $delivery | $reads | $(cpu "$SYNC_PID" "$log") | $max_rss | $ended |")
  done

  if [[ $SCALE_USERS -gt 0 ]]; then
    run="scale$RANDOM"
    bench "$backend-scale-ingest" ingest --gateway-url "$GW" --users "$SCALE_USERS" --updates 0 \
      --run-id "$run" --connections "$FIRST_C" --sync-service-url "$SYNC" --server-pids "$PIDS_ARG"
    log=$WORK/$backend-scale-ingest.log
    line=$(result "ingest " "$log")
    verify=$(result "verify " "$log")
    row "$backend" "scale: ingest $(field count "$line") new users (verified: $(field mismatches "$verify") mismatches)" "$FIRST_C" \
      "$(field rate "$line")" "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
      "$(ratio "$(field rate "$line")" "${HYPER[$FIRST_C]}") of hyper" \
      "gateway $(cpu "$GATEWAY_PID" "$log"), sync $(cpu "$SYNC_PID" "$log")" \
      "gateway $(rss_mib "$GATEWAY_PID" end "$log"), sync $(rss_mib "$SYNC_PID" end "$log")"
    # Throughput with FIRST_C callers, then latency with one caller (no
    # queueing behind other calls on this 2-core machine).
    for method in get-user find-user-by-email; do
      for c in "$FIRST_C" 1; do
        bench "$backend-scale-$method-$c" query --sync-service-url "$SYNC" --method "$method" \
          --calls "$CALLS" --connections "$c" --run-id "$run" --users "$SCALE_USERS" --server-pids "$SYNC_PID"
        log=$WORK/$backend-scale-$method-$c.log
        line=$(result "query " "$log")
        row "$backend" "scale: $method, random over all $SCALE_USERS" "$c" "$(field rate "$line")" \
          "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
          "$(ratio "$(field rate "$line")" "$HEALTH") of health" "sync $(cpu "$SYNC_PID" "$log")" "sync $(rss_mib "$SYNC_PID" end "$log")"
      done
    done
    bench "$backend-scan" scan --sync-service-url "$SYNC" --page-size 1000
    line=$(result "scan " "$WORK/$backend-scan.log")
    live=$(field users "$line")
    row "$backend" "scale: full ListUsers pass, $live users in pages of 1000 ($(field seconds "$line") s)" 1 \
      "$(field rate "$line") users" "$(field page_p50_ms "$line")" "" "$(field page_p99_ms "$line")" "" "per page" "" ""
    bytes=$(database_bytes)
    SCALE_NOTES+=("$backend: $live live users; the database takes $bytes bytes on disk, $(awk -v b="$bytes" -v u="$live" 'BEGIN { printf "%.0f", b / u }') bytes per user (tables, indexes, ledger and change log; for SQLite with its WAL)")
    # Start-up on the loaded database: stop the sync-service, start it again.
    kill -TERM "$SYNC_PID"
    wait "$SYNC_PID" || true
    start_sync
    bench "$backend-ready" ready --sync-service-url "$SYNC"
    SCALE_NOTES+=("$backend: sync-service start-up on it (process start to health SERVING): $(field seconds "$(result "ready " "$WORK/$backend-ready.log")") s")
  fi

  kill -TERM "$GATEWAY_PID" "$SYNC_PID"
  wait "$GATEWAY_PID" "$SYNC_PID" || true
  PIDS=()

  # The seed's stack, alone on the machine, on a fresh database of its own:
  # the same warm-up and ingest; the end state read from its users table.
  if [[ $SEED == 1 ]]; then
    case $backend in
      sqlite)
        mkdir -p "$WORK/seed-sqlite"
        SEED_DATABASE_URL="sqlite://$WORK/seed-sqlite/seed.db" ;;
      postgres)
        seed_db="clerk_sync_seed_$$_$RANDOM"
        psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -qc "CREATE DATABASE $seed_db" postgres
        PG_DATABASES+=("$seed_db")
        SEED_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$seed_db" ;;
    esac
    PORT=0 HOST=127.0.0.1 CLERK_WEBHOOK_SECRET=$SECRET DATABASE_URL=$SEED_DATABASE_URL \
      DATABASE_MAX_CONNECTIONS=$SEED_PG_POOL node bench/seed/server.js >"$WORK/$backend-seed.out" 2>"$WORK/$backend-seed.log" &
    SEED_PID=$!
    PIDS+=("$SEED_PID")
    seed_port=
    for _ in $(seq 300); do
      seed_port=$(sed -n 's|^seed: listening on http://127\.0\.0\.1:\([0-9]*\)/clerk$|\1|p' "$WORK/$backend-seed.out")
      [[ -n $seed_port ]] && break
      kill -0 "$SEED_PID" 2>/dev/null || break
      sleep 0.1
    done
    [[ -n $seed_port ]] || {
      cat "$WORK/$backend-seed.out" "$WORK/$backend-seed.log" >&2
      echo "bench/run.sh: the seed's $backend stack never listened" >&2
      exit 1
    }
    echo "== $backend: the seed's stack (node $(node --version), pid $SEED_PID) on 127.0.0.1:$seed_port" >&2
    SEED_URL="http://127.0.0.1:$seed_port/clerk"
    bench "$backend-seed-warmup" ingest --gateway-url "$SEED_URL" --users 400 --updates "$UPDATES" --connections "$FIRST_C"
    for c in $CONNECTIONS; do
      run="seed${c}r$RANDOM"
      bench "$backend-seed-ingest-$c" ingest --gateway-url "$SEED_URL" --users "$USERS" --updates "$UPDATES" \
        --connections "$c" --run-id "$run" --server-pids "$SEED_PID"
      log=$WORK/$backend-seed-ingest-$c.log
      line=$(result "ingest " "$log")
      # In order per user, but the seed applies whatever arrives last: a
      # mismatch is reported, not fatal.
      DATABASE_URL=$SEED_DATABASE_URL timeout 300 node bench/seed/check.js "$run" "$USERS" "$UPDATES" >>"$log" 2>&1 ||
        { cat "$log" >&2; echo "bench/run.sh: the seed's $backend table could not be checked" >&2; exit 1; }
      verify=$(result "seed-verify " "$log")
      grep -A10 '^RESULT seed-verify' "$log" >&2
      [[ $(field mismatches "$verify") == 0 ]] ||
        echo "bench/run.sh: warning: the seed's $backend end state has $(field mismatches "$verify") mismatches" >&2
      key="$backend $c"
      SEED_ROWS+=("| $backend | $c | $(field rate "$line") ($(field mismatches "$verify") mismatches) | $(field p50_ms "$line") / $(field p99_ms "$line") | $(cpu "$SEED_PID" "$log") | $(rss_mib "$SEED_PID" end "$log") | ${CS_RATE[$key]} | ${CS_P50[$key]} / ${CS_P99[$key]} | ${CS_CPU[$key]} | $(xratio "${CS_RATE[$key]}" "$(field rate "$line")") | $(xratio "${CS_P99[$key]}" "$(field p99_ms "$line")") |")
    done
    kill -TERM "$SEED_PID"
    wait "$SEED_PID" || true
    PIDS=()
  fi
done

mkdir -p "$(dirname "$OUT")"
{
  echo "Run of \`bench/run.sh\` at $START on $(nproc) cores ($(uname -m)), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo "Settings: BENCH_USERS=$USERS BENCH_UPDATES=$UPDATES BENCH_CONNECTIONS=\"$CONNECTIONS\" BENCH_CALLS=$CALLS BENCH_STORM_SECS=$STORM_SECS BENCH_SCALE_USERS=$SCALE_USERS BENCH_WATCHERS=\"$WATCHER_COUNTS\" BENCH_FANOUT_RATE=$FANOUT_RATE BENCH_FANOUT_USERS=$FANOUT_USERS BENCH_SEED=$SEED${ONLY:+ BENCH_ONLY=$ONLY}."
  echo "Machine load before: \`$LOAD_BEFORE\`; after: \`$(uptime)\`."
  echo
  echo "| backend | run | connections | per second | p50 ms | p90 ms | p99 ms | max ms | ratio | CPU µs per request | peak RSS MiB |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  if [[ ${#SEED_ROWS[@]} -gt 0 ]]; then
    echo
    echo "### Side by side with the seed's stack"
    echo
    echo "The seed's stack (\`bench/seed\`): the original Express + svix webhook endpoint in one node process ($(node --version)), each Mongoose call ported to one SQL statement on the same database (SQLite through the async \`sqlite3\` driver, in WAL mode with synchronous FULL; PostgreSQL through a \`pg\` Pool of $SEED_PG_POOL), on a fresh database of its own, with the same warm-up and the same \`clerk-sync-bench ingest\` at each connection count, run after clerk-sync's stack is stopped. Its end state is read from its own table: every user at its last version's email and name. Ratios are clerk-sync / seed: events/s above 1× and p99 below 1× are clerk-sync's advantage."
    echo
    echo "| backend | connections | seed events/s (verified) | seed p50 / p99 ms | seed CPU µs per event | seed peak RSS MiB | clerk-sync events/s | clerk-sync p50 / p99 ms | clerk-sync CPU µs per event (gateway + sync) | events/s ratio | p99 ratio |"
    echo "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|"
    printf '%s\n' "${SEED_ROWS[@]}"
  fi
  if [[ ${#FANOUT_ROWS[@]} -gt 0 ]]; then
    echo
    echo "Change feed fan-out: ingest at $FIRST_C connections with watchers attached (a \`clerk-sync-bench watch\` process of their own; log reads: pages of the users' log read for watchers during the ingest, by the shared reader / by watchers on their own). Delivery: then, the same watchers held, $((FANOUT_USERS * (1 + UPDATES))) stamped webhooks open loop at $FANOUT_RATE events/s, timed from the load generator's send of a webhook to a reading watcher's receipt of its message, over the messages received."
    echo
    echo "| backend | watchers | ingest events/s (verified) | ingest p50 / p99 ms | delivery at $FANOUT_RATE events/s, p50 / p99 ms | log reads shared / watcher | sync CPU µs per event | sync RSS MiB (max) | streams ended by the server |"
    echo "|---|---|---:|---|---|---|---:|---:|---|"
    printf '%s\n' "${FANOUT_ROWS[@]}"
  fi
  if [[ ${#SCALE_NOTES[@]} -gt 0 ]]; then
    echo
    printf -- '- %s\n' "${SCALE_NOTES[@]}"
  fi
} >"$OUT"
cat "$OUT"
