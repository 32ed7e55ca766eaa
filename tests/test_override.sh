#!/bin/sh
# test_override.sh: RVSFIT_CL_KERNEL_DIR replaces embedded kernel files one by one, the source
# used is logged, and a kernel that computes wrong answers is caught by the self-test.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device

dir="$scratch/kernels"
XDG_CACHE_HOME="$scratch/cache"  # a fresh cache, so the first build is from source
export XDG_CACHE_HOME
mkdir -p "$dir"
# same kernel, one comment added: must be used (and logged), and pass
{ echo "/* override marker */"; cat "$top_srcdir/cl/selftest.cl"; } >"$dir/selftest.cl"
run 0 "override used" -- env RVSFIT_CL_KERNEL_DIR="$dir" "$RVSFIT_CL" --self-test -v
expect_in err "selftest.cl: using override source $dir/selftest.cl" "override logged"
expect_in err "selftest: built from override $dir/selftest.cl source" "build names the override"
expect_in out '^self-test: passed' "override passes the self-test"

# files absent from the directory still come from the binary
run 0 "common.clh still embedded" -- env RVSFIT_CL_KERNEL_DIR="$dir" "$RVSFIT_CL" --self-test -v
expect_not_in err "common.clh: using override" "common.clh not overridden"

# an axpy that is off by one: the known-answer self-test must fail loudly
sed 's/y\[i\] = a \* x\[i\] + y\[i\];/y[i] = a * x[i] + y[i] + 1.0f;/' \
    "$top_srcdir/cl/selftest.cl" >"$dir/selftest.cl"
grep -q '+ 1.0f' "$dir/selftest.cl" || fail "could not make the wrong kernel"
run 3 "wrong kernel" -- env RVSFIT_CL_KERNEL_DIR="$dir" "$RVSFIT_CL" --self-test
expect_in err 'SELF-TEST FAILED .*axpy kernel: y\[0\] = 1, expected 0' "wrong answer caught"

# issue 19 item 11: an entry of the override directory that is not a regular file (here a
# directory named like a kernel) is refused with a message, not read as 2^63 bytes
mkdir -p "$scratch/dirkernels/selftest.cl"
run 3 "override entry is a directory" -- env RVSFIT_CL_KERNEL_DIR="$scratch/dirkernels" "$RVSFIT_CL" --self-test
expect_in err "selftest.cl in RVSFIT_CL_KERNEL_DIR is not a regular file" "directory entry named"
expect_not_in err "out of host memory" "no giant allocation"

# an override directory that is not a directory is an error, not ignored
run 3 "override dir missing" -- env RVSFIT_CL_KERNEL_DIR="$scratch/nowhere" "$RVSFIT_CL" --self-test
expect_in err "RVSFIT_CL_KERNEL_DIR=$scratch/nowhere is not a directory" "missing dir reported"

finish
