#!/bin/sh
# test_eval.sh: rvsfit-cl-eval (doc/rvsfit-cl-eval.1) on the bundled default library.
#  - a --params file of 12 rows in one run: the network at vsini = 0 against a numpy evaluation
#    of the library's weights, rotated rows against a plain reference kernel applied to the
#    vsini = 0 row of the same parameters (and the interior flux conserved), shifted rows
#    against scipy's natural spline, the outside-hull penalty and WARN bits, the FITS layout and
#    checksums (tests/eval_check.py); again with the rotation forced through the FFT path;
#  - batch rows equal single calls (options, stdin with --vrad), text output equals the FITS;
#  - forced fp32; the outside-hull warning; bad inputs give the documented exit code and message,
#    and no output or temporary file.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device
eval_prog=${RVSFIT_CL_EVAL:-$top_builddir/rvsfit-cl-eval}
lib="$top_srcdir/data/default"
py=${PYTHON3:-/usr/bin/python3}
check="$top_srcdir/tests/eval_check.py"
# the references need numpy, scipy and astropy, which tools/install-deps installs: without
# them the test fails (a skip would hide that nothing was compared)
if ! "$py" -c 'import numpy, scipy, astropy' 2>"$scratch/import.err"; then
    fail "$py cannot import numpy, scipy and astropy ($(tail -1 "$scratch/import.err")):" \
        "run tools/install-deps (python3-numpy, python3-scipy, python3-astropy)"
    finish
fi
pycheck() {
    "$py" "$check" "$@" >"$scratch/py.out" 2>&1 || fail "eval_check.py $1: $(cat "$scratch/py.out")"
    grep -v '^all checks passed' "$scratch/py.out"
}

run 0 "--help" -- "$eval_prog" --help
expect_in out "^Usage: rvsfit-cl-eval" "--help usage line"
expect_in out "--params=FILE" "--help lists --params"
expect_in out "^  2  invalid command line" "--help lists the exit codes"
awk 'length > 79 { exit 1 }' "$scratch/out" || fail "--help has lines over 79 columns"
run 0 "--version" -- "$eval_prog" --version
expect_in out "^rvsfit-cl-eval \(rvsfit-cl\) " "--version line"

# ------------------------------------------------------------------ the batch
cat >"$scratch/p.txt" <<'PARAMS'
# teff logg feh alpha vsini vrad
5000 4.5 0 0 0 0
5000 4.5 0 0 5 0          # R = 0.2 px: sub-pixel kernel
5000 4.5 0 0 30 0
5000 4.5 0 0 150 0
5000 4.5 0 0 400 0
4200, 2.0, -1.5, 0.3, 0, 0
4200 2.0 -1.5 0.3 60 0
4200 2.0 -1.5 0.3 60 -123.4   # rotated, then shifted

6500 4.0 -0.5 0.1 0 250
6500 4.0 -0.5 0.1 0 0
11000 0.3 0 0 0 0         # off the grid: (teff, logg) outside the training hull
9000 4.2 0.3 0.0 10       # five columns: vrad 0
PARAMS
run 0 "batch" -- "$eval_prog" --template-lib "$lib" --params "$scratch/p.txt" \
    --out "$scratch/batch.fits"
expect_in err "1 of 12 parameter sets lie outside the training hull .*row 11" "outside warning"
pycheck batch "$scratch/batch.fits" "$lib" "$scratch/p.txt"
ls -a "$scratch" | grep -q '\.tmp$' && fail "a temporary file was left behind"
# the same with every rotation kernel through the batched FFT (by default only wide kernels)
run 0 "batch, rotation by FFT" -- env RVSFIT_CL_ROTATION_FFT_MIN=3 "$eval_prog" \
    --template-lib "$lib" --params "$scratch/p.txt" --out "$scratch/batch_fft.fits"
pycheck batch "$scratch/batch_fft.fits" "$lib" "$scratch/p.txt"

# single calls give the batch rows (row numbers 0-based)
run 0 "single" -- "$eval_prog" --template_lib "$lib" --teff 5000 --logg 4.5 --feh 0 --alpha 0 \
    -o "$scratch/s1.fits"
pycheck single "$scratch/s1.fits" "$lib"
run 0 "single, rotated" -- "$eval_prog" --template-lib "$lib" --teff 4200 --logg 2.0 \
    --feh -1.5 --alpha 0.3 --vsini 60 -o "$scratch/s7.fits"
