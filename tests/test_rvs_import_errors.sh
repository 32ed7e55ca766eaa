#!/bin/sh
# test_rvs_import_errors.sh: tools/rvs-import refuses bad inputs with a message and writes
# nothing (missing or corrupt checkpoint, wrong magic/versions, disallowed pickle globals, shape
# mismatches; bad LSF options, such as --lsf desi on a setup that is not DESI, exit 2), and reads
# checkpoints of other byte orders and layouts (tests/rvs_import_check.py errors).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
. "$top_srcdir/tests/rvs_import_lib.sh"
exec "$py" "$top_srcdir/tests/rvs_import_check.py" errors "$scratch" "$fixture" "$rvs_import"
