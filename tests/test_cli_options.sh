#!/bin/sh
# test_cli_options.sh: rvs_desi_fit's option set on rvsfit-cl's command line: every option is
# accepted (with its underscore spelling too), bad values are refused with a message naming the
# option (exit 2), conflicting options are refused, and settings follow command line > YAML
# configuration > defaults (checked with --show-config, which needs no device).
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"

RVSFIT_CL_DATADIR="$top_srcdir/data"
export RVSFIT_CL_DATADIR
cd "$scratch" || exit 1

# show KEY VALUE: the last --show-config run printed "KEY = VALUE..."
show() {
    if ! grep -q -- "^$1 = $2" "$scratch/out"; then
        fail "--show-config: expected '$1 = $2', got: $(grep -- "^$1 = " "$scratch/out")"
    fi
}

# --- defaults (rvspecfit's get_default_config and rvs_desi_fit's argparse defaults)
run 0 "--show-config with defaults" -- "$RVSFIT_CL" --show-config
show config_file none
show template_lib "$top_srcdir/data/default (default)"
show min_vel '-1000 (default)'
show max_vel '1000 (default)'
show vel_step0 '5 (default)'
show min_vel_step '0.2 (default)'
show min_vsini '0.01 (default)'
show max_vsini '500 (default)'
show second_minimizer 'true (default)'
show lsf_sigma0_angstrom.r '0.5 (default)'
show ccf_continuum_normalize 'true (default)'
show fitarm 'b,r,z (default)'
show npoly '10 (default)'
show param_init CCF
show resolution_matrix "auto (the library's LSFRMAT)"
show likelihood 'scale-free continuum prior, outlier clipping'
show clip_sigma 5
show minsn '-1e+09'
show output_dir ./
show output_tab_prefix rvtab
show output_mod_prefix rvmod
show subdirs true
show batch_size auto
show overlap true

# --- every value-taking option, dash and underscore spellings
for spelling in dash underscore; do
    opts="--output-dir=o --output-tab-prefix=T --output-mod-prefix=M --no-subdirs
          --minsn=3.5 --minexpid=10 --maxexpid=20 --objtypes=MWS_ANY,STD_.* --zbest-select
          --zbest-include --fitarm=b,z --npoly=7 --param-init=bruteforce --resolution-matrix
          --no-ccf-continuum-normalize --batch-size=64 --no-overlap --template-lib=/some/lib
          --targetid=39627652591521428"
    if [ "$spelling" = underscore ]; then
        # --no-ccf-continuum-normalize=x -> --no_ccf_continuum_normalize=x (the name only)
        opts=$(for o in $opts; do
            name=${o%%=*}
            case $o in *=*) value="=${o#*=}" ;; *) value= ;; esac
            printf -- '--%s%s\n' "$(printf '%s' "${name#--}" | tr - _)" "$value"
        done)
    fi
    # shellcheck disable=SC2086
    run 0 "--show-config with every option ($spelling)" -- "$RVSFIT_CL" --show-config $opts
    show output_dir o
    show output_tab_prefix T
    show output_mod_prefix M
    show subdirs false
    show minsn 3.5
    show minexpid 10
    show maxexpid 20
    show objtypes 'MWS_ANY,STD_.\*'
    show zbest_select true
    show zbest_include true
    show fitarm 'b,z (command line)'
    show npoly '7 (command line)'
    show param_init bruteforce
    show resolution_matrix true
    show ccf_continuum_normalize 'false (command line)'
    show batch_size 64
    show overlap false
    show template_lib '/some/lib (command line)'
    show targetids 1
done
run 0 "--param-init CCF in lower case" -- "$RVSFIT_CL" --show-config --param-init ccf
show param_init CCF
run 0 "--no-resolution-matrix after --resolution-matrix" -- \
    "$RVSFIT_CL" --show-config --resolution-matrix --no-resolution_matrix
show resolution_matrix false
run 0 "--rvspecfit-likelihood" -- "$RVSFIT_CL" --show-config --rvspecfit-likelihood
show likelihood 'rvspecfit (flat continuum prior, no clipping)'
show clip_sigma '0 (off)'
run 0 "--clip-sigma" -- "$RVSFIT_CL" --show-config --clip-sigma 4
show clip_sigma 4
run 2 "bad --clip-sigma" -- "$RVSFIT_CL" --show-config --clip-sigma 1
expect_in err "invalid --clip-sigma" "bad --clip-sigma message"

