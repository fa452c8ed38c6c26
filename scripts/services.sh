# shellcheck shell=bash
# Makes the services the tests need available and exports their addresses.
#
#   source scripts/services.sh        # start what is missing, export the variables below
#   bash scripts/services.sh stop     # stop the memcached instances this script started
#
# Exports:
#   SWITCHBOARD_TEST_MYSQL_URL   mysql://root@127.0.0.1:3306/test   (MariaDB)
#   SWITCHBOARD_TEST_REDIS_URL   redis://127.0.0.1:6379
#   SWITCHBOARD_TEST_MEMCACHED   127.0.0.1:P1,127.0.0.1:P2          (two instances)
#
# Meant for a fresh Debian machine as root: installs mariadb-server, redis-server,
# memcached, and chromium with chromium-driver (the browser tests' headless Chromium)
# with apt-get when they are missing. Idempotent (a second call reuses what
# the first started) and quiet on success; on failure it prints what went wrong and
# returns non-zero. It only changes the caller's shell by exporting the variables.

_sb_state_dir="${TMPDIR:-/tmp}/switchboard-services"
_sb_log="$_sb_state_dir/services.log"

_sb_fail() {
    echo "services.sh: FAILED: $*" >&2
    if [ -s "$_sb_log" ]; then
        echo "services.sh: last lines of $_sb_log:" >&2
        tail -n 30 "$_sb_log" >&2
    fi
    return 1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
_sb_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sends one line to 127.0.0.1:$1 and prints the first reply line (2 s timeout).
_sb_ask() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf '%s\r\n' "$2" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        printf '%s\n' "${line%$'\r'}"
    ) 2>/dev/null
}

# Waits up to $2 seconds for command $1 to succeed.
_sb_wait_for() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if eval "$1"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Installs Debian packages if a command is missing; `apt-get update` only on failure.
# Another apt or dpkg running (an upgrade, another test run) is waited for, up to
# five minutes, instead of failing on its lock.
_sb_apt() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@" >>"$_sb_log" 2>&1
}
_sb_apt_install() {
    if _sb_apt install -y -q "$@"; then
        return 0
    fi
    echo "services.sh: apt-get install $* failed; running apt-get update and retrying" >&2
    _sb_apt update -q && _sb_apt install -y -q "$@"
}

_sb_mariadb() {
    if ! _sb_port_open 3306; then
        if [ ! -x /usr/sbin/mariadbd ]; then
            _sb_apt_install mariadb-server || { _sb_fail "cannot install mariadb-server"; return 1; }
        fi
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
            >>"$_sb_log" 2>&1 || { _sb_fail "cannot start mariadbd"; return 1; }
    fi
    _sb_wait_for "mysql -h127.0.0.1 -P3306 -uroot -e 'SELECT 1' >/dev/null 2>&1" 30 ||
        { _sb_fail "MariaDB does not answer on 127.0.0.1:3306"; return 1; }
    mysql -h127.0.0.1 -P3306 -uroot -e 'CREATE DATABASE IF NOT EXISTS test' >>"$_sb_log" 2>&1 ||
        { _sb_fail "cannot create database test in MariaDB"; return 1; }
    export SWITCHBOARD_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306/test"
}

_sb_redis() {
    if [ "$(_sb_ask 6379 PING)" != "+PONG" ]; then
        if ! command -v redis-server >/dev/null 2>&1; then
            _sb_apt_install redis-server || { _sb_fail "cannot install redis-server"; return 1; }
        fi
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            >>"$_sb_log" 2>&1 || { _sb_fail "cannot start redis-server"; return 1; }
        _sb_wait_for '[ "$(_sb_ask 6379 PING)" = "+PONG" ]' 15 ||
            { _sb_fail "Redis does not answer on 127.0.0.1:6379"; return 1; }
    fi
    export SWITCHBOARD_TEST_REDIS_URL="redis://127.0.0.1:6379"
}

# True if a memcached answers `version` on port $1.
_sb_memcached_up() {
    case "$(_sb_ask "$1" version)" in VERSION*) return 0 ;; *) return 1 ;; esac
}

_sb_memcached() {
    local state="$_sb_state_dir/memcached.ports" ports=() port p up=1
    # Reuse the instances of an earlier call if they still answer.
    if [ -s "$state" ]; then
        read -r -a ports <"$state"
        for p in "${ports[@]}"; do _sb_memcached_up "$p" || up=0; done
        if [ "$up" = 1 ] && [ "${#ports[@]}" = 2 ]; then
            export SWITCHBOARD_TEST_MEMCACHED="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}"
            return 0
        fi
        _sb_stop_memcached
        ports=()
    fi
    if ! command -v memcached >/dev/null 2>&1; then
        _sb_apt_install memcached || { _sb_fail "cannot install memcached"; return 1; }
    fi
    port=$((20000 + RANDOM % 20000))
    while [ "${#ports[@]}" -lt 2 ]; do
        port=$((port + 1))
        _sb_port_open "$port" && continue
        memcached -d -u root -l 127.0.0.1 -p "$port" -U 0 -m 64 \
            -P "$_sb_state_dir/memcached-$port.pid" >>"$_sb_log" 2>&1 || continue
        if _sb_wait_for "_sb_memcached_up $port" 10; then
            ports+=("$port")
            echo "${ports[*]}" >"$state"
        else
            _sb_fail "memcached on port $port does not answer"
            return 1
        fi
    done
    export SWITCHBOARD_TEST_MEMCACHED="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}"
}

# Headless Chromium and its WebDriver for the browser tests (nothing to start: each
# test starts its own chromedriver; see crates/switchboard-testkit/src/browser.rs).
_sb_chromium() {
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        _sb_apt_install chromium chromium-driver ||
            { _sb_fail "cannot install chromium and chromium-driver"; return 1; }
    fi
}

# Stops the memcached instances started by this script (by their pid files).
_sb_stop_memcached() {
    local f pid pids=()
    for f in "$_sb_state_dir"/memcached-*.pid; do
        [ -e "$f" ] || continue
        pid="$(cat "$f" 2>/dev/null)"
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = memcached ]; then
            kill "$pid" 2>/dev/null && pids+=("$pid")
        fi
        rm -f "$f"
    done
    rm -f "$_sb_state_dir/memcached.ports"
    # memcached shuts down on its next clock tick; insist after 3 s.
    for pid in "${pids[@]}"; do
        _sb_wait_for "[ ! -e /proc/$pid ]" 3 || kill -9 "$pid" 2>/dev/null
    done
    return 0
}

_sb_main() {
    mkdir -p "$_sb_state_dir" || { echo "services.sh: cannot create $_sb_state_dir" >&2; return 1; }
    : >"$_sb_log"
    if [ "${1:-}" = stop ]; then
        _sb_stop_memcached
        return 0
    fi
    if [ "$(id -u)" != 0 ] && ! _sb_port_open 3306; then
        echo "services.sh: not root: services that are missing cannot be installed" >&2
    fi
    _sb_mariadb || return 1
    _sb_redis || return 1
    _sb_memcached || return 1
    _sb_chromium || return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Run, not sourced: exports would be lost, so this is for `stop` (or a check).
    _sb_main "$@"
    exit $?
fi
_sb_main "$@"
