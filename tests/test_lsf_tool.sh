#!/bin/sh
# test_lsf_tool.sh: rvsfit-cl-lsf (doc/template-library.md §9) on copies of the bundled default
# library, a format-version-1 file: it prints "unknown"; --fwhm with --resolution-matrix-library
# upgrades it to version 2 with that LSF, which the tool and astropy read back, and keeps every
# provenance keyword, the network and the checksums; --sigma, --unknown and
# --no-resolution-matrix-library change only what they name; a crafted file keeps keywords, HISTORY
# cards and HDUs the library writer does not know, and its LSF table unless the LSF is replaced;
# usage errors exit 2, a missing or damaged file exits 1 without touching it while the other
# files are still processed. With rvspecfit's fixture (shared/data), files converted by rvs-import
# read back with the LSF of each --lsf option, and rvs-import's LSF cards are those the C writer
# writes, byte for byte. No OpenCL device is needed; numpy and astropy are (tools/install-deps).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

lsf=${RVSFIT_CL_LSF:-$top_builddir/rvsfit-cl-lsf}
py=${PYTHON3:-/usr/bin/python3}
default_b="$top_srcdir/data/default/rvsfit_desi_b.fits"
if [ ! -x "$lsf" ]; then
    echo "FAIL: $lsf was not built" >&2
    exit 1
fi
if ! "$py" -c 'import numpy, astropy' 2>"$scratch/import.err"; then
    fail "$py cannot import numpy and astropy ($(tail -1 "$scratch/import.err")):" \
        "run tools/install-deps (python3-numpy, python3-astropy)"
    finish
fi

# The bundled library is version 2; a version-1 file is made from it once: the LSF keywords
# removed, RVSFVER = 1, checksums rewritten (what the library was before issue 16).
v1_b="$scratch/v1-source/rvsfit_desi_b.fits"
mkdir -p "$scratch/v1-source"
"$py" - "$default_b" "$v1_b" <<'EOF_PY' || fail "making a version-1 copy of $default_b"
import sys
from astropy.io import fits
with fits.open(sys.argv[1]) as h:
    for key in ('LSFTYPE', 'LSFSIG', 'LSFRMAT'):
        if key in h[0].header:
            del h[0].header[key]
    h[0].header['RVSFVER'] = 1
    if 'HISTORY' in h[0].header:  # rvsfit-cl-lsf's own record of the upgrade
        del h[0].header['HISTORY']
    h.writeto(sys.argv[2], checksum=True)
EOF_PY

# fresh NAME: a writable version-1 copy of the default desi_b file in $scratch/NAME; prints its
# path.
fresh() {
    mkdir -p "$scratch/$1"
    cp "$v1_b" "$scratch/$1/rvsfit_desi_b.fits"
    chmod 644 "$scratch/$1/rvsfit_desi_b.fits"
    echo "$scratch/$1/rvsfit_desi_b.fits"
}

# pycheck WHAT SCRIPT ARG...: runs a Python check (tests/ is on its path, library_ref's check()
# and finish() report); its output goes to the log, a failure fails the test.
pycheck() {
    what=$1
    script=$2
    shift 2
    if ! "$py" -c "import sys; sys.path.insert(0, '$top_srcdir/tests'); $script" "$@" \
        >"$scratch/py.out" 2>&1; then
        fail "$what: $(cat "$scratch/py.out")"
    else
        grep -v '^all checks passed' "$scratch/py.out"
    fi
}

# The header and data of two files agree except for what a rewrite changes (the format version,
# the LSF, DATE, checksums, HISTORY, the long-string convention's LONGSTRN and comments, an LSF
# table): every provenance keyword (VALMED, VAL99, NTRAIN, NVALID, NEPOCH, TRAINCMD, ...) kept.
SAME_EXCEPT_LSF='
import numpy as np
from astropy.io import fits
from library_ref import check, checksums_ok, finish
old, new = sys.argv[1], sys.argv[2]
skip = {"DATE", "CHECKSUM", "DATASUM", "RVSFVER", "LSFTYPE", "LSFSIG", "LSFRMAT", "LONGSTRN",
        "COMMENT", "HISTORY"}
