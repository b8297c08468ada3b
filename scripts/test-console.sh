#!/usr/bin/env bash
# Runs the console's end-to-end tests in headless Chromium against the real platform: a fresh
# PostgreSQL database, `mpl-server` (the api) and `mpl-scheduler` beside it (the deployment of a
# scheduler on its own machine, here on the same one) running the real `trainer`, with
# local-directory storage in a temporary folder. Everything started here is stopped at the end.
#
#   MPL_TEST_DATABASE_URL  a PostgreSQL server where the test may create a database
#                          (default postgres://postgres@127.0.0.1:5432/postgres)
#   MPL_SKIP_BUILD=1       use the binaries and console/dist already built
#   MPL_RUN_TIMEOUT_SECS   how long a smoke run may take (default 900)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
ROOT="$PWD"

[ -x /usr/bin/chromium ] || apt_install chromium
[ -d /usr/share/datasets/fashion-mnist ] || apt_install dataset-fashion-mnist

ADMIN_URL="${MPL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PSQL="$(pg_bin_dir)/psql"
DB="console_test_$(date +%s)_$$"
WORK="$(mktemp -d)"
SERVER_PID=""
SCHEDULER_PID=""

# Stops one process started here: SIGTERM, then SIGKILL after 10 s.
stop() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  stop "$SCHEDULER_PID"
  stop "$SERVER_PID"
  "$PSQL" "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  if [ $status -ne 0 ]; then
    for log in server scheduler; do
      [ -f "$WORK/$log.log" ] || continue
      step "last lines of the $log log"
      tail -n 40 "$WORK/$log.log" >&2
    done
  fi
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT INT TERM

step "creating database $DB"
"$PSQL" "$ADMIN_URL" -qc "CREATE DATABASE \"$DB\""
DATABASE_URL="${ADMIN_URL%/*}/$DB"

source scripts/torch-env.sh
if [ "${MPL_SKIP_BUILD:-0}" != 1 ]; then
  step "building the console (npm ci, npm run build)"
  (cd console && npm ci --no-audit --no-fund && npm run build) >&2
  step "building mpl-server, mpl-scheduler and the trainer (debug, the same build as scripts/test.sh)"
  cargo build --workspace --bins >&2
fi

PORT="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
TOKEN="console-e2e-$(node -e 'console.log(require("crypto").randomBytes(16).toString("hex"))')"

export MPL_DATABASE_URL="$DATABASE_URL"
export MPL_STORAGE_URL="file://$WORK/objects"
export MPL_LISTEN="127.0.0.1:$PORT"
export MPL_ADMIN_TOKEN="$TOKEN"
export MPL_CONSOLE_DIR="$ROOT/console/dist"
export MPL_TRAINER_BIN="${MPL_TRAINER_BIN:-$ROOT/target/debug/trainer}"
export MPL_SLOTS="${MPL_SLOTS:-1}"
export MPL_DEVICES=cpu
# The scheduler runs as its own process, so the in-process one is turned off.
export MPL_SCHEDULER=0

step "starting mpl-server on 127.0.0.1:$PORT"
MPL_DATA_DIR="$WORK/api" "$ROOT/target/debug/mpl-server" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "mpl-server exited during start"
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || die "mpl-server did not become ready"

step "starting mpl-scheduler"
MPL_DATA_DIR="$WORK/scheduler" "$ROOT/target/debug/mpl-scheduler" >"$WORK/scheduler.log" 2>&1 &
SCHEDULER_PID=$!

step "running the browser tests"
cd console
npm run test:unit
MPL_CONSOLE_URL="http://127.0.0.1:$PORT" npm run test:e2e
