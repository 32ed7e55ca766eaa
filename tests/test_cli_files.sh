#!/bin/sh
# test_cli_files.sh: rvsfit-cl's file loop (rvs_desi_fit's proc_many and proc_desi_wrapper):
# positional files and --input-file-from, a failing file between two good ones (the others
# written, exit 1, FAILURE in the status file), --throw-exceptions, --skipexisting (EXISTING,
# outputs untouched), --no-subdirs with prefixes, --queue-file shared by two processes at once,
# empty selections (no target selected, a --targetid not in the file) written as complete empty
# outputs that astropy reads with every column, --log, --profile and the summary figure of an
# empty selection.
# Every run here selects no target, so the fitter is never needed.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

use_example

# Inputs: symbolic links to the example coadd under two parent directories, a text file and a
# FITS file that is not a DESI coadd (the truth table) under DESI names.
mkdir -p in/grp/pix
for i in 1 3; do ln -s "$example" "in/grp/pix/coadd-$i.fits"; done
echo "not a FITS file" > in/grp/pix/coadd-2.fits
cp "$top_srcdir/examples/truth-main-bright-10000.fits" in/grp/pix/coadd-4.fits
good1="$scratch/in/grp/pix/coadd-1.fits"
bad2="$scratch/in/grp/pix/coadd-2.fits"
good3="$scratch/in/grp/pix/coadd-3.fits"
bad4="$scratch/in/grp/pix/coadd-4.fits"

# status_is FILE INPUT STATUS NOBJ: FILE has the line "INPUT STATUS NOBJ <seconds>"
status_is() {
    if ! grep -Eq "^$2 $3 $4 [0-9]+\.[0-9][0-9]$" "$1"; then
        fail "$1: no line '$2 $3 $4 <s>'; it has: $(cat "$1")"
    fi
}

# --- a failing file between two good ones
run 1 "three files, the middle one bad" -- "$RVSFIT_CL" --targetid 1 --output-dir res \
    --process-status-file status.txt "$good1" "$bad2" "$good3"
for i in 1 3; do
    for p in rvtab rvmod; do
        [ -f "res/grp/pix/${p}_coadd-$i.fits" ] || fail "res/grp/pix/${p}_coadd-$i.fits missing"
    done