check(checksums_ok(new), new + ": checksums do not verify")
with fits.open(old) as a, fits.open(new) as b:
    na = [h.name for h in a if h.name != "LSF"]
    nb = [h.name for h in b if h.name != "LSF"]
    check(na == nb, "HDUs %r became %r" % (na, nb))
    kept = []
    for x in a:
        if x.name == "LSF" or x.name not in nb:
            continue
        y = b[x.name]
        for k in x.header:
            if k in skip:
                continue
            if check(k in y.header, "%s: keyword %s lost" % (x.name, k)):
                check(x.header[k] == y.header[k], "%s: %s = %r became %r"
                      % (x.name, k, x.header[k], y.header[k]))
                if x.name == "PRIMARY":
                    kept.append(k)
        if x.data is None:
            continue
        if hasattr(x.data, "columns"):
            for c in x.data.columns.names:
                u, v = x.data[c], y.data[c]
                if u.dtype.kind in "US":  # padding: NUL (astropy), blank (cfitsio)
                    u = [str(e).rstrip() for e in u]
                    v = [str(e).rstrip() for e in v]
                check(np.array_equal(u, v), "%s: column %s changed" % (x.name, c))
        else:
            check(x.data.tobytes() == y.data.tobytes(), x.name + ": data changed")
    for k in ("VALMED", "VAL99", "NTRAIN", "NVALID", "NEPOCH", "TRAINCMD", "TRNLOSS", "LIBREV"):
        if k in a[0].header:
            check(k in kept, k + " not kept")
    print("kept %d primary keywords: %s" % (len(kept), " ".join(kept)))
finish()
'

# The primary header says LSF (type, sigma, LSFRMAT) and RVSFVER as expected.
HEADER_LSF='
from astropy.io import fits
from library_ref import check, finish
path, version, lsftype, sigma, rmat = sys.argv[1:6]
h = fits.getheader(path)
check(h.get("RVSFVER") == int(version), "%s: RVSFVER = %r" % (path, h.get("RVSFVER")))
check(h.get("LSFTYPE") == lsftype, "%s: LSFTYPE = %r" % (path, h.get("LSFTYPE")))
if sigma == "none":
    check("LSFSIG" not in h, path + ": LSFSIG present")
else:
    check(h.get("LSFSIG") == float("%.12g" % eval(sigma)), "%s: LSFSIG = %r, expected %r"
          % (path, h.get("LSFSIG"), float("%.12g" % eval(sigma))))
check(h.get("LSFRMAT") is (rmat == "T"), "%s: LSFRMAT = %r" % (path, h.get("LSFRMAT")))
print("%s: RVSFVER %s LSFTYPE %s LSFSIG %r LSFRMAT %s" % (path.split("/")[-2], h.get("RVSFVER"),
      h.get("LSFTYPE"), h.get("LSFSIG"), h.get("LSFRMAT")))
finish()
'
FWHM=2.3548200450309493
# what the tool prints for the LSFs used below (extended regular expressions)
V1="format version 1, LSF unknown, LSFRMAT F"
G155="LSF Gaussian sigma 0.6582 A \(FWHM 1.55 A\)"
G18="LSF Gaussian sigma 0.7644 A \(FWHM 1.8 A\)"
G05="LSF Gaussian sigma 0.5 A \(FWHM 1.177 A\)"

# ---- --help, --version
run 0 "--help" -- "$lsf" --help
expect_in out "^Usage: rvsfit-cl-lsf" "--help usage line"
expect_in out "--resolution-matrix-library" "--help lists the options"
expect_in out "^Exit status:" "--help states the exit status"
run 0 "--version" -- "$lsf" --version
expect_in out "^rvsfit-cl-lsf \(rvsfit-cl\) " "--version"

# ---- a version-1 file prints as unknown, and printing leaves it alone
v1=$(fresh v1)
cp "$v1" "$scratch/v1.orig"
run 0 "print a version-1 file" -- "$lsf" "$v1"
expect_in out "^$v1: setup desi_b, $V1$" "version-1 line"
cmp -s "$v1" "$scratch/v1.orig" || fail "printing changed the file"
cat "$scratch/out"

