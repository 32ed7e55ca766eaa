#!/bin/sh
# test_default_library_fresh.sh: the bundled default library against spectra it was never
# trained on. rvsfit-cl-mkgrid computes 30 new spectra (Latin hypercube, seed 4242, log Teff
# uniform over the whole grid; the library's grid used seed 20261121), rvsfit-cl-eval emulates
# them at vsini = 0 and vrad = 0, and per arm the median and 99th percentile of |dflux|/flux per
# pixel must meet issue #4's targets (0.5 % and 2 %). Measured at commit time (the library of the
# 2026-12-07 physics, fresh spectra of that physics): median 0.070 / 0.015 / 0.012 %, 99th
# percentile 1.24 / 0.39 / 0.29 % (b / r / z; the previous library and physics: median 0.071 /
# 0.014 / 0.012 %, 99th percentile 1.25 / 0.40 / 0.26 %). Needs the line list in the
# shared data ($RVSFIT_CL_SHARED_DATA or $top_srcdir/../shared/data): skipped (77) only when it
# is absent, as without a device; fails without numpy/astropy (tools/install-deps installs them).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device
MKGRID="${top_builddir}/rvsfit-cl-mkgrid"
eval_prog=${RVSFIT_CL_EVAL:-$top_builddir/rvsfit-cl-eval}
DATA="${RVSFIT_CL_SHARED_DATA:-$top_srcdir/../shared/data}"
py=${PYTHON3:-/usr/bin/python3}
if [ ! -d "$DATA/linelists/linemake" ]; then
    echo "SKIP: no line list at $DATA/linelists/linemake (set RVSFIT_CL_SHARED_DATA)" >&2
    exit 77
fi
if ! "$py" -c 'import numpy, astropy' 2>"$scratch/import.err"; then
    fail "$py cannot import numpy and astropy ($(tail -1 "$scratch/import.err")):" \
        "run tools/install-deps (python3-numpy, python3-astropy)"
    finish
fi
# the fresh spectra at the LSF the library records (LSFSIG; mkgrid's defaults without it) and with
# the generator physics its grid had: VDWMODE/SAMPBRD where the header records them, else the
# physics before 2026-12-07 (Unsoeld widths, 0.6-pixel sampling term; doc/mkgrid.md), which the
# bundled library was made with
phys=$("$py" -c '
import math, sys
from astropy.io import fits
out = []
for arm, default in (("b", 1.55), ("r", 1.55), ("z", 1.8)):
    h = fits.getheader("%s/rvsfit_desi_%s.fits" % (sys.argv[1], arm))
    sig = h.get("LSFSIG") if h.get("LSFTYPE") == "GAUSSIAN" else None
    out.append("%.10g" % (sig * 2 * math.sqrt(2 * math.log(2)) if sig else default))
print(",".join(out), h.get("VDWMODE", "unsoeld"), h.get("SAMPBRD", 0.6))
' "$top_srcdir/data/default") || fail "reading the library's LSF"
set -- $phys
fwhm=$1 vdw=$2 samp=$3
echo "fresh spectra at FWHM $fwhm A (b,r,z), --vdw $vdw --sampling-broadening $samp"
run 0 "fresh spectra" -- "$MKGRID" --out "$scratch/fresh.fits" --random 30 --seed 4242 \
    --fwhm "$fwhm" --vdw "$vdw" --sampling-broadening "$samp" \
    --linelist "$DATA/linelists/linemake" -q
run 0 "parameter rows" -- "$py" -c '
import sys
from astropy.io import fits
with open(sys.argv[2], "w") as out:
    for r in fits.getdata(sys.argv[1], "PARAMS"):
        out.write("%.17g %.17g %.17g %.17g 0 0\n" % (r["TEFF"], r["LOGG"], r["FEH"], r["ALPHA"]))
' "$scratch/fresh.fits" "$scratch/params.txt"
run 0 "emulation" -- "$eval_prog" --template-lib "$top_srcdir/data/default" \
    --params "$scratch/params.txt" -o "$scratch/emulated.fits"
run 0 "emulation error" -- "$py" -c '
import sys
import numpy as np
from astropy.io import fits
grid, emu = fits.open(sys.argv[1]), fits.open(sys.argv[2])
bad = 0
for arm, setup in (("B", "desi_b"), ("R", "desi_r"), ("Z", "desi_z")):
    wave = grid[arm + "_WAVELENGTH"].data
    true = np.array(grid[arm + "_FLUX"].data, dtype=float)
    tab = emu[setup].data
    if not np.allclose(tab["WAVELENGTH"], wave, rtol=1e-9, atol=0):
        print(setup, "wavelengths differ from the grid"); bad += 1; continue
    model = np.array(tab["FLUX"], dtype=float).T
    err = np.abs(model / true - 1)
    med, p99 = np.median(err), np.percentile(err, 99)
    ok = med < 0.005 and p99 < 0.02
    bad += not ok
    print("%s: %d spectra x %d px, |dflux|/flux median %.3f %%, 99th percentile %.3f %%%s"
          % (setup, true.shape[0], true.shape[1], 100 * med, 100 * p99, "" if ok else "  FAIL"))
sys.exit(1 if bad else 0)
' "$scratch/fresh.fits" "$scratch/emulated.fits"
cat "$scratch/out"
finish
