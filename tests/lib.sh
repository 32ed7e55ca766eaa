# lib.sh: helpers sourced by the shell tests. Each test gets a scratch directory under the build
# tree, and the functions below fail the test with a message naming what was expected.
set -u
: "${top_builddir:=$(pwd)}"
: "${top_srcdir:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${RVSFIT_CL:=rvsfit-cl}"
test_name=$(basename "$0" .sh)
scratch="$top_builddir/tests/$test_name.tmp"
rm -rf "$scratch"
mkdir -p "$scratch"
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# run EXPECTED_EXIT DESCRIPTION -- COMMAND...: runs COMMAND, keeping stdout/stderr in
# $scratch/out and $scratch/err, and checks its exit status.
run() {
    expected=$1
    what=$2
    shift 3
    "$@" >"$scratch/out" 2>"$scratch/err"
    got=$?
    if [ "$got" -ne "$expected" ]; then
        fail "$what: exit $got, expected $expected"
        echo "--- stdout" >&2
        cat "$scratch/out" >&2
        echo "--- stderr" >&2
        cat "$scratch/err" >&2
    fi
}

# expect_in out|err PATTERN DESCRIPTION: the last run's stream must match the extended regex.
expect_in() {
    if ! grep -Eq -- "$2" "$scratch/$1"; then
        fail "$3: no line matching /$2/ in std$1"
        sed 's/^/    /' "$scratch/$1" >&2
    fi
}

expect_not_in() {
    if grep -Eq -- "$2" "$scratch/$1"; then
        fail "$3: unexpected /$2/ in std$1"
    fi
}

finish() {
    if [ "$failures" -ne 0 ]; then
        echo "$test_name: $failures check(s) failed" >&2
        exit 1
    fi
    echo "$test_name: all checks passed"
    exit 0
}

# The set-up of a test that fits the bundled example: a device (else skip), the bundled
# libraries, $example and $truth, Debian's $python, and the scratch directory as the working one.
use_example() {
    require_device
    RVSFIT_CL_DATADIR="$top_srcdir/data"
    export RVSFIT_CL_DATADIR
    example="$top_srcdir/examples/coadd-main-bright-10000.fits"
    truth="$top_srcdir/examples/truth-main-bright-10000.fits"
    python=${PYTHON3:-/usr/bin/python3}
    cd "$scratch" || exit 1
}

# Skip (77) only when no OpenCL device exists at all: hardware absent, not a failure.
require_device() {
    "$RVSFIT_CL" --list-devices >"$scratch/devices" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "SKIP: no OpenCL device: $(cat "$scratch/devices")" >&2
        exit 77
    fi
}
