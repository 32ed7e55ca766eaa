#!/bin/sh
# test_bad_kernel.sh: a kernel with a syntax error stops the program with the kernel's name and
# the compiler's log (pointing at the file and line), exit 3.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device

dir="$scratch/kernels"
mkdir -p "$dir"
cp "$top_srcdir/cl/selftest.cl" "$dir/selftest.cl"
printf '\n__kernel void rvs_broken(__global float *x) { x[0] = undeclared_name + ; }\n' \
    >>"$dir/selftest.cl"
line=$(wc -l <"$dir/selftest.cl")
XDG_CACHE_HOME="$scratch/cache"
export XDG_CACHE_HOME
run 3 "syntax error" -- env RVSFIT_CL_KERNEL_DIR="$dir" "$RVSFIT_CL" --self-test
expect_in err "kernel 'selftest' \(override $dir/selftest.cl source\) failed to compile" \
    "kernel named"
expect_in err '--- compiler log ---' "compiler log printed"
expect_in err "selftest.cl:$line:" "log points at the file and line"
expect_in err 'undeclared_name' "log shows the offending identifier"
expect_not_in out 'self-test: passed' "no success claimed"
# nothing cached for a failed build
[ -z "$(ls "$scratch/cache/rvsfit-cl" 2>/dev/null)" ] || fail "a failed build left cache files"

finish
