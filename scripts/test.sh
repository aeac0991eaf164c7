#!/usr/bin/env bash
# The project's test command: `bash scripts/test.sh`.
#
#   1. PostgreSQL for the tests (TETHER_TEST_DATABASE_URL; a local server is found, started or installed)
#   2. cargo fmt --check, cargo clippy -D warnings, the Rust tests (nextest when installed)
#   3. the Python compatibility suite (compat/): the real yandex-tracker-client against a running tether,
#      on SQLite and on PostgreSQL, and the web UI in headless Chromium (installed when missing)
#
# Every step runs even when an earlier one failed (the build of the server binary excepted, which the
# compat suite needs); the script exits non-zero if any step failed.
# Needs: Rust (rust-toolchain.toml), Python 3.11 with venv, and root or sudo when PostgreSQL or
# python3-venv must be installed (Debian/Ubuntu apt).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

section() { printf '\n======== %s ========\n' "$*"; }
note() { printf 'test.sh: %s\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    fi
fi

as_root() {
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need root (or sudo) to run: $*"
    fi
    "${SUDO[@]}" "$@"
}

APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [ -z "$APT_UPDATED" ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# ---------------------------------------------------------------------------------------------
# 1. PostgreSQL
# ---------------------------------------------------------------------------------------------
PG_HOST=127.0.0.1
PG_PORT=5432

pg_up() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
    else
        (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
    fi
}

# Can we log in with this URL? Without psql we cannot tell, and trust the URL.
pg_login_ok() {
    if command -v psql >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=5 psql -w -X -q -tA -d "$1" -c 'select 1' >/dev/null 2>&1
    else
        return 0
    fi
}

pg_wait_ready() {
    local _
    for _ in $(seq 1 60); do
        if pg_up; then return 0; fi
        sleep 1
    done
    die "PostgreSQL did not become ready on $PG_HOST:$PG_PORT within 60 s"
}

pg_start_or_install() {
    if [ -d /etc/postgresql ] && [ -n "$(ls -A /etc/postgresql 2>/dev/null)" ]; then
        note "PostgreSQL is installed but not answering: starting it"
    else
        note "PostgreSQL is not installed: installing it with apt-get"
        apt_install postgresql
    fi
    # The first cluster (e.g. 15/main) found in /etc/postgresql/<version>/<cluster>/.
    local conf version="" cluster=""
    for conf in /etc/postgresql/*/*/postgresql.conf; do
        [ -f "$conf" ] || continue
        cluster=$(basename "$(dirname "$conf")")
        version=$(basename "$(dirname "$(dirname "$conf")")")
        break
    done
    if [ -z "$version" ] || [ -z "$cluster" ]; then
        die "no PostgreSQL cluster found under /etc/postgresql"
    fi
    note "starting PostgreSQL cluster $version/$cluster"
    # "already running" exits non-zero too; readiness is checked below either way
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
}

pg_set_password() {
    note "trust authentication refused: setting a password for the postgres role"
    (cd / && as_root su postgres -c "psql -X -q -c \"ALTER USER postgres PASSWORD 'tether'\"") \
        || die "could not set the postgres password"
}

setup_postgres() {
    if [ -n "${TETHER_TEST_DATABASE_URL:-}" ]; then
        note "using the given TETHER_TEST_DATABASE_URL"
        return 0
    fi
    if ! pg_up; then
        pg_start_or_install
    fi
    pg_wait_ready
    local url="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
    if ! pg_login_ok "$url"; then
        pg_set_password
        url="postgres://postgres:tether@$PG_HOST:$PG_PORT/postgres"
        pg_login_ok "$url" || die "cannot log in to PostgreSQL as postgres, with or without a password"
    fi
    export TETHER_TEST_DATABASE_URL="$url"
    note "TETHER_TEST_DATABASE_URL=${url/:tether@/:***@}"
}

section "PostgreSQL"
setup_postgres
if command -v psql >/dev/null 2>&1; then
    can_create=$(psql -w -X -q -tA -d "$TETHER_TEST_DATABASE_URL" \
        -c 'select rolcreatedb or rolsuper from pg_roles where rolname = current_user' 2>/dev/null || true)
    if [ "$can_create" != "t" ]; then
        die "the role in TETHER_TEST_DATABASE_URL cannot connect or lacks CREATEDB (the tests create databases)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 2. Rust
# ---------------------------------------------------------------------------------------------
FAILED=()
step() {
    local name=$1
    shift
    section "$name"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        note "$name: ok ($((SECONDS - start)) s)"
    else
        note "$name: FAILED with exit status $rc ($((SECONDS - start)) s)"
        FAILED+=("$name")
    fi
    return 0
}

if [ -n "${CARGO_BUILD_JOBS:-}" ]; then
    note "CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS"
fi

rust_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --locked --no-fail-fast
    else
        note "cargo-nextest not found: using cargo test"
        cargo test --locked
    fi
}

step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets --locked -- -D warnings
step "Rust tests" rust_tests

# ---------------------------------------------------------------------------------------------
# 3. Python compatibility suite
# ---------------------------------------------------------------------------------------------
VENV=$ROOT/.venv

venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/pip" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

setup_venv() {
    if ! venv_ok; then
        if [ -e "$VENV" ]; then
            note "$VENV is broken: recreating it"
            rm -rf "$VENV"
        fi
        if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
            note "python3 has no venv/ensurepip: installing python3-venv"
            apt_install python3-venv
        fi
        python3 -m venv "$VENV" || return $?
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -r compat/requirements.txt
}

# The web UI's browser tests (compat/test_web.py) drive Debian's Chromium through chromedriver; without them those
# tests fail (they never skip), so install them when either is missing.
setup_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    note "chromium or chromedriver is missing: installing chromium and chromium-driver"
    apt_install chromium chromium-driver
}

compat_suite() {
    # In a subshell: a failed install must not end the script; the browser tests then fail and say why.
    (setup_chromium) || note "could not install chromium and chromium-driver: the web UI tests will fail"
    cargo build --locked --bin tether || return $?
    local target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in /*) ;; *) target_dir=$ROOT/$target_dir ;; esac
    local bin=$target_dir/debug/tether
    [ -x "$bin" ] || { note "server binary $bin not found after the build"; return 1; }
    setup_venv || return $?
    local rc=0
    TETHER_BIN=$bin TETHER_COMPAT_REQUIRE_POSTGRES=1 \
        "$VENV/bin/python" -m pytest -q -ra compat/ || rc=$?
    if [ "$rc" -eq 5 ]; then
        note "pytest collected no tests: that is a failure"
    fi
    return "$rc"
}

step "Python compat suite" compat_suite

# ---------------------------------------------------------------------------------------------
section "Summary"
if [ ${#FAILED[@]} -ne 0 ]; then
    note "FAILED: ${FAILED[*]}"
    exit 1
fi
note "all steps passed"
