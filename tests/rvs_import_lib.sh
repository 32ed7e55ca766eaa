# rvs_import_lib.sh: sourced by the rvs-import tests after lib.sh. Finds the interpreter, the
# generated script and rvspecfit's fixture library; skips (77) only when the fixture is absent
# (as under make distcheck); fails without numpy, h5py, astropy (tools/install-deps installs them).
py=${PYTHON3:-/usr/bin/python3}
rvs_import="$top_builddir/tools/rvs-import"
fixture=
for d in "${RVSFIT_TEST_DATA:-}" "$top_srcdir/../shared/data" "$top_srcdir/../../shared/data"; do
    if [ -n "$d" ] && [ -f "$d/rvspecfit-templ/reference_evals.fits" ]; then
        fixture="$d/rvspecfit-templ"
        break
    fi
done
if [ -z "$fixture" ]; then
    echo "SKIP: rvspecfit fixture library (shared/data/rvspecfit-templ) not found" >&2
    exit 77
fi
if ! "$py" -c 'import numpy, h5py, astropy' 2>"$scratch/import.err"; then
    echo "FAIL: $py cannot import numpy, h5py and astropy ($(tail -1 "$scratch/import.err")):" \
        "run tools/install-deps (python3-numpy, python3-h5py, python3-astropy)" >&2
    exit 1
fi
if [ ! -x "$rvs_import" ]; then
    echo "FAIL: $rvs_import was not built" >&2
    exit 1
fi
