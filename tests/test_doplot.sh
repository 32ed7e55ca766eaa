#!/bin/sh
# test_doplot.sh: rvsfit-cl --doplot (issue 22). The bundled example, fitted with --doplot, gets
# one PNG per fitted target named as rvs_desi_fit names them (<figure-dir>/<last two
# directories>/fig_<BRICKID>_<TARGETID>_<row>.png, the names computed here from the input's
# FIBERMAP and the rvtab's TARGETIDs) and one summary, nothing else; each decodes (our own
# decoder, tests/png_check.py) to the documented size and none is blank: per panel, black data,
# the red model and black residuals, masked points, the dichroic shaded, the posterior inset;
# the summary's markers, colour bar and bars. Then --no-subdirs and --figure-prefix, figure
# options without --doplot, and a figure directory that cannot be made (exit 1, outputs kept).
# A build without cairo must refuse --doplot with the way to get it, and write nothing.
# Skips (77) only without an OpenCL device.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device
py=${PYTHON3:-/usr/bin/python3}
check="$py $top_srcdir/tests/png_check.py"
RVSFIT_CL_DATADIR="$top_srcdir/data"
export RVSFIT_CL_DATADIR
cd "$scratch" || exit 1

# the example under two directories whose names the figures' directory takes
mkdir -p in/tiles/80605
ln -s "$top_srcdir/examples/coadd-main-bright-10000.fits" in/tiles/80605/
input="$scratch/in/tiles/80605/coadd-main-bright-10000.fits"

if "$RVSFIT_CL" --version | grep -q "figures (--doplot): not built"; then
    run 2 "--doplot without cairo" -- "$RVSFIT_CL" --doplot --figure-dir figs --output-dir res \
        "$input"
    expect_in err "built without cairo.*libcairo2-dev.*configure" "the message says how to get it"
    [ -e figs ] || [ -e res ] && fail "a build without cairo wrote something"
    finish
fi
size() { # NAME: the value of RVS_FIGURE_NAME in the public header
    sed -n "s/.*RVS_FIGURE_$1 = \([0-9]*\).*/\1/p" "$top_srcdir/include/rvsfit/figures.h"
}
tw=$(size TARGET_WIDTH) th=$(size TARGET_HEIGHT) sw=$(size SUMMARY_WIDTH) sh=$(size SUMMARY_HEIGHT)
[ -n "$tw" ] && [ -n "$th" ] && [ -n "$sw" ] && [ -n "$sh" ] ||
    fail "no figure sizes in include/rvsfit/figures.h"

# expected_names PREFIX RVTAB: the figure names of every row the rvtab holds
expected_names() {
    "$py" - "$input" "$2" "$1" <<'EOF'
import sys
from astropy.io import fits
inp, tab, prefix = sys.argv[1:4]
fm = fits.getdata(inp, 'FIBERMAP')
row_of = {int(t): i for i, t in enumerate(fm['TARGETID'])}
for t in fits.getdata(tab, 'RVTAB')['TARGETID']:
    i = row_of[int(t)]
    print('%s_%d_%d_%d.png' % (prefix, int(fm['BRICKID'][i]), int(t), i))
EOF
}

# --- the example, every target
start=$(date +%s)
run 0 "fit the example with --doplot" -- "$RVSFIT_CL" --doplot --figure-dir figs \
    --output-dir res --profile "$input"
echo "fit with --doplot: $(($(date +%s) - start)) s"
expect_in err "host   figures .* for 11 figure\(s\) \(0 failed\)" "--profile counts the figures"
figdir=figs/tiles/80605
tab=res/tiles/80605/rvtab_coadd-main-bright-10000.fits
[ -s "$tab" ] || fail "no rvtab written"
{ expected_names fig "$tab"; echo fig_summary_coadd-main-bright-10000.png; } | sort >want.txt
ls -A "$figdir" 2>/dev/null | sort >got.txt
[ "$(wc -l <want.txt)" -eq 11 ] || fail "expected 10 targets and a summary: $(cat want.txt)"
if ! cmp -s want.txt got.txt; then
    fail "the figure directory holds other files than expected"
    diff want.txt got.txt >&2
fi
$check target "$tw" "$th" "$figdir"/fig_3*.png >check.txt || {
    fail "target figures (above)"
    cat check.txt >&2
}
$check summary "$sw" "$sh" "$figdir"/fig_summary_coadd-main-bright-10000.png >>check.txt || {
    fail "summary (above)"
    cat check.txt >&2
}

# --- one target, --no-subdirs and a prefix of one's own
first=$("$py" -c "import sys; from astropy.io import fits; \
print(fits.getdata(sys.argv[1], 'FIBERMAP')['TARGETID'][3])" "$input")
run 0 "one target, --no-subdirs, --figure-prefix" -- "$RVSFIT_CL" --doplot --no-subdirs \
    --figure-dir figs2 --figure-prefix im --targetid "$first" --output-dir res2 "$input"
{ expected_names im res2/rvtab_coadd-main-bright-10000.fits
  echo im_summary_coadd-main-bright-10000.png; } | sort >want2.txt
ls -A figs2 2>/dev/null | sort >got2.txt
if ! cmp -s want2.txt got2.txt || [ "$(wc -l <got2.txt)" -ne 2 ]; then
    fail "--no-subdirs --figure-prefix im: other names than expected"
    diff want2.txt got2.txt >&2
fi
$check target "$tw" "$th" figs2/im_3*.png >check2.txt || {
    fail "the one target's figure (above)"
    cat check2.txt >&2
}

# --- figure options without --doplot: a warning, no figures (as rvs_desi_fit)
run 0 "--figure-dir without --doplot" -- "$RVSFIT_CL" --figure-dir figs3 --targetid 1 \
    --output-dir res3 "$input"
expect_in err "do nothing without --doplot" "figure options alone are warned about"
[ -e figs3 ] && fail "figures made without --doplot"

# --- figures that cannot be written: the outputs are, and the exit status says so
echo "not a directory" >blocker
run 1 "a figure directory that cannot be made" -- "$RVSFIT_CL" --doplot --figure-dir blocker \
    --targetid 1 --output-dir res4 "$input"
expect_in err "figure\(s\) could not be written" "lost figures are reported"
[ -s res4/tiles/80605/rvtab_coadd-main-bright-10000.fits ] ||
    fail "the outputs were not written because the figures could not be"

# --- a prefix with a directory in it is a usage error
run 2 "--figure-prefix with a /" -- "$RVSFIT_CL" --doplot --figure-prefix a/b "$input"
finish
