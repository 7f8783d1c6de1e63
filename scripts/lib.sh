# Shared by scripts/demo and scripts/test: install what is missing, start a throwaway beanstalkd.
# Sourced, not run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your system's package manager"
    say "installing $* from apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ensure_venv EXTRAS: .venv with pheanq installed (editable) and the given extras; reinstalled when the
# packaging files change.
ensure_venv() {
    local extras=$1 stamp
    command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "pheanq needs Python 3.10 or newer"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; apt_install python3-venv; "$PYTHON" -m venv "$VENV"; }
    fi
    stamp=$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)
    if ! venv_has "$stamp" "$extras"; then
        say "installing pheanq${extras:+[$extras]} into .venv"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" \
            2> >(grep -v '^WARNING: Location' >&2)
        echo "$stamp $extras" > "$VENV/.pheanq-installed"
    fi
}

# venv_has STAMP EXTRAS: the venv was installed from these packaging files with at least these extras.
venv_has() {
    local installed_stamp installed_extras extra
    read -r installed_stamp installed_extras 2>/dev/null < "$VENV/.pheanq-installed" || return 1
    [ "$installed_stamp" = "$1" ] || return 1
    for extra in ${2//,/ }; do
        [[ ",$installed_extras," == *",$extra,"* ]] || return 1
    done
}

ensure_beanstalkd() {
    if ! command -v beanstalkd >/dev/null 2>&1 && [ ! -x /usr/bin/beanstalkd ]; then
        apt_install beanstalkd
    fi
}

# What the tests that act as a second local user need: useradd/userdel (passwd), setpriv (util-linux), and the
# system's python3 (a worker run as that user cannot read a virtualenv under root's home).
ensure_second_user_tools() {
    local missing=()
    command -v useradd >/dev/null 2>&1 && command -v userdel >/dev/null 2>&1 || missing+=(passwd)
    command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
    [ -x /usr/bin/python3 ] || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# Debian's Chromium and its ChromeDriver, for the dashboard's browser tests (tests/test_web_browser.py) and
# scripts/screenshots: never a browser a test tool downloads by itself.
ensure_browser() {
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        apt_install chromium chromium-driver
    fi
}

# The PostgreSQL server programs (initdb, pg_ctl), for the private throwaway cluster of the chaos scenarios.
ensure_postgres_server_programs() {
    if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null 2>&1; then
        apt_install postgresql
    fi
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_beanstalkd: a throwaway in-memory beanstalkd on a free loopback port; sets BEANSTALKD_PID and
# BEANSTALKD_ADDRESS. The caller stops it (stop_beanstalkd) in its exit trap.
start_beanstalkd() {
    local port binary deadline
    binary=$(command -v beanstalkd || echo /usr/bin/beanstalkd)
    port=$(free_port)
    "$binary" -l 127.0.0.1 -p "$port" &
    BEANSTALKD_PID=$!
    BEANSTALKD_ADDRESS="127.0.0.1:$port"
    deadline=$((SECONDS + 10))
    until "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.5).close()" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "beanstalkd did not start on port $port"
        kill -0 "$BEANSTALKD_PID" 2>/dev/null || die "beanstalkd exited at start"
        sleep 0.1
    done
}

stop_beanstalkd() {
    if [ -n "${BEANSTALKD_PID:-}" ]; then
        kill "$BEANSTALKD_PID" 2>/dev/null || true
        wait "$BEANSTALKD_PID" 2>/dev/null || true
        BEANSTALKD_PID=
    fi
}

# database_answers URL: true when the database server at URL accepts a connection within a few seconds; else
# says why (the driver's last line) and returns false.
database_answers() {
    local why
    why=$("$VENV/bin/python" - "$1" 2>&1 <<'PY'
import sys
import sqlalchemy as sa
from pheanq.storage.engine import create_engine
engine = create_engine(sys.argv[1])
with engine.connect() as connection:
    connection.execute(sa.text("SELECT 1"))
PY
) && return 0
    say "${why##*$'\n'}"
    return 1
}