echo "6500 4.0 -0.5 0.1 0" >"$scratch/one.txt"
run 0 "stdin, --vrad for 5-column rows" -- sh -c "\"$eval_prog\" --template-lib \"$lib\" \
    --params - --vrad 250 -o \"$scratch/s9.fits\" <\"$scratch/one.txt\""
run 0 "one arm" -- "$eval_prog" --template-lib "$lib" --setup desi_r --teff 5000 --logg 4.5 \
    --feh 0 --alpha 0 -o "$scratch/r.fits"
pycheck same "$scratch/batch.fits" 0:"$scratch/s1.fits" 6:"$scratch/s7.fits" 8:"$scratch/s9.fits" \
    0:"$scratch/r.fits"

# forced fp32: the network still within its tolerance
run 0 "--fp32" -- "$eval_prog" --template-lib "$lib" --fp32 --teff 5000 --logg 4.5 --feh 0 \
    --alpha 0 -o "$scratch/f32.fits"
pycheck single "$scratch/f32.fits" "$lib"

# text output: to stdout and to a file, the same numbers as the FITS file
run 0 "text to stdout" -- "$eval_prog" --template-lib "$lib" --params "$scratch/p.txt" \
    --format text
cp "$scratch/out" "$scratch/batch.txt"
expect_in out "^# setup desi_z: 6449 pixels" "text block header"
pycheck text "$scratch/batch.txt" "$scratch/batch.fits"
run 0 "text to a file" -- "$eval_prog" --template-lib "$lib" --setup desi_b,desi_r --setup \
    desi_b --teff 5000 --logg 4.5 --feh 0 --alpha 0 --format text -o "$scratch/s1.txt"
[ "$(grep -c '^# setup' "$scratch/s1.txt")" -eq 2 ] || fail "--setup b,r + b: two blocks"
[ "$(grep -vc '^#\|^$' "$scratch/s1.txt")" -eq $((6215 + 5303)) ] \
    || fail "text file: 6215 + 5303 pixel lines"

# off the grid: warned, flagged, still written
run 0 "outside the hull" -- "$eval_prog" --template-lib "$lib" --teff 11000 --logg 0.3 \
    --feh 0 --alpha 0 -o "$scratch/out.fits"
expect_in err "WARNING .*parameters lie outside the training hull" "single outside warning"
"$py" -c "from astropy.io import fits; import sys; h = fits.open(sys.argv[1]); \
assert h[0].header['EVALWARN'] & 1 and h[0].header['OUTSIDE'] > 0; \
assert h['PARAMS'].data['WARN'][0] & 1" \
    "$scratch/out.fits" || fail "EVALWARN/OUTSIDE/WARN of the off-grid point"

# default library (RVSFIT_CL_DATADIR/default, as rvsfit-cl)
run 0 "default library" -- env RVSFIT_CL_DATADIR="$top_srcdir/data" "$eval_prog" --teff 5000 \
    --logg 4.5 --feh 0 --alpha 0 -o "$scratch/def.fits"
pycheck same "$scratch/batch.fits" 0:"$scratch/def.fits"

