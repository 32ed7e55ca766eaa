# rvs_import_lib.sh: sourced by the rvs-import tests after lib.sh. Finds the interpreter, the
# generated script and rvspecfit's fixture library; skips (77) only when the fixture or numpy,
# h5py, astropy are absent (as under make distcheck or on a machine without the Python stack).
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
    echo "SKIP: $py lacks numpy/h5py/astropy: $(cat "$scratch/import.err")" >&2
    exit 77
fi
if [ ! -x "$rvs_import" ]; then
    echo "FAIL: $rvs_import was not built" >&2
    exit 1
fi