# ---- --fwhm with --resolution-matrix-library: upgraded to version 2 with that LSF
chmod 640 "$v1"
run 0 "set --fwhm 1.55 --resolution-matrix-library" -- "$lsf" -v --fwhm 1.55 \
    --resolution-matrix-library "$v1"
expect_in out "^$v1: setup desi_b, format version 2, $G155, LSFRMAT T \(was: $V1\)$" "set line"
cat "$scratch/out"
# what the library writer left out and the tool copied from the old file (none of it provenance)
grep "kept from the old file" "$scratch/err" || echo "(the writer kept every keyword and HDU)"
[ "$(stat -c %a "$v1")" = 640 ] || fail "the file's mode became $(stat -c %a "$v1"), expected 640"
run 0 "print after setting" -- "$lsf" "$v1"
expect_in out "^$v1: setup desi_b, format version 2, $G155, LSFRMAT T$" "reloaded LSF"
pycheck "header after --fwhm 1.55" "$HEADER_LSF" "$v1" 2 GAUSSIAN "1.55/$FWHM" T
pycheck "provenance after --fwhm 1.55" "$SAME_EXCEPT_LSF" "$scratch/v1.orig" "$v1"
pycheck "HISTORY card" '
from astropy.io import fits
h = fits.getheader(sys.argv[1])
hist = " ".join(str(c) for c in h.get("HISTORY", []))
assert "rvsfit-cl-lsf" in hist and "was format version 1, LSF unknown" in hist, hist
print("HISTORY: " + hist)' "$v1"

# the same LSF again: nothing to do, the file is not rewritten
cp "$v1" "$scratch/v1.set"
run 0 "the same LSF again" -- "$lsf" --fwhm 1.55 "$v1"
expect_in out "LSFRMAT T \(unchanged\)$" "unchanged line"
cmp -s "$v1" "$scratch/v1.set" || fail "an unchanged LSF rewrote the file"

# --sigma keeps LSFRMAT; --no-resolution-matrix-library keeps the LSF
run 0 "set --sigma 0.5" -- "$lsf" --sigma 0.5 "$v1"
expect_in out "$G05, LSFRMAT T \(was: format version 2, $G155, LSFRMAT T\)$" "--sigma line"
run 0 "set --no-resolution-matrix-library" -- "$lsf" --no-resolution-matrix-library "$v1"
expect_in out "$G05, LSFRMAT F \(was: " "--no-rmat line"
pycheck "header after --no-resolution-matrix-library" "$HEADER_LSF" "$v1" 2 GAUSSIAN 0.5 F

# --resolution-matrix-library on an unknown LSF: refused, file untouched
v1u=$(fresh v1u)
run 1 "--resolution-matrix-library on an unknown LSF" -- "$lsf" --resolution-matrix-library "$v1u"
expect_in err "needs a known LSF" "unknown + rmat message"
expect_in err "give --fwhm F or --sigma S" "unknown + rmat: what to do"
cmp -s "$v1u" "$scratch/v1.orig" || fail "a refused file was changed"
# --unknown upgrades a version-1 file and keeps it unknown; on a T file it clears LSFRMAT
run 0 "--unknown on a version-1 file" -- "$lsf" --unknown "$v1u"
expect_in out "format version 2, LSF unknown, LSFRMAT F \(was: $V1\)$" \
    "version-1 upgrade with --unknown"
pycheck "header after --unknown" "$HEADER_LSF" "$v1u" 2 UNKNOWN none F
run 0 "back to a Gaussian, T" -- "$lsf" --sigma 0.6 --resolution-matrix-library "$v1u"
run 0 "--unknown on a T file" -- "$lsf" --unknown "$v1u"
expect_in out "LSF unknown, LSFRMAT F \(was: format version 2, LSF Gaussian sigma 0.6 A \(FWHM \
1.413 A\), LSFRMAT T\)$" "--unknown clears LSFRMAT"
pycheck "header after --unknown on a T file" "$HEADER_LSF" "$v1u" 2 UNKNOWN none F
pycheck "provenance after four rewrites" "$SAME_EXCEPT_LSF" "$scratch/v1.orig" "$v1u"

