#!/usr/bin/env bash
# Run every test: Swift unit tests, the drivers' own test suites (tests/drivers/run.py), then the
# integration tests (pytest) against a real PostgreSQL and MariaDB and the freshly built debug binary.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -k borrow       extra arguments go to pytest
#
# Environment:
#   CONCIERGE_BIN=path              test this binary instead of the debug build
#   CONCIERGE_SWIFT_PARALLEL=1      run the unit tests with `swift test --parallel`
#   CONCIERGE_ITEST_DIRECT=1        point the integration tests at PostgreSQL itself (no proxy)
#   CONCIERGE_ITEST_DEBUG=1         start proxies with debug_logging: true and --log-level trace
#                                   (the default here; 0 turns it off)
#   CONCIERGE_DRIVER_SUITES=0       skip the drivers' own test suites (tests/drivers/run.py; its
#                                   CONCIERGE_DRIVERS* variables are described there and in README)
#
# Installs what is missing: PostgreSQL, MariaDB and its `mariadb` client (scripts/mysql.sh install),
# the PostgreSQL and MariaDB JDBC drivers, a JDK, sysbench, promtool, and MariaDB Connector/C's
# headers with pkg-config and a C compiler (to build mysqlclient) (apt); pytest, pytest-timeout,
# psycopg, PyYAML, boto3 (IAM tokens), moto (a local Secrets Manager), asyncpg, PyMySQL,
# mysql-connector-python, cryptography (PyMySQL's caching_sha2_password RSA exchange) and
# mysqlclient (pip, built from its source).
# Exits non-zero if any step fails; later test steps still run so one report shows everything.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "dependencies"
bash scripts/pg.sh install
PG_BIN=$(bash scripts/pg.sh bindir)
echo "PostgreSQL: $("$PG_BIN/postgres" --version)"
bash scripts/mysql.sh install
echo "MariaDB: $(mariadb --version)"
if ! python3 -c "import pytest, pytest_timeout, psycopg, yaml, boto3, moto.server, asyncpg, pymysql, mysql.connector, cryptography" 2>/dev/null; then
    echo "installing pytest, pytest-timeout, psycopg[binary], pyyaml, boto3, moto[server], asyncpg, pymysql, mysql-connector-python and cryptography with pip"
    pip_args=(install --quiet --disable-pip-version-check pytest pytest-timeout "psycopg[binary]" pyyaml boto3 "moto[server]" "asyncpg==0.30.0"
        pymysql mysql-connector-python cryptography)
    # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told otherwise.
    python3 -m pip "${pip_args[@]}" 2>/dev/null ||
        python3 -m pip "${pip_args[@]}" --break-system-packages
fi
python3 -c 'import pytest, psycopg, pymysql; print(f"pytest {pytest.__version__}, psycopg {psycopg.__version__}, PyMySQL {pymysql.__version__}")'
# The PostgreSQL and MariaDB JDBC drivers (Debian's packages) and a JDK to run the JDBC tests'
# single-file sources; promtool (Debian's prometheus package, about 10 s) to check and unit-test
# ops/prometheus; sysbench; MariaDB Connector/C's headers, pkg-config and a C compiler, which pip
# needs to build mysqlclient (MySQLdb) from its source.
apt_packages=()
[[ -f /usr/share/java/postgresql.jar ]] || apt_packages+=(libpostgresql-jdbc-java)
[[ -f /usr/share/java/mariadb-java-client.jar ]] || apt_packages+=(libmariadb-java)
command -v javac >/dev/null || apt_packages+=(default-jdk-headless)
command -v promtool >/dev/null || apt_packages+=(prometheus)
command -v sysbench >/dev/null || apt_packages+=(sysbench)
# (Built here and in the driver suites' virtualenv.)
pkg-config --exists mariadb 2>/dev/null || apt_packages+=(libmariadb-dev)
command -v pkg-config >/dev/null || apt_packages+=(pkg-config)
command -v cc >/dev/null || apt_packages+=(build-essential)
python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null ||
    apt_packages+=(python3-dev)
