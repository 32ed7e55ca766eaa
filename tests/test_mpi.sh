#!/bin/sh
# test_mpi.sh (issue 20): rvsfit-cl --mpi under mpirun on PoCL's CPU device.
#   - Four inputs: the example's 10 stars split 4/3/3 into three files in two directories, and a
#     truncated file. `mpirun -n 2 --oversubscribe rvsfit-cl --mpi` must give every good file's
#     RVTAB values and RVMOD models byte for byte as one process does, the same status lines
#     (input, outcome, targets) in the status file, the bad file reported, and exit 1 (a failed
#     input) on both.
#   - --throw-exceptions under MPI stops every rank: fewer than all inputs are done.
#   - Without MPI in the build (configure found none, or --without-mpi), --mpi must exit 2 with
#     the message saying how to get it.
# Two ranks share the two cores, so each input runs at about half speed: ~1 minute in all.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

use_example

if [ "${RVSFIT_CL_HAVE_MPI:-no}" != yes ]; then
    run 2 "--mpi without MPI" -- "$RVSFIT_CL" --mpi "$example"
    expect_in err "built without MPI.*libopenmpi-dev" "--mpi says how to get MPI"
    echo "rvsfit-cl is built without MPI: only its message was tested"
    finish
fi
mpirun=${MPIRUN:-mpirun}
# as root (CI's containers), Open MPI needs to be told; shared-memory transport only
mpiflags="--oversubscribe --bind-to none -n 2 --mca btl self,vader"
[ "$(id -u)" -eq 0 ] && mpiflags="$mpiflags --allow-run-as-root"

mkdir -p in/main/100 in/special/200
craft="$top_srcdir/tests/desi_craft.py"
{ "$python" "$craft" rows "$example" in/main/100/coadd-a.fits 0,1,2,3 &&
  "$python" "$craft" rows "$example" in/main/100/coadd-b.fits 4,5,6 &&
  "$python" "$craft" rows "$example" in/special/200/coadd-c.fits 7,8,9; } ||
    fail "cannot split the example"
head -c 100000 in/main/100/coadd-a.fits > in/main/100/coadd-truncated.fits
inputs="in/main/100/coadd-a.fits in/main/100/coadd-truncated.fits in/main/100/coadd-b.fits in/special/200/coadd-c.fits"

# shellcheck disable=SC2086
run 1 "one process (a bad input: exit 1)" -- "$RVSFIT_CL" --output_dir single \
    --process-status-file single.txt $inputs
# shellcheck disable=SC2086
run 1 "mpirun -n 2 (a bad input: exit 1)" -- "$mpirun" $mpiflags "$RVSFIT_CL" --mpi -v \
    --output_dir multi --process-status-file multi.txt $inputs
expect_in err "rank 1 of 2" "rank 1 says which device it took"
expect_in err "coadd-truncated.fits" "the bad input is named"
expect_in err "4 file\\(s\\) processed by 2 ranks, 1 failed, 10 target\\(s\\) written" \
    "rank 0 gives the summary of both ranks"

"$python" - <<'PY' || fail "--mpi results differ from one process"
import glob, os, sys
import numpy as np
from astropy.io import fits
bad = 0
single = sorted(os.path.relpath(p, 'single') for p in glob.glob('single/**/*.fits', recursive=True))
multi = sorted(os.path.relpath(p, 'multi') for p in glob.glob('multi/**/*.fits', recursive=True))
if single != multi or len(single) != 6:
    print('output files: one process %s, mpi %s' % (single, multi))
    bad += 1
for rel in single:
    if rel not in multi:
        continue
    with fits.open(os.path.join('single', rel)) as a, fits.open(os.path.join('multi', rel)) as b:
        for ha in a:
            if ha.name == 'PRIMARY' or ha.data is None:
                continue
            hb = b[ha.name]
            if isinstance(ha, fits.BinTableHDU):
                for col in ha.columns.names:
                    if ha.data[col].dtype.kind in 'fiub' and \
                            ha.data[col].tobytes() != hb.data[col].tobytes():
                        print('%s %s %s differs' % (rel, ha.name, col))
                        bad += 1
            elif np.asarray(ha.data).tobytes() != np.asarray(hb.data).tobytes():
                print('%s %s differs' % (rel, ha.name))
                bad += 1
def lines(path):
    with open(path) as fp:
        return sorted(tuple(l.split()[:3]) for l in fp if l.strip() and not l.startswith('#'))
ls, lm = lines('single.txt'), lines('multi.txt')
if ls != lm or len(ls) != 4:
    print('status lines: one process %s, mpi %s' % (ls, lm))
    bad += 1
print('%d differences' % bad)
sys.exit(1 if bad else 0)
PY

# --throw-exceptions: the bad input is first, so rank 0 or 1 stops there and asks the other to
# stop; not every good input gets done
# shellcheck disable=SC2086
run 1 "mpirun -n 2 --throw-exceptions" -- "$mpirun" $mpiflags "$RVSFIT_CL" --mpi \
    --throw-exceptions --fitarm b --output_dir stopped in/main/100/coadd-truncated.fits \
    in/main/100/coadd-a.fits in/main/100/coadd-b.fits in/special/200/coadd-c.fits \
    in/main/100/coadd-a.fits in/main/100/coadd-b.fits
expect_in err "stopping at .*coadd-truncated.fits \\(--throw-exceptions\\)" "the stop is said"
finish
