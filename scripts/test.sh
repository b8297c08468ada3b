#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (PyTorch
# 2.11.0, Fashion-MNIST, PostgreSQL when none answers, Chromium and the console's npm packages),
# then the Rust tests of every crate and the console's browser tests.
#
#   MPL_TEST_DATABASE_URL   a PostgreSQL server where tests may create databases
#                           (default: 127.0.0.1:5432 if it answers, else a private cluster)
#   MPL_FAULT_DRILL=0       skip the fault drill (scripts/fault-drill.sh)
#   MPL_SKIP_CONSOLE=1      skip the console's tests
#   MPL_CONSOLE_E2E=0       run the console's unit tests only, not its browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

step "checking PyTorch 2.11.0 (libtorch for the trainer)"
source scripts/torch-env.sh

step "checking test data and tools"
[ -d /usr/share/datasets/fashion-mnist ] || apt_install dataset-fashion-mnist
[ "${MPL_SKIP_CONSOLE:-0}" = 1 ] || [ -x /usr/bin/chromium ] || apt_install chromium

if [ -z "${MPL_TEST_DATABASE_URL:-}" ]; then
  if pg_reachable "postgres://postgres@127.0.0.1:5432/postgres"; then
    export MPL_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    mkdir -p .data
    MPL_TEST_DATABASE_URL="$(private_postgres "$PWD/.data/postgres-test" 5545 postgres)"
    export MPL_TEST_DATABASE_URL
  fi
fi
step "tests use PostgreSQL at $MPL_TEST_DATABASE_URL"

step "building the trainer and the service (debug)"
cargo build --workspace --bins >&2
export MPL_TRAINER_BIN="$PWD/target/debug/trainer"

step "running the Rust tests"
cargo test --workspace --no-fail-fast -- --test-threads="${MPL_TEST_THREADS:-2}"

step "fuzzing the API against its OpenAPI document (schemathesis)"
scripts/test-api-fuzz.sh

if [ "${MPL_FAULT_DRILL:-1}" = 1 ]; then
  step "fault drill: SIGKILLs of trainers, a scheduler and the api, and a PostgreSQL restart, mid-run"
  scripts/fault-drill.sh
fi

if [ "${MPL_SKIP_CONSOLE:-0}" != 1 ]; then
  if [ "${MPL_CONSOLE_E2E:-1}" = 1 ]; then
    step "running the console's unit and browser tests (headless Chromium, real platform)"
    scripts/test-console.sh
  else
    step "running the console's unit tests (MPL_CONSOLE_E2E=0 skips the browser tests)"
    (cd console && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run test:unit)
  fi
fi
step "all tests passed"
