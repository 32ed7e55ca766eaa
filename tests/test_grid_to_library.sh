#!/bin/sh
# test_grid_to_library.sh: the default-library pipeline on a toy scale: rvsfit-cl-mkgrid writes a
# multi-arm grid (built-in line list, low internal resolution), rvsfit-cl-train reads one arm of it
# (<ARM>_FLUX / <ARM>_WAVELENGTH) and writes a library file that the trainer's own inference check
# reproduces.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device
bindir=$top_builddir
run 0 "mkgrid" -- "$bindir/rvsfit-cl-mkgrid" --out "$scratch/grid.fits" --random 8 --seed 5 \
    --threads 2 --linelist builtin --resolution 20000 --arms r,z
[ -s "$scratch/grid.fits" ] || fail "no grid written"
mkdir -p "$scratch/lib"
for setup in desi_r desi_z; do
    run 0 "train $setup from the multi-arm grid" -- "$bindir/rvsfit-cl-train" \
        --grid "$scratch/grid.fits" --setup $setup --out "$scratch/lib" --width 16 --nlayers 1 \
        --npc 4 --batch 4 --epochs 3 --val-frac 0.25 --seed 2 -v
    expect_in err "inference path vs trainer forward: max \|d ln flux\| = [0-9.e+-]+" \
        "$setup: library reproduces the trainer"
    [ -s "$scratch/lib/rvsfit_$setup.fits" ] || fail "no library file for $setup"
done
# an arm the grid does not hold is a clear error
run 1 "missing arm" -- "$bindir/rvsfit-cl-train" --grid "$scratch/grid.fits" --setup desi_b \
    --out "$scratch/lib" --epochs 1
expect_in err "no image HDU 'B_WAVELENGTH'" "missing arm named"
finish
