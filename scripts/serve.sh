#!/usr/bin/env bash
# Runs the whole service on this machine: api + scheduler + trainer, with the console.
# Installs what it needs on first use (PyTorch 2.11.0, PostgreSQL when no database is given,
# the console's npm packages), builds in release mode, and prints the URL.
#
# Settings (environment): MPL_DATABASE_URL (default: a private cluster under $MPL_DATA_DIR),
# MPL_DATA_DIR (./.data), MPL_LISTEN (127.0.0.1:8080), MPL_STORAGE_URL, MPL_ADMIN_TOKEN,
# MPL_SLOTS, MPL_DEVICES. See docs/operations.md for all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

export MPL_DATA_DIR="${MPL_DATA_DIR:-$PWD/.data}"
mkdir -p "$MPL_DATA_DIR"
export MPL_DATA_DIR="$(cd "$MPL_DATA_DIR" && pwd)"

step "checking PyTorch 2.11.0 (libtorch for the trainer)"
source scripts/torch-env.sh

if [ -z "${MPL_DATABASE_URL:-}" ]; then
  MPL_DATABASE_URL="$(private_postgres "$MPL_DATA_DIR/postgres" "${MPL_PG_PORT:-5544}" mpl)"
  export MPL_DATABASE_URL
fi

if [ -f console/package.json ]; then
  step "building the console (npm)"
  (cd console && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run build) >&2
fi

step "building the service (cargo build --release; the first build takes a while)"
cargo build --release -p mpl-trainer -p mpl-api -p mpl-scheduler >&2

export MPL_TRAINER_BIN="$PWD/target/release/trainer"
export MPL_CONSOLE_DIR="${MPL_CONSOLE_DIR:-$PWD/console/dist}"
step "starting mpl-server on http://${MPL_LISTEN:-127.0.0.1:8080} (Ctrl-C stops it)"
exec target/release/mpl-server serve