if ((${#apt_packages[@]})); then
    echo "installing ${apt_packages[*]} with apt-get"
    sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
if ! python3 -c "import MySQLdb" 2>/dev/null; then
    echo "installing mysqlclient with pip (built against $(pkg-config --modversion mariadb 2>/dev/null || echo '?'))"
    python3 -m pip install --quiet --disable-pip-version-check "mysqlclient==2.3.1" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check "mysqlclient==2.3.1" --break-system-packages
fi
echo "JDBC: $(readlink -f /usr/share/java/postgresql.jar), $(readlink -f /usr/share/java/mariadb-java-client.jar), $(java -version 2>&1 | head -n 1)"
echo "mysqlclient $(python3 -c 'import MySQLdb; print(".".join(map(str, MySQLdb.version_info[:3])))'), $(sysbench --version)"
echo "promtool: $(promtool --version 2>&1 | head -n 1)"
swift --version 2>&1 | head -n 1

section "build (swift build --build-tests)"
swift build --build-tests
BIN_DIR=$(swift build --show-bin-path)
export CONCIERGE_BIN=${CONCIERGE_BIN:-$BIN_DIR/concierge}

failed=()

section "unit tests (swift test)"
swift_args=(--skip-build)
[[ "${CONCIERGE_SWIFT_PARALLEL:-0}" == 1 ]] && swift_args+=(--parallel)
swift test "${swift_args[@]}" || failed+=("unit tests")

if [[ "${CONCIERGE_DRIVER_SUITES:-1}" != 0 ]]; then
    section "driver test suites (tests/drivers/run.py: asyncpg, psycopg2, pg8000 on PostgreSQL, mysqlclient on MariaDB, directly and through the proxy)"
    # Before the integration tests, so that pytest's closing line stays the last one. Installs its
    # own pinned virtualenv and the drivers' sdists under ~/.cache/concierge-driver-suites.
    # Its report is kept so that a failure is shown again at the end, where CI's excerpt is.
    driver_log=$(mktemp /tmp/concierge-driver-suites.XXXXXX.log)
    python3 tests/drivers/run.py 2>&1 | tee "$driver_log"
    [[ ${PIPESTATUS[0]} == 0 ]] || failed+=("driver test suites")
fi

section "integration tests (pytest tests/integration, CONCIERGE_BIN=$CONCIERGE_BIN)"
# Debug logging (SQL text in pin lines) and trace-level logs on: every proxy's log is searched
# for the test users' passwords at the end of each test (conftest), so a leak fails the run.
export CONCIERGE_ITEST_DEBUG=${CONCIERGE_ITEST_DEBUG:-1}
python3 -m pytest -q tests/integration "$@" || failed+=("integration tests")

# The coverage-guided fuzzers (scripts/fuzz.sh: their own sanitizer build, then every target for
# CONCIERGE_FUZZ_SECONDS) run in the background, at low priority, beside the soak only: the drivers'
# suites and the integration tests have timing-sensitive tests that a parallel build would starve.
fuzz_pid=""
if [[ "${CONCIERGE_FUZZ:-1}" != 0 && -x scripts/fuzz.sh ]]; then
    fuzz_log=$(mktemp /tmp/concierge-fuzz.XXXXXX.log)
    echo "fuzzing in the background (scripts/fuzz.sh, log $fuzz_log)"
    CONCIERGE_FUZZ_NICE=${CONCIERGE_FUZZ_NICE:-15} nice -n 15 bash scripts/fuzz.sh >"$fuzz_log" 2>&1 &
    fuzz_pid=$!
fi

if [[ "${CONCIERGE_SOAK:-1}" != 0 ]]; then
    export CONCIERGE_SOAK_SECONDS=${CONCIERGE_SOAK_SECONDS:-180}
    section "soak (tests/soak/soak.py, ${CONCIERGE_SOAK_SECONDS} s; 1800 s by default outside CI)"
    python3 tests/soak/soak.py || failed+=("soak")
fi

if [[ -n $fuzz_pid ]]; then
    section "fuzzing (scripts/fuzz.sh; whole log: $fuzz_log)"
    if wait "$fuzz_pid"; then fuzz_rc=0; else fuzz_rc=$?; fi
    grep -E -v '^#[0-9]+\s|^INFO:|^\s*$' "$fuzz_log" | tail -40
    ((fuzz_rc == 0)) || failed+=("fuzzing")
fi

# On success nothing follows pytest's closing line ("N passed ..."), which CI reads.
if [[ ${#failed[@]} -gt 0 ]]; then
    section "summary"
    if [[ -n "${driver_log:-}" && " ${failed[*]} " == *" driver test suites "* ]]; then
        echo "the driver test suites' report (tests/drivers/run.py; whole: $driver_log):"
        grep -E -A60 '^UNEXPECTED|^PROBLEM|no test passed directly|Traceback' "$driver_log" | head -80
        tail -3 "$driver_log"
    fi
    echo "FAILED: ${failed[*]}"
    exit 1
fi
