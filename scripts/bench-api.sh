#!/usr/bin/env bash
# Platform benchmark: starts mpl-server (no scheduler) against a fresh database on loopback and
# runs crates/api/examples/bench_api.rs against it: run submissions per second with latency
# percentiles under concurrent load, a metrics query over 1 000 000 points downsampled to 1 000,
# and a checkpoint download with the server's memory sampled.
#
# Usage: scripts/bench-api.sh [SUBMISSIONS] [CONCURRENCY] [CHECKPOINT_MIB]
# Environment: MPL_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
#              PROFILE=release (default) or dev, to reuse a debug build.
set -euo pipefail
cd "$(dirname "$0")/.."

submissions=${1:-2000}
concurrency=${2:-32}
checkpoint_mib=${3:-1024}
profile=${PROFILE:-release}
server_url=${MPL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

if [ "$profile" = release ]; then
    cargo build --release -p mpl-api --bin mpl-server --example bench_api
    out=target/release
else
    cargo build -p mpl-api --bin mpl-server --example bench_api
    out=target/debug
fi

db_name="bench_$(date +%s)_$$"
database_url="${server_url%/*}/$db_name"
work=$(mktemp -d)
token="mpl_bench_admin_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
port=$((20000 + RANDOM % 20000))
server_pid=""

cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    psql "$server_url" -q -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

psql "$server_url" -q -c "CREATE DATABASE \"$db_name\""
MPL_DATABASE_URL="$database_url" MPL_DATA_DIR="$work" MPL_STORAGE_URL="file://$work/objects" \
MPL_LISTEN="127.0.0.1:$port" MPL_ADMIN_TOKEN="$token" MPL_SCHEDULER=0 \
MPL_RATE_LIMIT_PER_SEC=1000000 MPL_RATE_LIMIT_BURST=1000000 RUST_LOG=warn \
    "$out/mpl-server" >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }

echo "profile: $profile; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
"$out/examples/bench_api" "http://127.0.0.1:$port" "$token" "$database_url" "$work/objects" \
    "$server_pid" "$submissions" "$concurrency" "$checkpoint_mib"
