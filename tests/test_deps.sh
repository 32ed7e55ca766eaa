#!/bin/sh
# test_deps.sh: tools/install-deps installs what the tests, tools and benchmarks use (issue 15:
# `make check` failed on a fresh Debian 12 machine for want of python3-scipy). tests/deps_check.py
# reads install-deps' packages="..." list and finds every third-party Python module (Python
# files, python shebangs, Python embedded in shell scripts and C tests) and every program
# outside Debian's base system (command words of scripts, make recipes, C tests' command
# strings); each must come from a listed package, and each module must import. Then the checker
# is shown to fail on a Python file importing an unknown module, a heredoc doing the same and a
# script calling an unknown program. Needs no device and no data: never skipped.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
py=${PYTHON3:-/usr/bin/python3}
check="$top_srcdir/tests/deps_check.py"

"$py" "$check" --srcdir "$top_srcdir" || fail "tools/install-deps does not cover the tree (above)"

# the check can fail: an unknown module, in a file and in a heredoc, and an unknown program
cat >"$scratch/bad.py" <<'EOF'
import os
import no_such_module_for_deps_check.sub as x
EOF
cat >"$scratch/bad.sh" <<'EOF'
#!/bin/sh
n=$(no-such-program-for-deps-check -p "$1" | head -1)
PY=/usr/bin/python3
"$PY" - "$n" <<'PYEOF'
from other_missing_module_for_deps_check import y
PYEOF
EOF
run 1 "an unknown module and program fail the check" -- "$py" "$check" --srcdir "$top_srcdir" \
    "$scratch/bad.py" "$scratch/bad.sh"
expect_in err "bad.py:2 imports 'no_such_module_for_deps_check', which no package of" \
    "the unknown module named with its file"
expect_in err "bad.sh:4 \(python heredoc\) imports 'other_missing_module_for_deps_check'" \
    "the heredoc's module named"
expect_in err "bad.sh:2 calls 'no-such-program-for-deps-check'" "the unknown program named"
finish
