#!/bin/sh
# test_rvs_import.sh: tools/rvs-import converts rvspecfit's fixture library (three arms, and the
# legacy desi_r checkpoint) into format version 2; a numpy forward pass over OUR files reproduces
# rvspecfit's fluxes and outside flags; checksums and keywords as documented, the LSF keywords
# (LSFTYPE, LSFSIG, LSFRMAT: place, comments, values) of every LSF option, and the unknown-LSF
# message once per run without one (tests/rvs_import_check.py convert).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
. "$top_srcdir/tests/rvs_import_lib.sh"
exec "$py" "$top_srcdir/tests/rvs_import_check.py" convert "$scratch" "$fixture" "$rvs_import"
