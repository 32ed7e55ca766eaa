#!/bin/sh
# test_mkgrid_solar.sh: a solar model from rvsfit-cl-mkgrid (Teff 5750, log g 4.5, solar) against
# reference solar spectra in the shared data (FERRE synthetic spectrum for the continuum shape,
# the observed flux atlas for line depths at DESI resolution and the wavelength scale), with the
# thresholds of tools/mkgrid-solar-check.py. Needs the shared data ($RVSFIT_CL_SHARED_DATA or
# $top_srcdir/../shared/data): skipped (77) only when it is absent.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
MKGRID="${top_builddir}/rvsfit-cl-mkgrid"
DATA="${RVSFIT_CL_SHARED_DATA:-$top_srcdir/../shared/data}"
if [ ! -d "$DATA/solar" ] || [ ! -d "$DATA/linelists/linemake" ]; then
    echo "SKIP: no shared data at $DATA (set RVSFIT_CL_SHARED_DATA)" >&2
    exit 77
fi
run 0 "solar model" -- "$MKGRID" --out "$scratch/sun.fits" --single 5750,4.5,0,0 \
    --linelist "$DATA/linelists/linemake" --threads 1
run 0 "solar comparison" -- /usr/bin/python3 "$top_srcdir/tools/mkgrid-solar-check.py" \
    "$scratch/sun.fits" "$DATA"
cat "$scratch/out"
finish
