#!/bin/sh
# test_train_cli.sh: rvsfit-cl-train end to end on a toy grid (tests/train_check.py grid), with
# and without BatchNorm: it trains, reports epochs and the held-out emulation error, writes a
# library that tests/train_check.py check verifies (format, checksums, hulls, mapping, and the
# numpy forward of the written weights against the trainer's own predictions), the breakdown
# of the held-out error (--report: parameter bins, wavelength regions, Teff x log g, worst
# spectra; its shares must add up), the L1+L2 loss (--loss l1l2) and --time-limit. Then the
# errors:
# missing grid, bad shapes, missing HDU, non-positive flux, unwritable output, existing file,
# bad options.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device
py=${PYTHON3:-/usr/bin/python3}
if ! "$py" -c 'import numpy, h5py, astropy' 2>"$scratch/import.err"; then
    fail "$py cannot import numpy, h5py and astropy ($(tail -1 "$scratch/import.err")):" \
        "run tools/install-deps (python3-numpy, python3-h5py, python3-astropy)"
    finish
fi
train="$top_builddir/rvsfit-cl-train"
check="$top_srcdir/tests/train_check.py"

run 0 "--help" -- "$train" --help
expect_in out "^Usage: rvsfit-cl-train" "--help usage line"
expect_in out "--pca-init" "--help lists --pca-init"
run 0 "--version" -- "$train" --version
expect_in out "^rvsfit-cl-train \(rvsfit-cl\) " "--version line"

"$py" "$check" grid "$scratch/grid.fits" || fail "making the toy grid"
for kind in shape nowave negflux noparam; do
    "$py" "$check" grid "$scratch/bad_$kind.fits" "$kind" || fail "making grid $kind"
done
mkdir -p "$scratch/lib" "$scratch/libbn" "$scratch/libt"

common="--setup toy_b --width 32 --nlayers 2 --npc 10 --batch 32 --epochs 150 --lr 3e-3 --seed 7"
# shellcheck disable=SC2086
run 0 "training (PCA init)" -- "$train" --grid "$scratch/grid.fits" --out "$scratch/lib" \
    $common --pca-init --predictions "$scratch/pred.fits" --report "$scratch/report.txt"
expect_in out "^epoch +150 +train [0-9.]+ +val [0-9.]+" "per-epoch lines"
expect_in out "^emulation error \|dflux\|/flux of [0-9]+ held-out spectra x 150 pixels" \
    "error breakdown printed"
[ -s "$scratch/report.txt" ] || fail "no --report file"
for sect in "^teff +spectra" "^logg +spectra" "^feh +spectra" "^alpha +spectra" \
    "^wavelength \[A\] +pixels" "Teff rows x log g columns" "^worst held-out spectra"; do
    grep -Eq "$sect" "$scratch/report.txt" || fail "report lacks '$sect'"
done
# every parameter's bins hold all held-out spectra, and their top-1% shares add up to 100%
awk '/^(teff|logg|feh|alpha|wavelength)/ { if (name != "") print name, n, t; name = $1; n = 0; t = 0; next }
     /^  [-0-9.]+ \.\. / && name != "" { n += $4; t += $(NF - 1) }
     /^share/ { if (name != "") print name, n, t; name = "" }' "$scratch/report.txt" \
    >"$scratch/sums.txt"
cat "$scratch/sums.txt"
awk 'NR == 1 { n0 = $2 } $1 != "wavelength" && $2 != n0 { bad = 1 }
     { s = $3 + 0; if (s < 99.5 || s > 100.5) bad = 1 } END { exit bad }' "$scratch/sums.txt" \
    || fail "report bins do not add up (spectra per parameter, top-1% shares)"
expect_in out "emulation error on [0-9]+ held-out spectra" "emulation error line"
expect_in out "wrote .*/rvsfit_toy_b.fits" "library written"
cp "$scratch/out" "$scratch/train.out"
"$py" "$check" check "$scratch/lib/rvsfit_toy_b.fits" "$scratch/grid.fits" "$scratch/pred.fits" \
    || fail "library check (no BatchNorm)"
