#!/bin/sh
# test_mkgrid_cli.sh: rvsfit-cl-mkgrid's command line: GNU --help/--version, usage errors (bad
# ranges and values) with exit 2, an unwritable output with exit 1 and no file left behind, and
# small real runs (built-in line list, low internal resolution): a single spectrum in one file,
# a regular grid in a directory (one file per arm), reproducible Latin hypercubes, --arms.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
MKGRID="${top_builddir}/rvsfit-cl-mkgrid"
PY=/usr/bin/python3
unset RVSFIT_CL_LINELIST_DIR
FAST="--linelist builtin --resolution 20000 -q"

run 0 "--help" -- "$MKGRID" --help
expect_in out '^Usage: rvsfit-cl-mkgrid' "--help prints usage"
expect_in out '--single=T,G,F,A' "--help documents --single"
expect_in out 'Exit status' "--help documents exit codes"
run 0 "--version" -- "$MKGRID" --version
expect_in out '^rvsfit-cl-mkgrid \(rvsfit-cl\) [0-9]+\.[0-9]+' "--version names the program"

# usage errors: exit 2 and a message naming the problem
run 2 "no --out" -- "$MKGRID" --single 5000,4,0,0
expect_in err '--out is required' "missing --out named"
run 2 "min > max" -- "$MKGRID" --out "$scratch/x.fits" --teff 6000,5000,100 --logg 4,4 --feh 0,0 --alpha 0,0
expect_in err "invalid range '6000,5000,100'" "reversed range named"
run 2 "zero step" -- "$MKGRID" --out "$scratch/x.fits" --teff 5000,6000,0
expect_in err "invalid range" "zero step rejected"
run 2 "range outside limits" -- "$MKGRID" --out "$scratch/x.fits" --teff 1000,2000,500 --logg 4,4 --feh 0,0 --alpha 0,0
expect_in err "outside the generator's limits" "out-of-limit range named"
run 2 "garbage range" -- "$MKGRID" --out "$scratch/x.fits" --logg a,b
expect_in err "invalid range 'a,b'" "garbage range named"
run 2 "no step, no --random" -- "$MKGRID" --out "$scratch/x.fits" --teff 5000,6000 --logg 4,4 --feh 0,0 --alpha 0,0
expect_in err "needs a step" "missing step explained"
run 2 "short --single" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4
expect_in err "--single needs" "short --single named"
run 2 "--single outside" -- "$MKGRID" --out "$scratch/x.fits" --single 20000,4,0,0
expect_in err "Teff outside" "out-of-range --single explained"
run 2 "--single in the Eddington corner" -- "$MKGRID" --out "$scratch/x.fits" --single 12000,0.5,0,0
expect_in err "Eddington" "unphysical corner explained"
run 2 "--single with ranges" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --teff 4000,5000,100
expect_in err "cannot be combined" "conflict named"
run 2 "--random 0" -- "$MKGRID" --out "$scratch/x.fits" --random 0
expect_in err "--random needs" "bad count named"
run 2 "--threads 0" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --threads 0
expect_in err "--threads needs" "bad thread count named"
run 2 "--teff-cdf without --random" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --teff-cdf 4000,0.5
expect_in err "--teff-cdf needs --random" "--teff-cdf without --random explained"
run 2 "--teff-cdf odd list" -- "$MKGRID" --out "$scratch/x.fits" --random 5 --teff-cdf 4000,0.5,5000
expect_in err "--teff-cdf needs pairs" "odd --teff-cdf list explained"
run 2 "--teff-cdf decreasing" -- "$MKGRID" --out "$scratch/x.fits" --random 5 --teff-cdf 5000,0.5,4000,0.6
expect_in err "knots must increase" "decreasing knots explained"
run 2 "--arms x" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --arms b,x
expect_in err "--arms takes" "bad arm named"
run 2 "--resolution" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --resolution 10
expect_in err "--resolution needs" "bad resolution named"
run 2 "--vdw bogus" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --vdw bogus
expect_in err "--vdw needs abo-scaled or unsoeld" "bad --vdw named"
run 2 "--sampling-broadening 5" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --sampling-broadening 5
expect_in err "--sampling-broadening needs" "bad --sampling-broadening named"
run 2 "unknown option" -- "$MKGRID" --no-such-option
expect_in err "unrecognized option '--no-such-option'" "unknown option named"
run 2 "stray argument" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 extra
expect_in err "unexpected argument 'extra'" "stray argument named"

