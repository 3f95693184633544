#!/bin/sh
# Runs the meshcached-vs-memcached benchmark (release build); the results
# table goes to stdout, progress to stderr:
#
#   benches/run.sh > results.md
#   benches/run.sh --self-check      # memcached against itself
#
# --self-check points MESHCACHED_BIN at a wrapper that execs memcached, so both
# columns are the same server: ratios near 1.00 show the harness is fair, and
# the numbers are the ceiling this machine and load generator can measure.
# All BENCH_* variables (see benches/README.md) pass through.
set -eu
cd "$(dirname "$0")/.."

if [ "${1-}" = "--self-check" ]; then
    memcached=${MEMCACHED_BIN:-/usr/bin/memcached}
    # memcached will not start as root without -u; the harness adds it only
    # for the server it knows is memcached.
    user_flag=""
    if [ "$(id -u)" = 0 ]; then user_flag="-u root"; fi
    wrapper=$(mktemp)
    trap 'rm -f "$wrapper"' EXIT
    printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$memcached" "$user_flag" >"$wrapper"
    chmod +x "$wrapper"
    export MESHCACHED_BIN="$wrapper"
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--self-check]" >&2
    exit 2
fi

cargo bench --bench versus_memcached