ls -a "$scratch/lib" | grep -q 'tmp\|ckpt' && fail "temporary or checkpoint files left behind"

# shellcheck disable=SC2086
run 0 "training (BatchNorm, L1+L2 loss)" -- "$train" --grid "$scratch/grid.fits" \
    --out "$scratch/libbn" $common --batchnorm --loss l1l2:0.05 --predictions "$scratch/predbn.fits"
expect_in out "emulation error on [0-9]+ held-out spectra" "emulation error line (L1+L2)"
"$py" "$check" check "$scratch/libbn/rvsfit_toy_b.fits" "$scratch/grid.fits" \
    "$scratch/predbn.fits" || fail "library check (BatchNorm)"

# a bound on the toy emulation error: median below 1%
med=$(sed -n 's/.*median \([0-9.]*\)%.*/\1/p' "$scratch/train.out")
awk -v m="$med" 'BEGIN { exit !(m != "" && m < 1.0) }' \
    || fail "toy held-out median |dflux|/flux = $med% (bound 1%)"
echo "toy held-out median |dflux|/flux: $med%"

# --time-limit: a run asked for a million epochs stops in time, with the best weights kept
start=$(date +%s)
# shellcheck disable=SC2086
run 0 "time limit" -- "$train" --grid "$scratch/grid.fits" --out "$scratch/libt" $common \
    --epochs 1000000 --stop-patience 0 --time-limit 10 -v
took=$(( $(date +%s) - start ))
expect_in err "time limit of [0-9]+ s reached after epoch" "time limit reached"
[ -s "$scratch/libt/rvsfit_toy_b.fits" ] || fail "no library after the time limit"
[ "$took" -le 40 ] || fail "--time-limit 10 took $took s"
echo "--time-limit 10: $took s"
# stopped by the time limit, not finished: the state it stopped in is kept as the checkpoint
# (even without periodic ones), and --resume goes on from that epoch
stopped=$(sed -n 's/.*time limit of [0-9]* s reached after epoch \([0-9]*\).*/\1/p' "$scratch/err")
[ -f "$scratch/libt/.rvsfit-cl-train_toy_b.ckpt" ] || fail "no checkpoint after the time limit"
expect_in err "checkpoint .* kept; the same command with --resume continues it" "kept message"
# shellcheck disable=SC2086
run 0 "resume after the time limit" -- "$train" --grid "$scratch/grid.fits" \
    --out "$scratch/libt" $common --epochs $((stopped + 2)) --stop-patience 0 \
    --checkpoint-every 0 --resume --force -v
expect_in err "resumed from .* at epoch $stopped " "resumed where the time limit stopped"
expect_in out "^epoch +$((stopped + 2)) " "resumed run reaches its epoch limit"
expect_not_in out "^epoch +$stopped " "resumed run repeats the last epoch"
expect_in out "^final: $((stopped + 2)) epochs \(2 in this run\)" "epochs counted over both runs"
[ -f "$scratch/libt/.rvsfit-cl-train_toy_b.ckpt" ] && fail "checkpoint left after finishing"

# errors
run 1 "missing grid" -- "$train" --grid "$scratch/none.fits" --setup toy_b --out "$scratch/lib"
expect_in err "none.fits.*cannot open the grid" "missing grid message"
run 1 "bad FLUX shape" -- "$train" --grid "$scratch/bad_shape.fits" --setup toy_b \
    --out "$scratch/lib" --force
expect_in err "HDU FLUX has shape" "shape message"
run 1 "no WAVE" -- "$train" --grid "$scratch/bad_nowave.fits" --setup toy_b --out "$scratch/lib"
expect_in err "no image HDU 'WAVE'" "missing WAVE message"
run 1 "negative flux" -- "$train" --grid "$scratch/bad_negflux.fits" --setup toy_b \
    --out "$scratch/lib"
