#!/bin/sh
# test_cli_lsf.sh: how rvsfit-cl uses the library's LSF (issue 16). With the bundled library
# (format version 2, LSFRMAT = T) the resolution-matrix path is on by default and deconvolves the
# library's sigma (the log says both); the same networks in a version-1 file (LSF unknown) are
# fitted without resolution matrices, and with --resolution-matrix fall back to rvspecfit's
# 0.5 A with a warning naming rvsfit-cl-lsf; lsf_sigma0_angstrom in a configuration overrides
# the library without a warning; a file whose resolution matrices are narrower than the
# templates' LSF (a mock with --lsf-scale 0: identity matrices) gets one warning per arm with the
# fraction of pixels. One star, arm b, so that PoCL takes seconds.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

require_device
py=${PYTHON3:-/usr/bin/python3}
lib="$top_srcdir/data/default"
example="$top_srcdir/examples/coadd-main-bright-10000.fits"
MOCK="$top_builddir/rvsfit-cl-mock"
printf '39627000002000210\n' >"$scratch/ids.txt"
one="--fitarm b --targetid-file-from $scratch/ids.txt --log-level INFO --no-subdirs"

# the bundled library: resolution matrices on, the library's sigma deconvolved
# shellcheck disable=SC2086
run 0 "default path" -- "$RVSFIT_CL" $one --output-dir "$scratch/o1" "$example"
expect_in err "fitting through the fibres' resolution matrices" "resolution path on by default"
expect_in err "arm b: the templates' LSF \(Gaussian sigma 0.6582 A" "library sigma deconvolved"
expect_not_in err "sigma0 = 0.5 A" "no fallback to 0.5 A"

# the same networks as a version-1 file: LSF unknown, rvspecfit's default path
mkdir -p "$scratch/v1"
for arm in b r z; do
    "$py" - "$lib/rvsfit_desi_$arm.fits" "$scratch/v1/rvsfit_desi_$arm.fits" <<'EOF' ||
import sys
from astropy.io import fits
with fits.open(sys.argv[1]) as h:
    for key in ('LSFTYPE', 'LSFSIG', 'LSFRMAT'):
        del h[0].header[key]
    h[0].header['RVSFVER'] = 1
    h.writeto(sys.argv[2], checksum=True)
EOF
        fail "making a version-1 copy of arm $arm"
done
# shellcheck disable=SC2086
run 0 "version-1 library" -- "$RVSFIT_CL" $one --template-lib "$scratch/v1" \
    --output-dir "$scratch/o2" "$example"
expect_in err "fitting without resolution matrices" "rvspecfit's default path"
# shellcheck disable=SC2086
run 0 "version-1 library, --resolution-matrix" -- "$RVSFIT_CL" $one --template-lib "$scratch/v1" \
    --resolution-matrix --output-dir "$scratch/o3" "$example"
expect_in err "does not record the LSF of its templates.*sigma0 = 0.5 A.*rvsfit-cl-lsf" \
    "unknown-LSF warning"

# the configuration overrides the library, silently
printf 'lsf_sigma0_angstrom:\n  b: 0.6\n' >"$scratch/config.yaml"
# shellcheck disable=SC2086
run 0 "lsf_sigma0_angstrom from the configuration" -- "$RVSFIT_CL" $one \
    --config "$scratch/config.yaml" --output-dir "$scratch/o4" "$example"
expect_not_in err "templates' LSF \(Gaussian" "library sigma not used when configured"
expect_not_in err "WARNING.*LSF" "no LSF warning when configured"

# identity resolution matrices: narrower than the templates everywhere
run 0 "identity-R mock" -- "$MOCK" --library "$lib" --out "$scratch/coadd-main-bright-ident.fits" \
    --ntargets 1 --seed 3 --snr-range 30:30 --lsf-scale 0
# shellcheck disable=SC2086
run 0 "identity R through the resolution path" -- "$RVSFIT_CL" --fitarm b --log-level INFO \
    --no-subdirs --output-dir "$scratch/o5" "$scratch/coadd-main-bright-ident.fits"
expect_in err "arm b: the resolution matrix is not wider than the templates' LSF \(sigma0 0.658 A\) at 100.00% of the pixels" \
    "narrow-R warning with the fraction"
n=$(grep -c "is not wider than the templates' LSF" "$scratch/err")
[ "$n" = 1 ] || fail "the narrow-R warning came $n times (once per file and arm)"
finish