done
ls res/grp/pix/*coadd-2* >/dev/null 2>&1 && fail "outputs written for the bad file"
ls res/grp/pix/ | grep -q tmp && fail "temporary files left: $(ls res/grp/pix)"
status_is status.txt "$good1" SUCCESS 0
status_is status.txt "$bad2" FAILURE 0
status_is status.txt "$good3" SUCCESS 0
[ "$(wc -l < status.txt)" -eq 3 ] || fail "status file has $(wc -l < status.txt) lines, not 3"
[ "$(head -n 1 status.txt | cut -d' ' -f1)" = "$good1" ] || fail "status lines out of order"
expect_in err "coadd-2.fits" "the bad file is named"
expect_in err "1 of 3 file\(s\) failed" "the failure count is reported"

# the status file is emptied at the start of a run
run 0 "one good file" -- "$RVSFIT_CL" --targetid 1 --output-dir res \
    --process_status_file status.txt "$good1"
[ "$(wc -l < status.txt)" -eq 1 ] || fail "status file not emptied: $(cat status.txt)"

# --- --throw-exceptions: stop at the bad file, after recording it
run 1 "--throw-exceptions" -- "$RVSFIT_CL" --targetid 1 --output-dir out-throw \
    --process-status-file status-throw.txt --throw-exceptions "$good1" "$bad2" "$good3"
[ -f out-throw/grp/pix/rvtab_coadd-1.fits ] || fail "--throw-exceptions: first file not written"
[ -f out-throw/grp/pix/rvtab_coadd-3.fits ] && fail "--throw-exceptions went past the failure"
status_is status-throw.txt "$bad2" FAILURE 0
grep -q coadd-3 status-throw.txt && fail "--throw-exceptions: third file recorded"
expect_in err "stopping at .*coadd-2.fits" "--throw-exceptions says where it stopped"

# --- --skipexisting: both outputs there -> EXISTING -1, files untouched
before=$(ls -l --time-style=+%s.%N res/grp/pix/rvtab_coadd-1.fits res/grp/pix/rvmod_coadd-1.fits)
sleep 1
run 0 "--skipexisting" -- "$RVSFIT_CL" --targetid 1 --output-dir res --skipexisting \
    --process-status-file status-skip.txt "$good1" "$good3"
grep -Eq "^$good1 EXISTING -1 0\.00$" status-skip.txt || fail "no EXISTING line: $(cat status-skip.txt)"
after=$(ls -l --time-style=+%s.%N res/grp/pix/rvtab_coadd-1.fits res/grp/pix/rvmod_coadd-1.fits)
[ "$before" = "$after" ] || fail "--skipexisting rewrote the outputs"
rm res/grp/pix/rvmod_coadd-3.fits
run 0 "--skipexisting with one output missing" -- "$RVSFIT_CL" --targetid 1 --output-dir res \
    --skipexisting --process-status-file status-skip.txt "$good3"
status_is status-skip.txt "$good3" SUCCESS 0
[ -f res/grp/pix/rvmod_coadd-3.fits ] || fail "a half-present pair was not rewritten"

# issue 19 item 6: --skipexisting verifies the pair it skips: a zero-byte rvtab, a truncated
# rvmod, an rvmod of another run, and outputs of an input that changed are fitted again
cp "$example" in/grp/pix/coadd-5.fits
good5="$scratch/in/grp/pix/coadd-5.fits"
run 0 "fifth input" -- "$RVSFIT_CL" --targetid 1 --output-dir res "$good5"
skip_redo() { # skip_redo WHAT MESSAGE: --skipexisting must fit again (SUCCESS) and say why
    run 0 "--skipexisting, $1" -- "$RVSFIT_CL" --targetid 1 --output-dir res --skipexisting \
        --process-status-file "status-$1.txt" "$good5"
    status_is "status-$1.txt" "$good5" SUCCESS 0
    expect_in err "$2" "--skipexisting, $1: the reason is given"
}
: >res/grp/pix/rvtab_coadd-5.fits
skip_redo zero-byte "rvtab_coadd-5.fits: not a readable FITS file"
head -c 20000 res/grp/pix/rvmod_coadd-5.fits >cut.fits && mv cut.fits res/grp/pix/rvmod_coadd-5.fits
skip_redo truncated "rvmod_coadd-5.fits: .*(truncated|incomplete|not a readable)"
cp res/grp/pix/rvmod_coadd-1.fits res/grp/pix/rvmod_coadd-5.fits
skip_redo other-run "come from different runs"
touch in/grp/pix/coadd-5.fits
skip_redo input-changed "the input changed since they were written"
run 0 "--skipexisting, a good pair" -- "$RVSFIT_CL" --targetid 1 --output-dir res --skipexisting \
    --process-status-file status-good5.txt "$good5"
grep -Eq "^$good5 EXISTING -1 0\.00$" status-good5.txt || fail "a verified pair was not skipped"

# issue 19 item 5: when the rvtab cannot be put in place after its rvmod was, the new rvmod is
# removed: no pair from two different runs is left (here the rvtab's name is a directory)
mkdir -p res5/grp/pix/rvtab_coadd-5.fits/x
run 1 "rvtab cannot be renamed" -- "$RVSFIT_CL" --targetid 1 --output-dir res5 "$good5"
[ -e res5/grp/pix/rvmod_coadd-5.fits ] && fail "an rvmod without its rvtab was left behind"
ls res5/grp/pix/.*.tmp >/dev/null 2>&1 && fail "temporary files left behind"

# --- --input-file-from, --no-subdirs, prefixes; a FITS file that is not a DESI file
printf '%s\n\n%s\n   \n%s\n' "$good1" "$bad4" "$good3" > list.txt
run 1 "--input-file-from" -- "$RVSFIT_CL" --minsn 1e30 --input-file-from list.txt \
    --output-dir flat --no-subdirs --output-tab-prefix T --output-mod-prefix M \
    --process-status-file status-list.txt
for f in T_coadd-1.fits M_coadd-1.fits T_coadd-3.fits M_coadd-3.fits; do
    [ -f "flat/$f" ] || fail "--no-subdirs/prefixes: flat/$f missing ($(ls flat))"
done
status_is status-list.txt "$bad4" FAILURE 0
[ "$(wc -l < status-list.txt)" -eq 3 ] || fail "the list's blank lines were not skipped"
expect_in err "coadd-4.fits.*FIBERMAP|FIBERMAP.*coadd-4.fits" "the non-DESI file's problem named"

# --- empty outputs are complete: every column, no rows (checked with astropy, which
# tools/install-deps installs: without it the test fails)
if "$python" -c 'import astropy, numpy' 2>"$scratch/import.err"; then
    for case in "targetid:res/grp/pix" "minsn:flat"; do
        dir=${case#*:}
        if [ "$dir" = flat ]; then t=flat/T_coadd-1.fits m=flat/M_coadd-1.fits
        else t=$dir/rvtab_coadd-1.fits m=$dir/rvmod_coadd-1.fits; fi
        run 0 "schema of the empty outputs (${case%%:*})" -- "$python" \
            "$top_srcdir/tests/check_output_schema.py" --schema "$top_srcdir/tests/output_schema.txt" \
            --input "$example" --tab "$t" --mod "$m" --rows '' \
            --header DEPNAM02=CLBlast --header DEPNAM03=clFFT --header TMPLCON0=desi_b \
            --header TMPLCON2=desi_z
    done
    run 0 "astropy reads the empty rvtab" -- "$python" -c '
import sys
import astropy.io.fits as fits
with fits.open(sys.argv[1]) as f:
    names = [h.name for h in f]
    assert names == ["PRIMARY", "RVTAB", "FIBERMAP", "SCORES", "EXP_FIBERMAP"], names
    assert len(f["RVTAB"].data) == 0 and len(f["FIBERMAP"].data) == 0
    cols = f["RVTAB"].columns.names
    for c in ["VRAD", "VRAD_ERR", "VSINI", "LOGG", "TEFF", "FEH", "ALPHAFE", "CHISQ_TOT",
              "RVS_WARN", "SUCCESS", "TARGETID", "SN_B", "RR_Z", "VRAD_CCF"]:
        assert c in cols, c
    print("ok", len(cols), "columns")
' res/grp/pix/rvtab_coadd-1.fits
    expect_in out "^ok" "astropy read the empty table"
else
    fail "$python cannot import astropy and numpy ($(tail -1 "$scratch/import.err")): the" \
        "empty outputs are not checked; run tools/install-deps (python3-astropy, python3-numpy)"
fi

# --- --queue-file shared by two processes started together
mkdir -p in/q/d
: > queue.txt
for i in $(seq 1 16); do
    ln -s "$example" "in/q/d/coadd-q$i.fits"
    echo "$scratch/in/q/d/coadd-q$i.fits" >> queue.txt
done
"$RVSFIT_CL" --targetid 1 --output-dir qout --queue-file=queue.txt \
    --process-status-file qstatus-a.txt 2> qerr-a.txt &
pid_a=$!
"$RVSFIT_CL" --targetid 1 --output-dir qout --input-file-from queue.txt --queue-file \
    --process-status-file qstatus-b.txt 2> qerr-b.txt &
pid_b=$!
wait $pid_a || fail "queue process A failed: $(cat qerr-a.txt)"
wait $pid_b || fail "queue process B failed: $(cat qerr-b.txt)"
[ -s queue.txt ] && fail "the queue is not empty at the end: $(cat queue.txt)"
cat qstatus-a.txt qstatus-b.txt | cut -d' ' -f1 | sort > qall.txt
[ "$(wc -l < qall.txt)" -eq 16 ] || fail "$(wc -l < qall.txt) files processed, not 16"
[ "$(sort -u qall.txt | wc -l)" -eq 16 ] || fail "a file was processed twice: $(uniq -d qall.txt)"
[ "$(ls qout/q/d/rvtab_* | wc -l)" -eq 16 ] || fail "not 16 tables written"
echo "queue: process A took $(wc -l < qstatus-a.txt) files, B $(wc -l < qstatus-b.txt)"
[ -s queue.txt.claims ] && fail "claims left after both workers finished: $(cat queue.txt.claims)"

# issue 19 item 8: an input taken by a worker that died (its claim in LIST.claims, its process
# gone) goes back to the queue and is fitted by the next worker, with a warning; nothing is lost
dead=$(sh -c 'echo $$')
echo "$scratch/in/q/d/coadd-q3.fits" > queue2.txt
echo "$dead $(uname -n) $scratch/in/q/d/coadd-q1.fits" > queue2.txt.claims
run 0 "a dead worker's input" -- "$RVSFIT_CL" --targetid 1 --output-dir qout2 \
    --queue-file=queue2.txt --process-status-file qstatus2.txt
expect_in err "coadd-q1.fits was taken by process $dead, which no longer runs: back in the queue" \
    "the lost input is named"
status_is qstatus2.txt "$scratch/in/q/d/coadd-q1.fits" SUCCESS 0
status_is qstatus2.txt "$scratch/in/q/d/coadd-q3.fits" SUCCESS 0
[ -s queue2.txt ] && fail "queue2 not empty: $(cat queue2.txt)"
[ -s queue2.txt.claims ] && fail "claims left: $(cat queue2.txt.claims)"

# --- --log, --profile, figures of a file without a selected target: its summary alone
if "$RVSFIT_CL" --version | grep -q "figures (--doplot): cairo"; then
    run 0 "--log and --profile" -- "$RVSFIT_CL" --targetid 1 --output-dir res --log run.log \
        --log-level INFO --profile --doplot --figure-dir figs "$good1"
    [ "$(ls figs/grp/pix)" = "fig_summary_coadd-1.png" ] ||
        fail "figures of an empty selection: $(ls -R figs), not the summary alone"
else
    run 0 "--log and --profile" -- "$RVSFIT_CL" --targetid 1 --output-dir res --log run.log \
        --log-level INFO --profile "$good1"
fi
grep -q "processing $good1" run.log || fail "INFO messages not in the log"
expect_in err "rvsfit-cl profile: 1 file" "--profile summary"
expect_in err "host   read spectra" "--profile host stages"
expect_in err "device fit" "--profile device stages"

# --- a template library that cannot be used: exit 1 before any file
run 1 "missing template library" -- "$RVSFIT_CL" --template-lib "$scratch/nolib" \
    --targetid 1 --output-dir res "$good1"
expect_in err "nolib" "the library directory is named"
# issue 19 item 13: the message names the option that exists (--template-lib), not --library
expect_in err "rvsfit-cl --template-lib" "the library message names --template-lib"
expect_not_in err "check --library" "no advice to use an option rvsfit-cl does not have"

# --- issue 19 item 2: a target whose SCORES S/N is NaN is not dropped without a word
"$python" - "$example" nan-sn.fits <<'EOF_PY' || fail "crafting the NaN-S/N file"
import sys
from astropy.io import fits
with fits.open(sys.argv[1]) as h:
    h['SCORES'].data['MEDIAN_COADD_SNR_B'][0] = float('nan')
    print(h['FIBERMAP'].data['TARGETID'][0])
    h.writeto(sys.argv[2], overwrite=True)
EOF_PY
nan_tid=$("$python" -c "from astropy.io import fits; print(fits.getdata('nan-sn.fits', 'FIBERMAP')['TARGETID'][0])")
run 0 "NaN S/N in SCORES" -- "$RVSFIT_CL" --targetid "$nan_tid" --output-dir res-nan nan-sn.fits
expect_in err "1 target\(s\) skipped because their S/N \(MEDIAN_COADD_SNR\) is NaN.*TARGETID $nan_tid" \
    "the NaN-S/N target is named"

# --- issue 19 item 3: a coadd without SCORES (S/N from the spectra) is written, not rejected after
# the fit; and (item 12) reordered SCORES rows are written with their own targets
"$python" - "$example" no-scores.fits scores-rev.fits <<'EOF_PY' || fail "crafting the SCORES files"
import sys
from astropy.io import fits
with fits.open(sys.argv[1]) as h:
    fits.HDUList([x for x in h if x.name != 'SCORES']).writeto(sys.argv[2], overwrite=True)
    h['SCORES'] = fits.BinTableHDU(h['SCORES'].data[::-1].copy(), name='SCORES',
                                   header=h['SCORES'].header)
    h.writeto(sys.argv[3], overwrite=True)
EOF_PY
tid2=$("$python" -c "from astropy.io import fits; print(fits.getdata('$example', 'FIBERMAP')['TARGETID'][2])")
run 0 "no SCORES" -- "$RVSFIT_CL" --targetid "$tid2" --output-dir res-noscores --no-subdirs no-scores.fits
run 0 "reversed SCORES" -- "$RVSFIT_CL" --targetid "$tid2" --output-dir res-screv --no-subdirs scores-rev.fits
"$python" - "$example" "$tid2" <<'EOF_PY' || fail "outputs of the SCORES variants"
import sys
import numpy as np
from astropy.io import fits
ex, tid = sys.argv[1], int(sys.argv[2])
ref = fits.getdata(ex, 'SCORES')
want = ref[list(fits.getdata(ex, 'FIBERMAP')['TARGETID']).index(tid)]
a = fits.open('res-noscores/rvtab_no-scores.fits')
ok = 'SCORES' not in [x.name for x in a] and len(a['RVTAB'].data) == 1
print('no SCORES: HDUs', [x.name for x in a], 'rows', len(a['RVTAB'].data))
b = fits.open('res-screv/rvtab_scores-rev.fits')
got = b['SCORES'].data
ok = ok and len(got) == 1 and got['TARGETID'][0] == tid
ok = ok and got['MEDIAN_COADD_SNR_B'][0] == want['MEDIAN_COADD_SNR_B']
ok = ok and np.isclose(b['RVTAB'].data['SN_B'][0], want['MEDIAN_COADD_SNR_B'])
print('reversed SCORES: TARGETID', got['TARGETID'][0], 'S/N', got['MEDIAN_COADD_SNR_B'][0],
      'want', want['MEDIAN_COADD_SNR_B'], 'SN_B', b['RVTAB'].data['SN_B'][0])
sys.exit(0 if ok else 1)
EOF_PY

# --- issue 19 item 7: temporaries of a process that no longer runs are removed by the next write
# of that name (a live process's are left alone); SIGTERM says it was interrupted, removes what it
# was writing and ends with the signal
dead=$(sh -c 'echo $$')
: >"res/grp/pix/.rvtab_coadd-1.fits.$dead.0.tmp"
: >"res/grp/pix/.rvtab_coadd-1.fits.$$.0.tmp"
run 0 "stale temporaries" -- "$RVSFIT_CL" --targetid 1 --output-dir res "$good1"
[ -e "res/grp/pix/.rvtab_coadd-1.fits.$dead.0.tmp" ] && fail "a dead process's temporary was left"
[ -e "res/grp/pix/.rvtab_coadd-1.fits.$$.0.tmp" ] || fail "a live process's temporary was removed"
rm -f "res/grp/pix/.rvtab_coadd-1.fits.$$.0.tmp"
"$RVSFIT_CL" --output-dir res-sig --process-status-file status-sig.txt "$good5" >sig.out 2>sig.err &
pid=$!
sleep 3
kill -TERM "$pid"
wait "$pid"
rc=$?
[ "$rc" -eq 143 ] || fail "SIGTERM: exit status $rc, expected 143 (128 + SIGTERM)"
grep -q "rvsfit-cl: interrupted while fitting .*coadd-5.fits" sig.err ||
    fail "SIGTERM: no message naming the input in hand: $(tail -3 sig.err)"
# the input in hand is recorded as failed, not lost (issue 20: mpirun ends the other ranks so)
status_is status-sig.txt "$good5" FAILURE 0
find res-sig -name '*.tmp' 2>/dev/null | grep -q . && fail "SIGTERM left temporary files"

# --- issue 19 item 4: with --no-subdirs, two inputs of the same name from different directories
# must not overwrite each other's outputs: the second is not fitted, and says why
mkdir -p other
cp "$example" other/coadd-1.fits
run 1 "same name twice with --no-subdirs" -- "$RVSFIT_CL" --targetid 1 --output-dir flat2 \
    --no-subdirs --process-status-file status-dup.txt "$good1" "$scratch/other/coadd-1.fits"
status_is status-dup.txt "$good1" SUCCESS 0
status_is status-dup.txt "$scratch/other/coadd-1.fits" FAILURE 0
expect_in err "would replace those of .*coadd-1.fits, fitted earlier in this run" \
    "the collision is named"

# --- issue 19 item 14: an output directory that cannot be made is found before the fit (the
# selected target is never fitted), and the next input is still processed
: >not-a-dir
run 1 "unwritable output directory" -- "$RVSFIT_CL" -v --targetid "$tid2" --output-dir not-a-dir/out \
    --no-subdirs --process-status-file status-unwr.txt "$good5"
expect_in err "not-a-dir" "the output directory is named"
expect_not_in err "targets in [0-9]+ batch" "nothing was fitted for an unwritable destination"
status_is status-unwr.txt "$good5" FAILURE 0

# --- issue 19 item 14: a NaN in one target's resolution matrix leaves that arm out of the fit;
# the target is flagged (RVS_WARN bit 128, SUCCESS false) and a warning says so
"$python" - "$example" nan-res.fits <<'EOF_PY' || fail "crafting the NaN-resolution file"
import sys
import numpy as np
from astropy.io import fits
with fits.open(sys.argv[1]) as h:
    h['B_RESOLUTION'].data[2, 5, 100] = np.nan
    h.writeto(sys.argv[2], overwrite=True)
EOF_PY
run 0 "NaN in a resolution matrix" -- "$RVSFIT_CL" --targetid "$tid2" --output-dir res-nanres \
    --no-subdirs nan-res.fits
expect_in err "1 arm\(s\) in this batch were left out of the fit because their resolution matrix" \
    "the dropped arm is reported"
"$python" - <<'EOF_PY' || fail "the target with the dropped arm is flagged"
from astropy.io import fits
r = fits.getdata('res-nanres/rvtab_nan-res.fits', 'RVTAB')
print('RVS_WARN', r['RVS_WARN'][0], 'SUCCESS', r['SUCCESS'][0], 'CHISQ_B', r['CHISQ_B'][0])
raise SystemExit(0 if (r['RVS_WARN'][0] & 128) and not r['SUCCESS'][0] else 1)
EOF_PY

# --- issue 19 item 14: an input whose data no longer match their DATASUM gives a warning naming
# the HDU (the fit goes on); an intact file gives none
"$python" - "$example" bad-sum.fits <<'EOF_PY' || fail "crafting the damaged-checksum file"
import sys
from astropy.io import fits
raw = bytearray(open(sys.argv[1], 'rb').read())
with fits.open(sys.argv[1]) as h:
    off = h.fileinfo(h.index_of('B_FLUX'))['datLoc']
raw[off + 1000] ^= 0x01
open(sys.argv[2], 'wb').write(bytes(raw))
EOF_PY
run 0 "damaged DATASUM" -- "$RVSFIT_CL" --targetid 1 --output-dir res-sum --no-subdirs bad-sum.fits
expect_in err "HDU B_FLUX does not match its DATASUM" "the damaged HDU is named"
run 0 "intact checksums" -- "$RVSFIT_CL" --targetid 1 --output-dir res-sum2 --no-subdirs "$example"
expect_not_in err "does not match its" "no checksum warning for an intact file"

finish
