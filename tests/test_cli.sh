#!/bin/sh
# test_cli.sh: GNU conventions of the command line: --help/--version on stdout with exit 0,
# usage errors on stderr with exit 2, underscore spellings accepted.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

run 0 "--help" -- "$RVSFIT_CL" --help
expect_in out '^Usage: rvsfit-cl' "--help prints usage on stdout"
expect_in out '--device=SPEC' "--help documents --device"
expect_in out 'Exit status' "--help documents exit codes"
[ -s "$scratch/err" ] && fail "--help wrote to stderr"

run 0 "--version" -- "$RVSFIT_CL" --version
expect_in out '^rvsfit-cl [0-9]+\.[0-9]+\.[0-9]+' "--version prints name and version"

run 0 "-V" -- "$RVSFIT_CL" -V
expect_in out '^rvsfit-cl ' "-V is --version"

run 2 "unknown option" -- "$RVSFIT_CL" --no-such-option
expect_in err "unrecognized option '--no-such-option'" "unknown option named"
expect_in err '^Usage: rvsfit-cl' "usage on stderr"
[ -s "$scratch/out" ] && fail "unknown option wrote to stdout"

run 2 "unknown short option" -- "$RVSFIT_CL" -Z
expect_in err 'unrecognized option' "unknown short option named"

run 2 "missing argument" -- "$RVSFIT_CL" --device
expect_in err "requires an argument" "missing argument reported"

run 2 "bad log level" -- "$RVSFIT_CL" --log-level LOUD --list-devices
expect_in err "invalid --log-level 'LOUD'" "bad level named"

run 2 "no input" -- "$RVSFIT_CL"
expect_in err 'no input files' "no input reported"

# rvs_desi_fit spells options with underscores
run 2 "underscore spelling of a bad level" -- "$RVSFIT_CL" --log_level=LOUD
expect_in err "invalid --log-level 'LOUD'" "--log_level accepted as --log-level"

run 0 "--log-level=debug in lower case" -- "$RVSFIT_CL" --log-level=debug --version

finish