expect_in err "spectrum 8, pixel 12 .*positive" "negative flux message"
run 1 "missing parameter column" -- "$train" --grid "$scratch/bad_noparam.fits" --setup toy_b \
    --out "$scratch/lib"
expect_in err "no column 'alpha'" "missing column message"
run 1 "missing output directory" -- "$train" --grid "$scratch/grid.fits" --setup toy_b \
    --out "$scratch/nodir"
expect_in err "does not exist or is not writable" "output directory message"
mkdir -p "$scratch/ro"
chmod a-w "$scratch/ro"
if ! touch "$scratch/ro/probe" 2>/dev/null; then
    run 1 "unwritable output" -- "$train" --grid "$scratch/grid.fits" --setup toy_b \
        --out "$scratch/ro"
    expect_in err "not writable" "unwritable output message"
else
    rm -f "$scratch/ro/probe" # running as root: permissions do not stop us
fi
chmod u+w "$scratch/ro"
run 1 "output is a file" -- "$train" --grid "$scratch/grid.fits" --setup toy_b \
    --out "$scratch/grid.fits"
expect_in err "does not exist or is not writable" "output-is-a-file message"
# shellcheck disable=SC2086
run 1 "existing library without --force" -- "$train" --grid "$scratch/grid.fits" \
    --out "$scratch/lib" $common --epochs 4 --checkpoint-every 2
expect_in err "exists; remove it or use --force" "existing file message"
# the failed write leaves the checkpoint of epoch 4; --resume continues from it
[ -f "$scratch/lib/.rvsfit-cl-train_toy_b.ckpt" ] || fail "no checkpoint after a failed write"
# shellcheck disable=SC2086
run 0 "resume" -- "$train" --grid "$scratch/grid.fits" --out "$scratch/lib" $common \
    --epochs 6 --resume --force
expect_in out "^epoch +5 " "resumed at epoch 5"
expect_not_in out "^epoch +4 " "resumed run repeats epoch 4"
[ -f "$scratch/lib/.rvsfit-cl-train_toy_b.ckpt" ] && fail "checkpoint left after success"
# the templates' LSF: unknown without a FWHM keyword in the grid (a warning says so); given
# with --lsf-sigma and --resolution-matrix-library (LSFRMAT = T)
expect_in err "LSF of the grid's spectra is not known" "unknown-LSF warning"
mkdir -p "$scratch/liblsf" "$scratch/libinit"
# shellcheck disable=SC2086
run 0 "training with a declared LSF" -- "$train" --grid "$scratch/grid.fits" \
    --out "$scratch/liblsf" $common --epochs 2 --lsf-sigma 0.5 --resolution-matrix-library
"$py" - "$scratch/liblsf/rvsfit_toy_b.fits" "$scratch/lib/rvsfit_toy_b.fits" <<'EOF_PY' ||
import sys
from astropy.io import fits
h = fits.getheader(sys.argv[1])
ok = h['RVSFVER'] == 2 and h['LSFTYPE'] == 'GAUSSIAN' and h['LSFSIG'] == 0.5 and h['LSFRMAT']
h0 = fits.getheader(sys.argv[2])
ok = ok and h0['LSFTYPE'] == 'UNKNOWN' and not h0['LSFRMAT']
# the grid has no rvsfit-cl-mkgrid physics keywords: the library has none either
ok = ok and 'VDWMODE' not in h0 and 'SAMPBRD' not in h0
sys.exit(0 if ok else 1)
EOF_PY
    fail "LSF keywords of the trained libraries"
# a grid that records rvsfit-cl-mkgrid's physics (VDWMODE, SAMPBRD): the library carries both
"$py" - "$scratch/grid.fits" "$scratch/gridphys.fits" <<'EOF_PY' || fail "writing the grid with physics keywords"
import sys
from astropy.io import fits
with fits.open(sys.argv[1]) as h:
    h[0].header['VDWMODE'] = 'abo-scaled'
    h[0].header['SAMPBRD'] = 0.3
    h.writeto(sys.argv[2], overwrite=True)