# ---- usage errors: exit 2, a message and the way to --help, nothing touched
u=$(fresh usage)
for args in "" "--bogus $u" "--fwhm abc $u" "--fwhm 0 $u" "--fwhm=-1.5 $u" "--sigma 100 $u" \
    "--sigma nan $u" "--fwhm 1 --sigma 1 $u" "--unknown --fwhm 2 $u" \
    "--unknown --resolution-matrix-library $u" "--log-level LOUD $u" "$u --fwhm"; do
    # shellcheck disable=SC2086 # the arguments are meant to split
    run 2 "usage error '$args'" -- "$lsf" $args
    expect_in err "^rvsfit-cl-lsf: " "usage error '$args': message"
    expect_in err "Try 'rvsfit-cl-lsf --help'" "usage error '$args': hint"
    echo "usage error '$args': $(head -1 "$scratch/err")"
done
cmp -s "$u" "$scratch/v1.orig" || fail "a usage error changed the file"

# ---- a missing file: exit 1, the others are still processed
m=$(fresh missing)
run 1 "print a missing file and a good one" -- "$lsf" "$scratch/nowhere/rvsfit_desi_b.fits" "$m"
expect_in err "nowhere/rvsfit_desi_b.fits" "missing file named"
expect_in out "^$m: setup desi_b, format version 1" "the good file after the missing one"
run 1 "set on a missing file and a good one" -- "$lsf" --sigma 0.7 \
    "$scratch/nowhere/rvsfit_desi_b.fits" "$m"
expect_in err "nowhere/rvsfit_desi_b.fits" "missing file named (set)"
expect_in out "^$m: setup desi_b, format version 2, LSF Gaussian sigma 0.7 A" \
    "the good file is set after the missing one"
run 1 "not a library file name" -- "$lsf" "$default_b" "$top_srcdir/README.md"
expect_in out "format version 2, LSF Gaussian sigma 0.6582 A \\(FWHM 1.55 A\\), LSFRMAT T" \
    "the default library still prints"

# ---- a damaged file (one flipped byte in PC_W): refused, left as it was, no temporary files
d=$(fresh damaged)
"$py" -c "
import sys
from astropy.io import fits
with fits.open(sys.argv[1]) as f:
    where = f['PC_W'].fileinfo()['datLoc'] + 1000
with open(sys.argv[1], 'r+b') as fh:
    fh.seek(where)
    b = fh.read(1)
    fh.seek(where)
    fh.write(bytes([b[0] ^ 0x40]))" "$d" || fail "could not damage the copy"
cp "$d" "$scratch/damaged.orig"
run 1 "set on a damaged file" -- "$lsf" --fwhm 1.8 "$d"
expect_in err "DATASUM does not match" "damaged file: the loader's message"
expect_in err "left as it was" "damaged file: the tool says the file was not touched"
cmp -s "$d" "$scratch/damaged.orig" || fail "a damaged file was changed"
for dir in v1 v1u usage missing damaged; do
    left=$(ls -A "$scratch/$dir" | grep -v '^rvsfit_desi_b.fits$')
    [ -z "$left" ] || fail "$dir: temporary files left: $left"
done

# ---- a symbolic link stays a link; the file it points to is rewritten
mkdir -p "$scratch/link"
ln -s "$scratch/missing/rvsfit_desi_b.fits" "$scratch/link/rvsfit_desi_b.fits"
run 0 "set through a symbolic link" -- "$lsf" --sigma 0.65 "$scratch/link/rvsfit_desi_b.fits"
[ -L "$scratch/link/rvsfit_desi_b.fits" ] || fail "the symbolic link was replaced by a file"
run 0 "print the link's target" -- "$lsf" "$scratch/missing/rvsfit_desi_b.fits"
expect_in out "LSF Gaussian sigma 0.65 A" "the link's target rewritten"

# ---- what the writer does not know is kept: keywords, HISTORY, extra HDUs, the LSF table
c=$(fresh crafted)
"$py" -c "
import sys
import numpy as np
from astropy.io import fits
with fits.open(sys.argv[1]) as f:
    h = fits.HDUList([x.copy() for x in f])
