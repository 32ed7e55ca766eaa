#!/bin/sh
# test_cache.sh: the program-binary cache. A second process loads from it; a corrupt entry is
# removed and rebuilt from source; RVSFIT_CL_CACHE=0 turns it off.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
require_device

XDG_CACHE_HOME="$scratch/cache"
export XDG_CACHE_HOME
cache="$XDG_CACHE_HOME/rvsfit-cl"

run 0 "first process" -- "$RVSFIT_CL" --self-test -v
# the self-test builds one program per kernel family; count them from the first run
nprog=$(sed -n 's/^programs: \([0-9]*\) built from source.*/\1/p' "$scratch/out")
[ "${nprog:-0}" -ge 1 ] || fail "first run built no program"
expect_in out "^programs: $nprog built from source, 0 loaded from cache" "first run compiles"
expect_in err 'selftest: built from embedded source' "first run logs the compile"
entries=$(ls "$cache"/selftest-*.bin 2>/dev/null | wc -l)
[ "$entries" -eq 1 ] || fail "expected one cache entry, found $entries"
ls "$cache" | grep -q 'tmp' && fail "temporary file left in the cache"

run 0 "second process" -- "$RVSFIT_CL" --self-test -v
expect_in out "^programs: 0 built from source, $nprog loaded from cache" "second run hits the cache"
expect_in err 'selftest: loaded from binary cache' "cache hit logged"

# corrupt the entry in three ways; each time it is removed, rebuilt and stored again
entry=$(ls "$cache"/selftest-*.bin)
for how in flip truncate magic; do
    case $how in
    flip) # change one byte in the middle of the binary: checksum mismatch
        size=$(wc -c <"$entry")
        printf 'X' | dd of="$entry" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null ;;
    truncate)
        head -c 100 "$entry" >"$entry.cut" && mv "$entry.cut" "$entry" ;;
    magic)
        printf 'garbage!' | dd of="$entry" bs=1 seek=0 conv=notrunc 2>/dev/null ;;
    esac
    run 0 "corrupt entry ($how)" -- "$RVSFIT_CL" --self-test
    expect_in out "^programs: 1 built from source, $((nprog - 1)) loaded from cache, 1 cache entries rejected" \
        "corrupt entry ($how) rejected and rebuilt"
    expect_in err 'removing corrupt cache entry' "corruption ($how) reported"
    run 0 "after repair ($how)" -- "$RVSFIT_CL" --self-test
    expect_in out "^programs: 0 built from source, $nprog loaded from cache, 0 cache" \
        "repaired entry ($how) is used again"
done

# off switch: nothing read, nothing written
XDG_CACHE_HOME="$scratch/cache-off"
run 0 "RVSFIT_CL_CACHE=0" -- env RVSFIT_CL_CACHE=0 "$RVSFIT_CL" --self-test
expect_in out "^programs: $nprog built from source, 0 loaded from cache" "cache off compiles"
[ -z "$(ls "$scratch/cache-off/rvsfit-cl" 2>/dev/null)" ] || fail "RVSFIT_CL_CACHE=0 wrote files"

# an unwritable cache location is a warning, not a failure
touch "$scratch/not-a-dir"
run 0 "unusable cache dir" -- env XDG_CACHE_HOME="$scratch/not-a-dir" "$RVSFIT_CL" --self-test
expect_in err 'cannot create cache directory' "unusable cache location reported"

finish