echo 39627652591521428 39627652591521429 > ids.txt
run 0 "--targetid-file-from" -- "$RVSFIT_CL" --show-config --targetid-file-from ids.txt
show targetids 2

# --- bad values: exit 2, the option named on stderr
bad() { # bad PATTERN ARGS...: expects exit 2 and PATTERN on stderr
    pattern=$1
    shift
    run 2 "$*" -- "$RVSFIT_CL" --show-config "$@"
    expect_in err "$pattern" "$* reports the problem"
}
bad "invalid --minsn 'abc'" --minsn abc
bad "invalid --minsn 'nan'" --minsn nan
bad "invalid --minexpid '1.5'" --minexpid 1.5
bad "invalid --maxexpid 'x'" --maxexpid x
bad "invalid --npoly '0'" --npoly 0
bad "invalid --npoly '1000'" --npoly 1000
bad "invalid --batch-size '0'" --batch-size 0
bad "invalid --batch-size '-3'" --batch_size=-3
bad "invalid --targetid '12ab'" --targetid 12ab
bad "invalid --fitarm 'b,x'" --fitarm b,x
bad "invalid --fitarm ''" --fitarm ''
bad "invalid --param-init 'grid'" --param-init grid
bad "invalid --objtypes pattern 'MWS_\\(" --objtypes 'MWS_('
# issue 19 item 14: a pattern that names no DESI target bit is a usage error (2), found before any file
bad "--objtypes 'NOSUCHBIT' matches no target bit" --objtypes NOSUCHBIT
bad "invalid --output-tab-prefix 'a/b'" --output-tab-prefix a/b
bad "invalid --output-mod-prefix ''" --output-mod-prefix ''
bad "invalid --log-level 'LOUD'" --log-level LOUD
bad "invalid --nthreads 'many'" --nthreads many
bad "requires an argument" --npoly
bad "unrecognized option '--no-such'" --no-such
# --mpi: accepted in an MPI build (tests/test_mpi.sh runs it), else a usage error saying how
if [ "${RVSFIT_CL_HAVE_MPI:-no}" = yes ]; then
    run 0 "--mpi in an MPI build" -- "$RVSFIT_CL" --show-config --mpi
else
    bad "built without MPI.*libopenmpi-dev" --mpi
fi
bad "not both" --targetid 1 --targetid-file-from ids.txt
bad "--minexpid must be below --maxexpid" --minexpid 5 --maxexpid 5
bad "need different names" --output-tab-prefix x --output-mod-prefix x

run 2 "files and --input-file-from" -- "$RVSFIT_CL" --input-file-from ids.txt a.fits
expect_in err "not both" "files and a list refused"
run 2 "--queue-file without a list" -- "$RVSFIT_CL" --queue-file
expect_in err "--queue-file needs the list" "queue without list refused"
run 2 "--queue-file=LIST naming another list" -- \
    "$RVSFIT_CL" --input-file-from a.txt --queue-file=b.txt
expect_in err "names another list" "two lists refused"
run 2 "no input" -- "$RVSFIT_CL" --minsn 3
expect_in err "no input files" "no input refused"
run 2 "unreadable --targetid-file-from" -- "$RVSFIT_CL" --show-config --targetid-file-from nope.txt
expect_in err "nope.txt" "missing targetid file named"
echo "123 abc" > badids.txt
run 2 "bad --targetid-file-from" -- "$RVSFIT_CL" --show-config --targetid-file-from badids.txt
expect_in err "badids.txt" "bad targetid file named"

# --- configuration: YAML over defaults, command line over YAML
cat > conf.yaml <<'EOF'
template_lib: /yaml/lib
min_vel: -700
max_vel: 800   # a comment
vel_step0: 4
min_vel_step: 0.1
min_vsini: 0.5
max_vsini: 300
second_minimizer: 0
lsf_sigma0_angstrom:
  b: 0.55
  z: 0.65
ccf_continuum_normalize: true
EOF
run 0 "--config" -- "$RVSFIT_CL" --show-config --config conf.yaml
show config_file "$scratch/conf.yaml"
show template_lib '/yaml/lib (config)'
show min_vel '-700 (config)'
show max_vel '800 (config)'
show vel_step0 '4 (config)'
show min_vel_step '0.1 (config)'
show min_vsini '0.5 (config)'
show max_vsini '300 (config)'
show second_minimizer 'false (config)'
show lsf_sigma0_angstrom.b '0.55 (config)'
show lsf_sigma0_angstrom.r '0.5 (default)'
show lsf_sigma0_angstrom.z '0.65 (config)'
show ccf_continuum_normalize 'true (config)'
[ -s "$scratch/err" ] && fail "a valid configuration gave messages: $(cat "$scratch/err")"

