#!/bin/sh
# test_fuzz.sh (issue 19): the parsers' fuzz targets in make check.
#  1. the seed corpora (tests/fuzz/make-seeds) and the kept findings (tests/fuzz/regress/)
#     replayed through every target with the normal build (tests/fuzz/replay_*): none may crash;
#  2. where Debian's clang has libFuzzer (clang, libclang-rt-14-dev from tools/install-deps), a
#     short bounded run of each target with ASan+UBSan (tools/fuzz -t 5): no finding allowed.
#     The instrumented build of the library takes ~2 minutes on two cores.
# The long run is `make fuzz` (doc/fuzzing.md).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

python=${PYTHON3:-/usr/bin/python3}
"$python" "$top_srcdir/tests/fuzz/make-seeds" "$top_srcdir" "$scratch/seeds" ||
    { fail "make-seeds failed"; finish; }
for t in desi_read config library cache; do
    inputs="$scratch/seeds/$t"
    [ -d "$top_srcdir/tests/fuzz/regress/$t" ] && inputs="$inputs $top_srcdir/tests/fuzz/regress/$t"
    # shellcheck disable=SC2086
    run 0 "replay of $t" -- env TMPDIR="$scratch" "$top_builddir/tests/fuzz/replay_$t" $inputs
    expect_in out "[1-9][0-9]* inputs replayed" "replay of $t ran its inputs"
done

# the finding of tests/fuzz/regress/desi_read/gzip-trailer-claims-4GB.fits.gz: a 14 kB file whose
# gzip trailer claims 4 GB made cfitsio allocate 4 GB; the reader now refuses it, saying why
run 0 "replay of the 4 GB gzip claim" -- env TMPDIR="$scratch" RVSFIT_FUZZ_VERBOSE=1 \
    "$top_builddir/tests/fuzz/replay_desi_read" \
    "$top_srcdir/tests/fuzz/regress/desi_read/gzip-trailer-claims-4GB.fits.gz"
expect_in err "gzip trailer claims 4119455520 uncompressed bytes from 14621 compressed" \
    "the damaged gzip file named for what it is"
# ...and tests/fuzz/regress/desi_read/gzip-trailer-claims-0.fits.gz: a 74 kB file claiming 0
# bytes, which cfitsio reads as 2^32 (ISIZE is modulo 2^32) and allocated as 4 GiB
run 0 "replay of the 0-byte gzip claim" -- env TMPDIR="$scratch" RVSFIT_FUZZ_VERBOSE=1 \
    "$top_builddir/tests/fuzz/replay_desi_read" \
    "$top_srcdir/tests/fuzz/regress/desi_read/gzip-trailer-claims-0.fits.gz"
expect_in err "gzip trailer claims 4294967296 uncompressed bytes from 74545 compressed" \
    "a claim that cfitsio reads as 4 GiB is refused too"

# the finding of tests/fuzz/regress/desi_read/cfitsio-ttype-non-ascii.fits: a TTYPE card of
# 0xff bytes made cfitsio 4.2.0 overflow a buffer and the process abort; now refused, named
run 0 "replay of the non-ASCII TTYPE card" -- env TMPDIR="$scratch" RVSFIT_FUZZ_VERBOSE=1 \
    "$top_builddir/tests/fuzz/replay_desi_read" \
    "$top_srcdir/tests/fuzz/regress/desi_read/cfitsio-ttype-non-ascii.fits"
expect_in err "card 60 of the header of HDU 2 FIBERMAP holds byte 0xff at column 11" \
    "the non-ASCII header card named"

if [ "${RVSFIT_FUZZ_SECONDS:-5}" != 0 ]; then
    "$top_srcdir/tools/fuzz" -w "$scratch/fuzz" -t "${RVSFIT_FUZZ_SECONDS:-5}" -j 2 \
        -c "$top_builddir/config.h" >"$scratch/fuzz.out" 2>&1
    rc=$?
    cat "$scratch/fuzz.out"
    case $rc in
    0) ;;
    77) echo "clang's libFuzzer is not installed: the short fuzz run is left out (tools/install-deps installs it)" ;;
    *) fail "tools/fuzz found something or failed (exit $rc): $scratch/fuzz" ;;
    esac
fi
finish
