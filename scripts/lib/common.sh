# Shared helpers for the scripts in this folder. Source it; it defines functions only.

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages when we are root on a Debian-like system, else says what is missing.
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing ${missing[*]} (apt-get)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; then
      apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
  else
    die "please install these packages first: ${missing[*]}"
  fi
}

# Prints the directory holding initdb / pg_ctl, installing PostgreSQL if needed.
pg_bin_dir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
  apt_install postgresql >/dev/null
  pg_bin_dir
}

# Runs a command as the postgres user when we are root (initdb refuses to run as root).
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Starts (creating if needed) a private PostgreSQL cluster under $1 listening on 127.0.0.1:$2,
# and creates database $3 in it. Prints the database URL.
private_postgres() {
  local root="$1" port="$2" db="$3" bin
  bin="$(pg_bin_dir)"
  mkdir -p "$root"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$root" postgres
    chown postgres "$root"
  fi
  if [ ! -f "$root/data/PG_VERSION" ]; then
    step "creating a private PostgreSQL cluster in $root/data"
    as_pg_owner "$bin/initdb" -D "$root/data" -U postgres -A trust --no-sync >/dev/null
  fi
  if ! as_pg_owner "$bin/pg_ctl" -D "$root/data" status >/dev/null 2>&1; then
    step "starting PostgreSQL on 127.0.0.1:$port"
    as_pg_owner "$bin/pg_ctl" -D "$root/data" -l "$root/postgres.log" -w \
      -o "-p $port -k $root -c listen_addresses=127.0.0.1" start >/dev/null
  fi
  if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1; then
    "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE \"$db\"" postgres
  fi
  echo "postgres://postgres@127.0.0.1:$port/$db"
}

# True when a PostgreSQL server answers at the URL's host and port.
pg_reachable() {
  local bin; bin="$(pg_bin_dir)"
  "$bin/psql" "$1" -tAc 'SELECT 1' >/dev/null 2>&1
}
