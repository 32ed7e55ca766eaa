#!/bin/sh
# test_device_select.sh: every --device form, the RVSFIT_CL_DEVICE default, bad forms (message
# and exit code 3), and the no-platform message.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device

run 0 "--list-devices" -- "$RVSFIT_CL" --list-devices
expect_in out '^index +P:D +platform +device +type +OpenCL +global mem +CUs +fp64' "list header"
expect_in out '^0 +0:0 ' "device 0 listed"
cp "$scratch/out" "$scratch/list"
ndev=$(($(wc -l <"$scratch/list") - 1))

# Properties of device 0 and the first CPU, read back through the self-test report.
first_cpu=$(awk 'NR > 1 && / CPU / {print $1; exit}' "$scratch/list")
first_gpu=$(awk 'NR > 1 && / GPU / {print $1; exit}' "$scratch/list")

selected() { sed -n 's/^device: \([0-9]*\) .*/\1/p' "$scratch/out"; }

run 0 "--device 0" -- "$RVSFIT_CL" --device 0 --self-test
[ "$(selected)" = 0 ] || fail "--device 0 selected $(selected)"
expect_in out '^self-test: passed' "self-test passes on device 0"

run 0 "--device 0:0" -- "$RVSFIT_CL" --device 0:0 --self-test
[ "$(selected)" = 0 ] || fail "--device 0:0 selected $(selected)"

if [ -n "$first_cpu" ]; then
    run 0 "--device cpu" -- "$RVSFIT_CL" --device cpu --self-test
    [ "$(selected)" = "$first_cpu" ] || fail "--device cpu selected $(selected), want $first_cpu"
    run 0 "--device CPU (case)" -- "$RVSFIT_CL" --device CPU --self-test
    [ "$(selected)" = "$first_cpu" ] || fail "--device CPU selected $(selected)"
    # a name substring, in other case: the first six letters of the CPU's device name
    cpu_name=$(sed -n 's/^device: [0-9]* ([0-9:]*) \(.*\) \[CPU\] on .*/\1/p' "$scratch/out")
    sub=$(printf '%s' "$cpu_name" | cut -c1-6 | tr '[:lower:]' '[:upper:]')
    plat=$(sed -n 's/^device: .* \[CPU\] on \([^ ]*\).*/\1/p' "$scratch/out")
    run 0 "--device name substring $sub" -- "$RVSFIT_CL" --device "$sub" --self-test
    [ "$(selected)" = "$first_cpu" ] || fail "--device $sub selected $(selected)"
    # platform name substring : device type
    pd=$(awk -v i="$first_cpu" 'NR > 1 && $1 == i {print $2; exit}' "$scratch/list")
    run 0 "--device P:D of the CPU ($pd)" -- "$RVSFIT_CL" --device "$pd" --self-test
    [ "$(selected)" = "$first_cpu" ] || fail "--device $pd selected $(selected)"
    run 0 "--device $plat:cpu" -- "$RVSFIT_CL" --device "$plat:cpu" --self-test
    [ "$(selected)" = "$first_cpu" ] || fail "--device $plat:cpu selected $(selected)"
fi

if [ -n "$first_gpu" ]; then
    run 0 "--device gpu" -- "$RVSFIT_CL" --device gpu --self-test
    [ "$(selected)" = "$first_gpu" ] || fail "--device gpu selected $(selected)"
    default_want=$first_gpu
else
    # no GPU here: asking for one is fatal, never a silent fallback to the CPU
    run 3 "--device gpu without a GPU" -- "$RVSFIT_CL" --device gpu --self-test
    expect_in err "matches none of the $ndev OpenCL device" "gpu request explained"
    expect_in err "--list-devices" "message says how to see the devices"
    default_want=$first_cpu
fi

# the default: first GPU, else first CPU; RVSFIT_CL_DEVICE overrides it
run 0 "default device" -- env -u RVSFIT_CL_DEVICE "$RVSFIT_CL" --self-test
[ "$(selected)" = "$default_want" ] || fail "default selected $(selected), want $default_want"
last=$((ndev - 1))
run 0 "RVSFIT_CL_DEVICE=$last" -- env RVSFIT_CL_DEVICE="$last" "$RVSFIT_CL" --self-test
[ "$(selected)" = "$last" ] || fail "RVSFIT_CL_DEVICE=$last selected $(selected)"
run 3 "bad RVSFIT_CL_DEVICE" -- env RVSFIT_CL_DEVICE=nosuchdevice "$RVSFIT_CL" --self-test
expect_in err "RVSFIT_CL_DEVICE 'nosuchdevice' matches none" "environment named in the message"
run 0 "--device beats RVSFIT_CL_DEVICE" -- env RVSFIT_CL_DEVICE=nosuchdevice \
    "$RVSFIT_CL" --device 0 --self-test

# bad forms: message naming the spec, exit 3
for spec in 99 "$ndev" 9:0 0:9 nosuchdevice; do
    run 3 "--device $spec" -- "$RVSFIT_CL" --device "$spec" --self-test
    expect_in err "--device '$spec' matches none" "--device $spec explained"
done
for spec in : 0: :0 0:0:0; do
    run 3 "--device $spec" -- "$RVSFIT_CL" --device "$spec" --self-test
    expect_in err "--device '$spec' is malformed" "--device $spec explained"
done
run 2 "--device ''" -- "$RVSFIT_CL" --device "" --self-test
expect_in err "--device needs a value" "empty --device explained"

# no platform at all: the message says what to install and how to register NVIDIA's driver
mkdir -p "$scratch/no-vendors"
run 3 "no platform" -- env OCL_ICD_VENDORS="$scratch/no-vendors" "$RVSFIT_CL" --list-devices
expect_in err "pocl-opencl-icd" "no-platform message names PoCL"
expect_in err "libnvidia-opencl.so.1" "no-platform message names the NVIDIA ICD"
expect_in err "/etc/OpenCL/vendors" "no-platform message names the vendors directory"
run 3 "no platform, self-test" -- env OCL_ICD_VENDORS="$scratch/no-vendors" \
    "$RVSFIT_CL" --self-test

# issue 19 item 9: a cache directory that cannot be made (XDG_CACHE_HOME under a plain file)
# stops PoCL, which the loader then reports as no platform: the message names the real cause.
# Where PoCL is the only platform (CI), the run must fail with that message; where another
# platform still answers, the run may succeed.
: >"$scratch/a-file"
only_pocl=0
"$RVSFIT_CL" --list-devices 2>/dev/null | grep -v '^index' | grep -qv 'Portable Computing' || only_pocl=1
if env -u POCL_CACHE_DIR XDG_CACHE_HOME="$scratch/a-file/cache" "$RVSFIT_CL" --list-devices \
    >"$scratch/xdg.out" 2>"$scratch/xdg.err"; then
    [ "$only_pocl" -eq 1 ] && fail "PoCL worked without a cache directory? $(cat "$scratch/xdg.out")"
else
    grep -q "the cache directory $scratch/a-file/cache (from XDG_CACHE_HOME) cannot be created" \
        "$scratch/xdg.err" || fail "unwritable cache not named: $(cat "$scratch/xdg.err")"
    grep -q "Set XDG_CACHE_HOME (or POCL_CACHE_DIR) to a writable directory" "$scratch/xdg.err" ||
        fail "no fix given for the unwritable cache"
fi

finish
