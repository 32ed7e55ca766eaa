#!/bin/sh
# test_profile.sh: rvsfit-cl --profile's device-work report (issue #7): the lines the man page
# documents, the "rvsfit-cl profile-data:" key=value lines benchmarks/bench-e2e reads, and the
# batching invariant seen from the command line.
#
# Invariant: every engine call costs the same fixed sequence of device commands whatever the
# number of requests in it (asserted exactly in tests/test_counters.c), so the commands per engine
# call of a batch must not depend on the batch size: fitting the same targets one per batch and
# all in one batch gives the same commands per engine call (within 10%: the mix of call kinds
# differs a little). And the lockstep fitter's batch of N costs about the commands of its
# slowest single target, not their sum: that ratio must stay <= 1.5.
#
# Cost: on PoCL two stars in arm b, fitted twice (~20 s on two cores); on a GPU all 10 stars of
# examples/, three arms, seconds.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

use_example

# value KEY FILE: KEY's value on the profile-data lines of FILE
value() {
    sed -n 's/^rvsfit-cl profile-data: //p' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}

# --- the report without a fit (an empty selection): every line, zero device work
run 0 "--profile, nothing selected" -- "$RVSFIT_CL" --profile --targetid 1 --no-subdirs \
    --output-dir empty "$example"
for pattern in "^rvsfit-cl profile: 1 file\(s\), 0 failed, 0 target\(s\) written" \
    "host   read spectra" "device fit \(all stages\)" "engine calls 0, model evaluations 0" \
    "device commands 0: kernel launches 0, GEMM calls 0, FFT transforms 0, buffer fills 0, buffer copies 0" \
    "per batch: no batch fitted" "transfers: 0 B to the device in 0 writes" \
    "device memory: peak 0 B in rvsfit-cl's buffers" "host peak RSS [0-9.]+ MiB" \
    "end to end [0-9.]+ s" "^rvsfit-cl profile-data: files=1 failed=0 targets=0 " \
    "^rvsfit-cl profile-data: rss_max_kib=[0-9]+ e2e_s=[0-9.]+ e2e_spectra_per_s="; do
    expect_in err "$pattern" "--profile line /$pattern/"
done
keys="files targets spectra wall_s open_s select_s read_s prepare_s write_s setup_s fit_s ccf_s
optimizer_s posterior_s hessian_s models_s engine_s upload_s engine_ccf_s engine_optimizer_s
engine_posterior_s engine_hessian_s engine_models_s engine_calls evaluations commands kernel_launches
gemm_calls fft_transforms fills copies batches batch_min batch_max batch_commands_min batch_commands_max
commands_per_call_min commands_per_call_max bytes_to_device bytes_from_device bytes_mapped
mem_peak mem_peak_total fft_work gemm_work_max rss_max_kib e2e_s e2e_spectra_per_s
eval_ccf eval_optimizer eval_posterior eval_hessian eval_models profile_scans"
for k in $keys; do
    [ -n "$(value "$k" "$scratch/err")" ] || fail "profile-data has no $k"
done

# --- the same targets one per batch and all in one batch
if "$RVSFIT_CL" --self-test 2>/dev/null | grep -q '\[CPU\]'; then
    printf '39627000002000210\n39627000004000274\n' > ids.txt
    n=2
    subset="--fitarm b --targetid-file-from ids.txt"
else
    n=10
    subset=""
fi
# shellcheck disable=SC2086
run 0 "one target per batch" -- "$RVSFIT_CL" --profile --batch-size 1 --no-subdirs \
    --output-dir one $subset "$example"
cp "$scratch/err" one.err
# shellcheck disable=SC2086
run 0 "all targets in one batch" -- "$RVSFIT_CL" --profile --batch-size "$n" --no-subdirs \
    --output-dir all $subset "$example"
cp "$scratch/err" all.err
sed -n 's/^  \(per batch: .*\)/one per batch:  \1/p' one.err
sed -n 's/^  \(per batch: .*\)/all in one:     \1/p' all.err