# an output that cannot be written: exit 1, a message, nothing left behind
: >"$scratch/afile"
run 1 "unwritable output" -- "$MKGRID" --out "$scratch/afile/x.fits" --single 5000,4,0,0 $FAST
expect_in err "cannot create the output file" "unwritable output explained"
run 1 "output neither file nor directory" -- "$MKGRID" --out "$scratch/missing-dir" --single 5000,4,0,0 $FAST
expect_in err "neither an existing directory" "bad --out explained"
run 1 "missing line list" -- "$MKGRID" --out "$scratch/x.fits" --single 5000,4,0,0 --linelist "$scratch/nolines" -q
expect_in err "cannot open line-list directory" "missing line list explained"
[ -e "$scratch/x.fits" ] && fail "a failed run left $scratch/x.fits"

# real runs
run 0 "single spectrum" -- "$MKGRID" --out "$scratch/one.fits" --single 5200,4.4,-0.5,0.2 $FAST
mkdir -p "$scratch/grid"
run 0 "regular grid" -- "$MKGRID" --out "$scratch/grid" --teff 5000,6000,1000 --logg 4,4.5,0.5 --feh 0,0 --alpha 0,0 --threads 2 $FAST
run 0 "random A" -- "$MKGRID" --out "$scratch/ra.fits" --random 3 --seed 7 --arms r $FAST
run 0 "random B" -- "$MKGRID" --out "$scratch/rb.fits" --random 3 --seed 7 --arms r $FAST
run 0 "random C" -- "$MKGRID" --out "$scratch/rc.fits" --random 3 --seed 8 --arms r $FAST
run 0 "random, log Teff uniform" -- "$MKGRID" --out "$scratch/ru.fits" --random 400 --seed 3 --arms z --threads 2 --linelist builtin --resolution 1000 -q
run 0 "random, --teff-cdf" -- "$MKGRID" --out "$scratch/rk.fits" --random 400 --seed 3 --arms z --threads 2 --linelist builtin --resolution 1000 -q --teff-cdf 4000,0.5,6000,0.7
run 0 "Unsoeld damping, old sampling term" -- "$MKGRID" --out "$scratch/uns.fits" --single 5200,4.4,-0.5,0.2 --vdw unsoeld --sampling-broadening 0.6 $FAST
mkdir -p "$scratch/bz"
run 0 "two arms" -- "$MKGRID" --out "$scratch/bz" --single 4500,2,0,0 --arms b,z $FAST
ls "$scratch"/*.tmp* "$scratch"/grid/*.tmp* >/dev/null 2>&1 && fail "temporary files left behind"

"$PY" - "$scratch" >"$scratch/py.out" 2>&1 <<'PYEOF' || { fail "file checks"; cat "$scratch/py.out" >&2; }
import os, sys
import numpy as np
from astropy.io import fits
d = sys.argv[1]
def check(cond, what):
    if not cond:
        print("FAIL:", what); sys.exit(1)
h = fits.open(d + "/one.fits")
check([x.name for x in h] == ["PRIMARY", "PARAMS", "B_WAVELENGTH", "B_FLUX", "R_WAVELENGTH",
      "R_FLUX", "Z_WAVELENGTH", "Z_FLUX"], "HDU names %s" % [x.name for x in h])
p = h["PARAMS"].data
check(len(p) == 1 and p["TEFF"][0] == 5200 and p["FEH"][0] == -0.5 and p["FLAG"][0] == 0, "PARAMS")
for a, lo, hi in (("B", 3500, 5900), ("R", 5660, 7720), ("Z", 7420, 9924)):
    w = h[a + "_WAVELENGTH"].data; f = h[a + "_FLUX"].data
    check(w[0] < lo and w[-1] > hi and np.all(np.diff(np.log(w)) > 0), a + " wavelengths")
    check(np.allclose(np.diff(np.log(w)), np.log(w[1] / w[0]), rtol=1e-6), a + " log-uniform")
    check(f.shape == (1, len(w)) and f.dtype.kind == "f" and f.dtype.itemsize == 4, a + " shape")
    check(np.all(np.isfinite(f)) and np.all(f > 0), a + " flux finite and positive")
check(h[0].header["NSPEC"] == 1 and h[0].header["LINELIST"] == "builtin", "header")
check(h[0].header["VDWMODE"] == "abo-scaled" and h[0].header["SAMPBRD"] == 0.3, "physics keys")
u = fits.open(d + "/uns.fits")
check(u[0].header["VDWMODE"] == "unsoeld" and u[0].header["SAMPBRD"] == 0.6, "--vdw/--sampling-broadening keys")
check(not np.array_equal(u["B_FLUX"].data, h["B_FLUX"].data), "the physics options change the spectrum")
for a in ("desi_b", "desi_r", "desi_z"):
    g = fits.open(d + "/grid/rvsfit-grid-%s.fits" % a)
    p = g["PARAMS"].data
    check(len(p) == 4 and g[0].header["NSPEC"] == 4 and np.all(p["FLAG"] == 0), a + " grid PARAMS")
    check(sorted(zip(p["TEFF"], p["LOGG"])) == [(5000, 4), (5000, 4.5), (6000, 4), (6000, 4.5)],
          a + " grid points")
    f = g[a[-1].upper() + "_FLUX"].data
    check(f.shape[0] == 4 and np.all(np.isfinite(f)), a + " grid flux")
    check(not np.allclose(f[0], f[2]), a + " different Teff give different spectra")
ra, rb, rc = [fits.open(d + "/%s.fits" % n)["PARAMS"].data for n in ("ra", "rb", "rc")]
check(np.array_equal(ra["TEFF"], rb["TEFF"]) and np.array_equal(ra["ALPHA"], rb["ALPHA"]), "same seed")
check(not np.array_equal(ra["TEFF"], rc["TEFF"]), "different seed")
check(len(fits.open(d + "/ra.fits")) == 4, "--arms r gives one arm")
# fractions below 4000 and 6000 K: log-uniform 0.21 and 0.50, with --teff-cdf 4000,0.5,6000,0.7;
# the points dropped at the Eddington limit (all above 4000 K) are redrawn, which raises both
u = fits.open(d + "/ru.fits")["PARAMS"].data["TEFF"]
k = fits.open(d + "/rk.fits")
kt = k["PARAMS"].data["TEFF"]
fu = [np.mean(u < t) for t in (4000, 6000)]
fk = [np.mean(kt < t) for t in (4000, 6000)]
print("fraction below 4000, 6000 K: log-uniform %.3f %.3f, --teff-cdf %.3f %.3f" % tuple(fu + fk))
check(len(u) == 400 and len(kt) == 400 and u.min() >= 3000 and kt.max() <= 12000, "Teff range")
check(0.19 < fu[0] < 0.27 and 0.48 < fu[1] < 0.60, "log-uniform Teff fractions %s" % fu)
check(0.48 < fk[0] < 0.58 and 0.68 < fk[1] < 0.78, "--teff-cdf Teff fractions %s" % fk)
check(k[0].header["TEFFCDF"] == "4000,0.5,6000,0.7", "TEFFCDF keyword")
check(sorted(os.listdir(d + "/bz")) == ["rvsfit-grid-desi_b.fits", "rvsfit-grid-desi_z.fits"],
      "--arms b,z files %s" % os.listdir(d + "/bz"))
print("file checks passed")
PYEOF
cat "$scratch/py.out"
finish