run 0 "command line over --config" -- "$RVSFIT_CL" --show-config --config=conf.yaml \
    --template-lib /cli/lib --no_ccf_continuum_normalize
show template_lib '/cli/lib (command line)'
show ccf_continuum_normalize 'false (command line)'
show min_vel '-700 (config)'

# rvspecfit reads ./config.yaml when no --config is given
cp conf.yaml config.yaml
run 0 "./config.yaml read without --config" -- "$RVSFIT_CL" --show-config
show config_file "$scratch/config.yaml"
show min_vel '-700 (config)'
rm config.yaml

printf 'min_vel: -900\ncolour: blue\n' > unknown.yaml
run 0 "unknown key" -- "$RVSFIT_CL" --show-config --config unknown.yaml
expect_in err "WARNING.*unknown key 'colour'" "unknown key warned about"
show min_vel '-900 (config)'

printf 'min_vel: fast\n' > badval.yaml
run 2 "bad value" -- "$RVSFIT_CL" --show-config --config badval.yaml
expect_in err "min_vel needs a finite number, got 'fast'" "bad value names the key"
printf 'max_vsini: 5\nmin_vsini: 10\n' > badrange.yaml
run 2 "inconsistent values" -- "$RVSFIT_CL" --show-config --config badrange.yaml
expect_in err "max_vsini \(5\) must be above min_vsini \(10\)" "range error names the keys"
printf 'min_vel: [1\n' > syntax.yaml
run 2 "YAML syntax error" -- "$RVSFIT_CL" --show-config --config syntax.yaml
expect_in err "syntax.yaml, line [0-9]+, column [0-9]+: not valid YAML" "syntax error located"
run 2 "missing --config" -- "$RVSFIT_CL" --show-config --config none.yaml
expect_in err "cannot open configuration file none.yaml" "missing config named"

# --- figure options (rvs_desi_fit's spellings too) and compatibility options, never silently
run 0 "--doplot and figures" -- "$RVSFIT_CL" --show-config --doplot --figure-dir f \
    --figure_prefix p --nthreads 1 --overwrite x
expect_in err "overwrite is meaningless" "--overwrite warned about"
expect_in out "^doplot = true$" "--show-config shows --doplot"
expect_in out "^figure_dir = f$" "--show-config shows --figure-dir"
expect_in out "^figure_prefix = p$" "--show-config shows --figure-prefix"
run 0 "figure defaults" -- "$RVSFIT_CL" --show-config
expect_in out "^figure_dir = \./$" "rvs_desi_fit's default figure_dir"
expect_in out "^figure_prefix = fig$" "rvs_desi_fit's default figure_prefix"
run 2 "--figure-prefix with a /" -- "$RVSFIT_CL" --show-config --figure-prefix a/b
expect_in err "invalid --figure-prefix 'a/b'" "a prefix naming a directory is refused"
run 2 "empty --figure-dir" -- "$RVSFIT_CL" --show-config --figure-dir ""
run 0 "--version names the figure back end" -- "$RVSFIT_CL" --version
expect_in out "^figures \(--doplot\): (cairo [0-9.]+|not built \(configured without cairo\))$" \
    "--version says whether --doplot can draw"

# --- help documents every option of the table and the exit codes
run 0 "--help" -- "$RVSFIT_CL" --help
for o in input-file-from queue-file output-dir output-tab-prefix output-mod-prefix no-subdirs \
    config template-lib targetid targetid-file-from minsn minexpid maxexpid objtypes \
    zbest-select zbest-include fitarm npoly param-init resolution-matrix \
    no-ccf-continuum-normalize doplot figure-dir figure-prefix log log-level \
    process-status-file skipexisting throw-exceptions version device list-devices batch-size \
    profile show-config; do
    expect_in out "--$o" "--help lists --$o"
    if ! sed 's/\\-/-/g' "$top_srcdir/doc/rvsfit-cl.1" | grep -q -- "--$o"; then
        fail "the man page does not document --$o"
    fi
done
expect_in out "^  3  no usable OpenCL device" "--help lists exit status 3"

finish
