#!/bin/sh
# test_realstars.sh: smoke test of benchmarks/realstars (issue 17) on the Sun alone: the solar
# flux atlas of the shared data is wrapped as a DESI coadd (DESI grids, resolution matrices of a
# DESI-like LSF, S/N 50), fitted end to end with rvsfit-cl and the default library, and the
# script must print its tables (the per-draw Sun rows, the Sun's summary against issue 17's goals,
# the worst residual windows) and exit 0. The goals themselves are not asserted: the benchmark
# measures them (benchmarks/realstars.md). Needs the solar data in the shared data
# ($RVSFIT_CL_SHARED_DATA or $top_srcdir/../shared/data): skipped (77) only when it is absent, as
# without a device; fails without numpy/scipy/astropy (tools/install-deps installs them).
# About 10 s on PoCL with two cores (2 noise draws).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device
DATA="${RVSFIT_CL_SHARED_DATA:-$top_srcdir/../shared/data}"
py=${PYTHON3:-/usr/bin/python3}
if [ ! -d "$DATA/solar" ]; then
    echo "SKIP: no solar data at $DATA/solar (set RVSFIT_CL_SHARED_DATA)" >&2
    exit 77
fi
if ! "$py" -c 'import numpy, scipy, astropy' 2>"$scratch/import.err"; then
    fail "$py cannot import numpy, scipy and astropy ($(tail -1 "$scratch/import.err")):" \
        "run tools/install-deps (python3-numpy, python3-scipy, python3-astropy)"
    finish
fi
run 0 "benchmarks/realstars --sun-only" -- "$py" "$top_srcdir/benchmarks/realstars" --sun-only \
    --sun-draws 2 --data "$DATA" --workdir "$scratch/work" --bindir "$top_builddir" \
    --library "$top_srcdir/data/default"
cat "$scratch/out"
expect_in out '^== The Sun \(solar flux atlas' "the Sun's heading"
expect_in out '^ +Sun/0 +5772 +4\.44 +0\.00 +[0-9]{4}±' "the Sun's per-star row"
expect_in out '^ +Sun/1 ' "the second noise draw's row"
for p in Teff 'log g' '\[Fe/H\]' VSINI; do
    expect_in out "^$p +-?[0-9.]+ " "the Sun's $p line against its goal"
done
expect_in out '^Sun: the 5 worst 50-A windows' "the residual windows"
expect_in out '^[BRZ] +[0-9]{4}-[0-9]{4} +[0-9.]+ ' "a residual window row"
expect_in out '^realstars: done \(Sun only\)' "the end of the run"
expect_not_in out '^== LAMOST' "--sun-only fits no LAMOST star"
[ -f "$scratch/work/coadd-sun.fits" ] || fail "--workdir keeps coadd-sun.fits"
[ -f "$scratch/work/out/rvtab_coadd-sun.fits" ] || fail "--workdir keeps the rvtab"
finish