hd = h[0].header
hd['RVSFVER'] = 2
hd.set('LSFTYPE', 'GAUSSIAN', 'line-spread function of the templates', after='HULLSPC')
hd.set('LSFSIG', 0.6, '[Angstrom] its Gaussian sigma (table: median)', after='LSFTYPE')
hd.set('LSFRMAT', False, 'made for the resolution-matrix fit', after='LSFSIG')
hd['MYNOTE'] = ('made by hand', 'a note of the user')
hd['MYLONG'] = 'abc' * 50
hd['MYNUM'] = (3.25, 'a number')
hd['HISTORY'] = 'an earlier step'
h['WAVE'].header['WNOTE'] = 'a note on WAVE'
h.append(fits.BinTableHDU.from_columns(
    [fits.Column(name='A', format='D', array=np.arange(3.0))], name='NOTES'))
h.append(fits.BinTableHDU.from_columns(
    [fits.Column(name='WAVE', format='D', unit='Angstrom', array=[3500.0, 4500.0, 6000.0]),
     fits.Column(name='SIGMA', format='D', unit='Angstrom', array=[0.55, 0.6, 0.7])],
    name='LSF'))
h.writeto(sys.argv[1], overwrite=True, checksum=True)" "$c" || fail "could not craft the file"
cp "$c" "$scratch/crafted.orig"
run 0 "print a file with an LSF table" -- "$lsf" "$c"
expect_in out "format version 2, LSF Gaussian sigma 0.55-0.7 A \(table of 3 nodes\), LSFRMAT F$" \
    "LSF table printed"
run 0 "--resolution-matrix-library keeps the table" -- "$lsf" -v --resolution-matrix-library "$c"
expect_in out "LSF Gaussian sigma 0.55-0.7 A \(table of 3 nodes\), LSFRMAT T \(was: " \
    "table kept"
expect_in err "what the library writer does not write: .*MYNOTE, MYLONG, MYNUM, HISTORY, \
WAVE:WNOTE, HDU NOTES" "the carried keywords and HDUs named"
KEPT='
import numpy as np
from astropy.io import fits
from library_ref import check, checksums_ok, finish, read_lsf
old, new, table = sys.argv[1], sys.argv[2], sys.argv[3] == "table"
check(checksums_ok(new), new + ": checksums")
with fits.open(old) as a, fits.open(new) as b:
    for k in ("MYNOTE", "MYLONG", "MYNUM"):
        check(b[0].header.get(k) == a[0].header[k], "%s: %r" % (k, b[0].header.get(k)))
        check(b[0].header.comments[k] == a[0].header.comments[k], k + " comment")
    check(b["WAVE"].header.get("WNOTE") == "a note on WAVE", "WAVE WNOTE")
    hist = [str(c) for c in b[0].header["HISTORY"]]
    check(hist[0] == "an earlier step" and any("rvsfit-cl-lsf" in x for x in hist[1:]),
          "HISTORY %r" % hist)
    check("NOTES" in b and np.array_equal(b["NOTES"].data["A"], [0, 1, 2]), "NOTES HDU")
    check(("LSF" in b) == table, "LSF table present: %s" % ("LSF" in b))
lsf = read_lsf(new)
if table:
    check(np.array_equal(lsf["table"][0], [3500, 4500, 6000])
          and np.array_equal(lsf["table"][1], [0.55, 0.6, 0.7]), "LSF table %r" % (lsf["table"],))
print("kept MYNOTE, MYLONG, MYNUM, WAVE:WNOTE, HISTORY, NOTES%s; LSF %s sigma %r LSFRMAT %s"
      % (", LSF table" if table else "", lsf["type"], lsf["sigma"], lsf["rmat"]))
finish()
'
pycheck "crafted file after --resolution-matrix-library" "$KEPT" "$scratch/crafted.orig" "$c" table
pycheck "crafted file: network and provenance" "$SAME_EXCEPT_LSF" "$scratch/crafted.orig" "$c"
run 0 "--fwhm replaces the table" -- "$lsf" --fwhm 2 "$c"
expect_in out "LSF Gaussian sigma 0.8493 A \(FWHM 2 A\), LSFRMAT T \(was: " "table replaced"
pycheck "crafted file after --fwhm 2" "$KEPT" "$scratch/crafted.orig" "$c" notable
pycheck "header after --fwhm 2" "$HEADER_LSF" "$c" 2 GAUSSIAN "2/$FWHM" T