[ "$(value batches one.err)" = "$n" ] || fail "batch size 1: $(value batches one.err) batches"
[ "$(value batch_max one.err)" = 1 ] || fail "batch size 1: largest batch $(value batch_max one.err)"
[ "$(value batches all.err)" = 1 ] || fail "batch size $n: $(value batches all.err) batches"
[ "$(value batch_min all.err)" = "$n" ] || fail "batch size $n: batch of $(value batch_min all.err)"
for f in one.err all.err; do
    c=$(value commands $f) l=$(value kernel_launches $f) g=$(value gemm_calls $f)
    t=$(value fft_transforms $f) fl=$(value fills $f) cp=$(value copies $f)
    bmax=$(value batch_commands_max $f)
    [ "$c" -eq $((l + g + t + fl + cp)) ] || fail "$f: commands $c != $l + $g + $t + $fl + $cp"
    [ "$c" -ge "$bmax" ] && [ "$bmax" -gt 0 ] || fail "$f: batch commands $bmax, total $c"
    [ "$(value mem_peak $f)" -gt 0 ] || fail "$f: no device memory counted"
    # the evaluations per stage add up to all of them, and every stage of a fit has some
    ec=$(value eval_ccf $f) eo=$(value eval_optimizer $f) ep=$(value eval_posterior $f)
    eh=$(value eval_hessian $f) em=$(value eval_models $f)
    [ "$(value evaluations $f)" -eq $((ec + eo + ep + eh + em)) ] ||
        fail "$f: evaluations $(value evaluations $f) != $ec + $eo + $ep + $eh + $em by stage"
    [ "$eo" -gt 0 ] && [ "$eh" -gt 0 ] && [ "$ep" -gt 0 ] && [ "$em" -gt 0 ] ||
        fail "$f: a stage without evaluations: ccf $ec optimizer $eo posterior $ep hessian $eh models $em"
    # the engine's time is part of the fit's
    awk -v e="$(value engine_s $f)" -v t="$(value fit_s $f)" 'BEGIN { exit !(e > 0 && e <= t) }' ||
        fail "$f: engine time $(value engine_s $f) s not within the fit's $(value fit_s $f) s"
    # ... made of the stages' engine times, each within its stage's time
    for st in ccf optimizer posterior hessian models; do
        awk -v e="$(value engine_${st}_s $f)" -v t="$(value ${st}_s $f)" \
            'BEGIN { exit !(e >= 0 && e <= t + 1e-6) }' ||
            fail "$f: $st: $(value engine_${st}_s $f) s in the engine, $(value ${st}_s $f) s in all"
    done
    awk -v e="$(value engine_s $f)" -v a="$(value engine_ccf_s $f)" -v b="$(value engine_optimizer_s $f)" \
        -v c="$(value engine_posterior_s $f)" -v d="$(value engine_hessian_s $f)" \
        -v m="$(value engine_models_s $f)" 'BEGIN { s = a + b + c + d + m; exit !(s - e < 1e-5 && e - s < 1e-5) }' ||
        fail "$f: the stages' engine times do not add up to engine_s $(value engine_s $f)"
    [ "$(value bytes_to_device $f)" -gt 0 ] && [ "$(value bytes_from_device $f)" -gt 0 ] ||
        fail "$f: no transfers counted"
done

# commands per engine call: the same for both batch sizes
awk -v a1="$(value commands_per_call_min one.err)" -v b1="$(value commands_per_call_max one.err)" \
    -v a2="$(value commands_per_call_min all.err)" -v b2="$(value commands_per_call_max all.err)" \
    'BEGIN { ok = a1 > 0 && a2 >= 0.9 * a1 && b2 <= 1.1 * b1
             printf "commands per engine call: %.2f..%.2f one per batch, %.2f..%.2f all in one\n",
                    a1, b1, a2, b2
             exit !ok }' || fail "commands per engine call depend on the batch size"

# commands of the batch of n against its slowest single target
ratio=$(awk -v all="$(value batch_commands_max all.err)" -v one="$(value batch_commands_max one.err)" \
    'BEGIN { printf "%.2f", all / one }')
echo "commands of one batch of $n / of the costliest batch of 1: $ratio (ideal batching: ~1)"
awk -v r="$ratio" 'BEGIN { exit !(r <= 1.5) }' ||
    fail "a batch of $n costs $ratio x its costliest target's commands (want <= 1.5)"

finish