EOF_PY
mkdir -p "$scratch/libphys"
# shellcheck disable=SC2086
run 0 "training on a grid with physics keywords" -- "$train" --grid "$scratch/gridphys.fits" \
    --out "$scratch/libphys" $common --epochs 1
"$py" - "$scratch/libphys/rvsfit_toy_b.fits" <<'EOF_PY' || fail "VDWMODE/SAMPBRD carried into the library"
import sys
from astropy.io import fits
h = fits.getheader(sys.argv[1])
print('library VDWMODE', h.get('VDWMODE'), 'SAMPBRD', h.get('SAMPBRD'))
sys.exit(0 if h.get('VDWMODE') == 'abo-scaled' and h.get('SAMPBRD') == 0.3 else 1)
EOF_PY
run 1 "--resolution-matrix-library without an LSF" -- "$train" --grid "$scratch/grid.fits" \
    --out "$scratch/liblsf" $common --epochs 1 --force --resolution-matrix-library
expect_in err "needs the templates' LSF" "resolution-matrix library without LSF message"
# --init-from: the library's network is the starting point, exactly (no learning: lr 1e-30),
# so one epoch reproduces the library's held-out error
# shellcheck disable=SC2086
run 0 "--init-from" -- "$train" --grid "$scratch/grid.fits" --out "$scratch/libinit" $common \
    --epochs 1 --lr 1e-30 --init-from "$scratch/lib/rvsfit_toy_b.fits"
expect_in err "weights initialised from" "init message"
# (the held-out spectra are the same: same grid and seed; VALMED/VAL99 are fractions)
e1=$(sed -n 's/^emulation error on .*median \([0-9.]*\)%, 99th percentile \([0-9.]*\)%.*/\1 \2/p' \
    "$scratch/out")
"$py" - "$scratch/lib/rvsfit_toy_b.fits" $e1 <<'EOF_PY' ||
import sys
from astropy.io import fits
h = fits.getheader(sys.argv[1])
med, p99 = float(sys.argv[2]) / 100, float(sys.argv[3]) / 100
ok = abs(med / h['VALMED'] - 1) < 2e-3 and abs(p99 / h['VAL99'] - 1) < 2e-3
print('init-from: median %.6g p99 %.6g, library %.6g %.6g' % (med, p99, h['VALMED'], h['VAL99']))
sys.exit(0 if ok else 1)
EOF_PY
    fail "--init-from did not reproduce the library's held-out error"
run 1 "--init-from of another shape" -- "$train" --grid "$scratch/grid.fits" \
    --out "$scratch/libinit" $common --width 16 --epochs 1 --force \
    --init-from "$scratch/lib/rvsfit_toy_b.fits"
expect_in err "give the same --width" "init shape message"
run 2 "missing --out" -- "$train" --grid "$scratch/grid.fits" --setup toy_b
expect_in err "are required" "required options message"
run 2 "bad --width" -- "$train" --grid g --setup s --out o --width 0
run 2 "bad --val-frac" -- "$train" --grid g --setup s --out o --val-frac 1.5
run 2 "bad --loss" -- "$train" --grid g --setup s --out o --loss l3
expect_in err "invalid --loss 'l3'" "bad --loss message"
run 2 "bad --loss delta" -- "$train" --grid g --setup s --out o --loss l1l2:0
run 2 "bad --time-limit" -- "$train" --grid g --setup s --out o --time-limit -3
run 2 "unknown option" -- "$train" --frobnicate
run 1 "npc larger than the grid allows with --pca-init" -- "$train" \
    --grid "$scratch/grid.fits" --setup toy_b --out "$scratch/lib" --force --npc 500 \
    --pca-init --epochs 1
expect_in err "lower --npc" "PCA size message"
finish