# ---- rvs-import's files through the C loader (needs rvspecfit's fixture, as test_rvs_import)
fixture=
for dir in "${RVSFIT_TEST_DATA:-}" "$top_srcdir/../shared/data" "$top_srcdir/../../shared/data"; do
    if [ -n "$dir" ] && [ -f "$dir/rvspecfit-templ/reference_evals.fits" ]; then
        fixture="$dir/rvspecfit-templ"
        break
    fi
done
rvs_import="$top_builddir/tools/rvs-import"
if [ -z "$fixture" ]; then
    echo "NOTE: rvspecfit's fixture (shared/data/rvspecfit-templ) not found: rvs-import's files" \
        "are not read back here (tests/test_rvs_import.sh checks them with astropy)"
elif ! "$py" -c 'import h5py' 2>/dev/null; then
    fail "$py cannot import h5py, which rvs-import needs: run tools/install-deps"
else
    for opt in desi resolution-matrix; do
        mkdir -p "$scratch/import-$opt"
        run 0 "rvs-import --lsf $opt" -- "$rvs_import" --lsf "$opt" "$fixture" \
            "$scratch/import-$opt"
        run 0 "read back rvs-import --lsf $opt" -- "$lsf" "$scratch/import-$opt"/rvsfit_desi_*.fits
        cat "$scratch/out"
    done
    i="$scratch/import-desi"
    expect_in out "rvsfit_desi_b.fits: setup desi_b, format version 2, $G05, LSFRMAT T$" \
        "--lsf resolution-matrix read back"
    run 0 "read back rvs-import --lsf desi" -- "$lsf" "$i"/rvsfit_desi_*.fits
    expect_in out "rvsfit_desi_b.fits: setup desi_b, format version 2, $G155, LSFRMAT F$" \
        "--lsf desi: desi_b"
    expect_in out "rvsfit_desi_r.fits: setup desi_r, format version 2, $G155, LSFRMAT F$" \
        "--lsf desi: desi_r"
    expect_in out "rvsfit_desi_z.fits: setup desi_z, format version 2, $G18, LSFRMAT F$" \
        "--lsf desi: desi_z"
    # the FWHM the C tool computes equals the one rvs-import recorded (both keep 12 digits)
    run 0 "--fwhm of rvs-import's own LSF" -- "$lsf" --fwhm 1.8 "$i/rvsfit_desi_z.fits"
    expect_in out "\(unchanged\)$" "--fwhm 1.8 on rvs-import's desi_z is no change"
    # rvs-import's LSF cards are the C writer's, byte for byte: the same LSF written by each
    mkdir -p "$scratch/import-sigma"
    run 0 "rvs-import --lsf-sigma 0.658" -- "$rvs_import" --lsf-sigma 0.658 --setup desi_b \
        "$fixture" "$scratch/import-sigma"
    run 0 "rewrite with the C writer" -- "$lsf" --fwhm 1.55 --resolution-matrix-library \
        "$scratch/import-sigma/rvsfit_desi_b.fits"
    mkdir -p "$scratch/import-rmat"
    run 0 "rvs-import --lsf-sigma with --resolution-matrix-library" -- "$rvs_import" \
        --lsf-sigma "$("$py" -c "print(1.55 / $FWHM)")" --resolution-matrix-library \
        --setup desi_b "$fixture" "$scratch/import-rmat"
    pycheck "LSF cards of rvs-import and of the C writer" '
from library_ref import check, finish
def cards(path):
    with open(path, "rb") as fh:
        raw = fh.read(2880 * 4).decode("ascii", "replace")
    c = [raw[i:i + 80] for i in range(0, len(raw), 80)]
    i = next(k for k, x in enumerate(c) if x.startswith("HULLSPC "))
    return c[i:i + 5]
a, b = cards(sys.argv[1]), cards(sys.argv[2])
check(a == b, "rvs-import %r\n C writer %r" % (a, b))
print("\n".join(a))
finish()' "$scratch/import-rmat/rvsfit_desi_b.fits" "$scratch/import-sigma/rvsfit_desi_b.fits"
fi

finish