# ------------------------------------------------------------------ errors
T="--template-lib $lib"
P="--teff 5000 --logg 4.5 --feh 0 --alpha 0"
# shellcheck disable=SC2086
{
run 2 "non-numeric --teff" -- "$eval_prog" $T --teff 5e3K --logg 4.5 --feh 0 --alpha 0 \
    -o "$scratch/x.fits"
expect_in err "invalid --teff '5e3K': expected a finite number" "non-numeric message"
run 2 "vsini < 0" -- "$eval_prog" $T $P --vsini -5 -o "$scratch/x.fits"
expect_in err "invalid --vsini -5: must be >= 0 km/s" "vsini message"
run 2 "|vrad| >= c" -- "$eval_prog" $T $P --vrad -3e5 -o "$scratch/x.fits"
expect_in err "invalid --vrad .*speed of light" "vrad message"
run 2 "teff <= 0" -- "$eval_prog" $T --teff 0 --logg 4.5 --feh 0 --alpha 0 -o "$scratch/x.fits"
expect_in err "invalid --teff 0: must be > 0 \(the library maps it through log10\)" "teff message"
run 2 "unknown setup" -- "$eval_prog" $T $P --setup desi_b,desi_x -o "$scratch/x.fits"
expect_in err "unknown setup 'desi_x': library .* has desi_b, desi_r, desi_z" "setup message"
run 2 "bad setup name" -- "$eval_prog" $T $P --setup ../desi_b -o "$scratch/x.fits"
expect_in err "invalid --setup '../desi_b'" "setup name message"
run 2 "missing parameter" -- "$eval_prog" $T --teff 5000 --logg 4.5 --feh 0 -o "$scratch/x.fits"
expect_in err "missing --alpha" "missing parameter message"
run 2 "--params and --teff" -- "$eval_prog" $T $P --params "$scratch/p.txt" -o "$scratch/x.fits"
expect_in err "not both" "--params with --teff message"
run 2 "no --out" -- "$eval_prog" $T $P
expect_in err "--out FILE is required for FITS output" "no --out message"
run 2 "bad --format" -- "$eval_prog" $T $P --format xml -o "$scratch/x.fits"
expect_in err "invalid --format 'xml'" "format message"
run 2 "unknown option" -- "$eval_prog" $T $P --vsini-max 3 -o "$scratch/x.fits"
expect_in err "unrecognized option '--vsini-max'" "unknown option message"
run 2 "extra argument" -- "$eval_prog" $T $P -o "$scratch/x.fits" extra
expect_in err "unexpected argument 'extra'" "extra argument message"
printf '5000 4.5 0 0 0\n5000 4.5 x 0 0\n' >"$scratch/bad1.txt"
run 2 "params: non-numeric" -- "$eval_prog" $T --params "$scratch/bad1.txt" -o "$scratch/x.fits"
expect_in err "bad1.txt:2: feh 'x' is not a finite number" "params non-numeric message"
printf '# t g f a\n5000 4.5 0 0\n' >"$scratch/bad2.txt"
run 2 "params: 4 columns" -- "$eval_prog" $T --params "$scratch/bad2.txt" -o "$scratch/x.fits"
expect_in err "bad2.txt:2: 4 values; a row is 'teff logg feh alpha vsini \[vrad\]'" \
    "columns message"
printf '5000 4.5 0 0 -1\n' >"$scratch/bad3.txt"
run 2 "params: vsini < 0" -- "$eval_prog" $T --params "$scratch/bad3.txt" -o "$scratch/x.fits"
expect_in err "bad3.txt:1: vsini = -1 must be >= 0 km/s" "params vsini message"
printf '# nothing\n\n' >"$scratch/bad4.txt"
run 2 "params: no rows" -- "$eval_prog" $T --params "$scratch/bad4.txt" -o "$scratch/x.fits"
expect_in err "holds no parameter rows" "empty params message"
run 2 "params: missing file" -- "$eval_prog" $T --params "$scratch/none.txt" -o "$scratch/x.fits"
expect_in err "cannot read --params .*none.txt" "missing params message"
run 1 "missing library" -- "$eval_prog" --template-lib "$scratch/nolib" $P -o "$scratch/x.fits"
expect_in err "template library .*nolib: no such directory; give --template-lib DIR" \
    "no library message"
mkdir -p "$scratch/emptylib" "$scratch/badlib"
run 1 "empty library directory" -- "$eval_prog" --template-lib "$scratch/emptylib" $P \
    -o "$scratch/x.fits"
expect_in err "holds no template library" "empty library message"
head -c 20000 "$lib/rvsfit_desi_b.fits" >"$scratch/badlib/rvsfit_desi_b.fits"
run 1 "truncated library file" -- "$eval_prog" --template-lib "$scratch/badlib" $P \
    -o "$scratch/x.fits"
expect_in err "cannot use the template library file for setup desi_b" "bad library message"
run 1 "unwritable output" -- "$eval_prog" $T $P -o "$scratch/nodir/x.fits"
expect_in err "cannot write .*nodir/x.fits" "output message"
run 3 "unusable device" -- "$eval_prog" $T $P --device 999 -o "$scratch/x.fits"
expect_in err "no usable OpenCL device" "device message"
}
[ -e "$scratch/x.fits" ] && fail "a failed run wrote its output"
ls -a "$scratch" | grep -q '\.tmp$' && fail "a temporary file was left behind"
finish
