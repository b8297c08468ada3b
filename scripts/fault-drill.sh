#!/usr/bin/env bash
# Fault drill (tests/drills/fault_drill.py): SIGKILLs trainers, a scheduler and the api at random
# moments and restarts PostgreSQL while smoke runs train, then checks that every run ended with a
# reason, that no metric is duplicated and that every checkpoint has its bytes. It uses a private
# PostgreSQL cluster so that restarting it disturbs nothing else.
#   MPL_DRILL_ROUNDS (6), MPL_DRILL_RUNS (3), MPL_DRILL_SEED (7)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source scripts/torch-env.sh

[ -x target/debug/mpl-server ] && [ -x target/debug/mpl-scheduler ] && [ -x target/debug/trainer ] \
  || cargo build -p mpl-api -p mpl-scheduler -p mpl-trainer >&2

work="$(mktemp -d /tmp/mpl-drill.XXXXXX)"
chmod 755 "$work"
pg_root="$work/postgres"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
db_url="$(private_postgres "$pg_root" 5546 drill)"
bin="$(pg_bin_dir)"
cleanup() {
  pkill -f "$work" 2>/dev/null || true
  as_pg_owner "$bin/pg_ctl" -D "$pg_root/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/pg-restart.sh" <<RESTART
#!/usr/bin/env bash
$(declare -f as_pg_owner)
as_pg_owner "$bin/pg_ctl" -D "$pg_root/data" -m fast -w -l "$pg_root/postgres.log" \\
  -o "-p 5546 -k $pg_root -c listen_addresses=127.0.0.1" restart
RESTART
chmod +x "$work/pg-restart.sh"
config=$(python3 - "$db_url" "$work" "$port" <<'PY'
import json, os, sys
url, work, port = sys.argv[1:4]
root = os.getcwd()
print(json.dumps({
    "database_url": url, "data_dir": work, "port": int(port), "token": "drill-admin-token-0123456789",
    "server": f"{root}/target/debug/mpl-server", "scheduler": f"{root}/target/debug/mpl-scheduler",
    "trainer": f"{root}/target/debug/trainer", "pg_restart": f"{work}/pg-restart.sh",
    "rounds": int(os.environ.get("MPL_DRILL_ROUNDS", 6)), "runs": int(os.environ.get("MPL_DRILL_RUNS", 3)),
    "seed": int(os.environ.get("MPL_DRILL_SEED", 7)), "timeout_secs": 900,
}))
PY
)
step "fault drill in $work"
python3 tests/drills/fault_drill.py "$config" || {
  echo "--- server log (tail) ---" >&2; tail -40 "$work/server.log" >&2 || true
  echo "--- scheduler log (tail) ---" >&2; tail -40 "$work/scheduler.log" >&2 || true
  exit 1
}
