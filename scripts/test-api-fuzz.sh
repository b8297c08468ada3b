#!/usr/bin/env bash
# Property-based API testing with Schemathesis: generates requests from the committed OpenAPI
# document and checks that the running server never answers 5xx and that every response matches
# the document. Runs against a real mpl-server on a fresh database, authenticated with a token.
#
# Needs: a built target/debug/mpl-server, MPL_TEST_DATABASE_URL (scripts/test.sh sets both up).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

command -v schemathesis >/dev/null || {
  step "installing schemathesis (PyPI)"
  python3 -m pip install -q --progress-bar off 'schemathesis==4.*' >&2
}

admin_url="${MPL_TEST_DATABASE_URL:?set MPL_TEST_DATABASE_URL}"
db="fuzz_$(date +%s)_$$"
psql "$admin_url" -qc "CREATE DATABASE $db"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="fuzz-admin-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
step "starting mpl-server on 127.0.0.1:$port for schemathesis"
MPL_DATABASE_URL="${admin_url%/*}/$db" MPL_DATA_DIR="$work" MPL_LISTEN="127.0.0.1:$port" \
  MPL_ADMIN_TOKEN="$token" MPL_SCHEDULER=0 MPL_RATE_LIMIT_PER_SEC=100000 \
  MPL_RATE_LIMIT_BURST=100000 RUST_LOG=error \
  target/debug/mpl-server serve 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/server.log" >&2; die "server did not start"; }

step "schemathesis: no 5xx, responses match openapi/openapi.json"
status=0
schemathesis run "${MPL_FUZZ_SCHEMA:-openapi/openapi.json}" --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance \
  --phases examples,coverage,fuzzing --max-examples "${MPL_FUZZ_EXAMPLES:-25}" \
  --exclude-path-regex '^/v1/tokens/' \
  --seed 1 --request-timeout 20 --workers 2 --no-color || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log (tail) ---" >&2; tail -50 "$work/server.log" >&2
  exit "$status"
fi
