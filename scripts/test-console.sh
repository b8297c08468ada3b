#!/usr/bin/env bash
# Runs the console's end-to-end tests in headless Chromium against the real platform: a fresh
# PostgreSQL database, `mpl-server` (api + in-process scheduler) with the real `trainer`, and
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

cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  "$PSQL" "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  if [ $status -ne 0 ] && [ -f "$WORK/server.log" ]; then
    step "last lines of the server log"
    tail -n 60 "$WORK/server.log" >&2
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
  step "building mpl-server and the trainer (debug)"
  cargo build -p mpl-trainer -p mpl-api >&2
fi

PORT="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
TOKEN="console-e2e-$(node -e 'console.log(require("crypto").randomBytes(16).toString("hex"))')"

step "starting mpl-server on 127.0.0.1:$PORT"
MPL_DATABASE_URL="$DATABASE_URL" \
MPL_DATA_DIR="$WORK/data" \
MPL_STORAGE_URL="file://$WORK/objects" \
MPL_LISTEN="127.0.0.1:$PORT" \
MPL_ADMIN_TOKEN="$TOKEN" \
MPL_CONSOLE_DIR="$ROOT/console/dist" \
MPL_TRAINER_BIN="${MPL_TRAINER_BIN:-$ROOT/target/debug/trainer}" \
MPL_SLOTS="${MPL_SLOTS:-1}" \
MPL_DEVICES=cpu \
  "$ROOT/target/debug/mpl-server" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "mpl-server exited during start"
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || die "mpl-server did not become ready"

step "running the browser tests"
cd console
npm run test:unit
export MPL_CONSOLE_URL="http://127.0.0.1:$PORT" MPL_ADMIN_TOKEN="$TOKEN"
npm run test:e2e
