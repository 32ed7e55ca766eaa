#!/bin/sh
# test_install.sh: rvsfit-cl installs like a library (issue 22, part 3). A staged install of this
# build (make install DESTDIR=<scratch>/stage, the configured prefix below it) must hold every
# program with its man page, the public headers rvsfit.h includes, librvsfit with rvsfit.pc, the
# default template library and desitarget's tables. A small C program is built against the
# staged library with `cc $(pkg-config --cflags --libs rvsfit)` (PKG_CONFIG_SYSROOT_DIR: the .pc
# names the configured prefix) and opens the staged default library; the staged programs run
# (--version, --help) and find their data beside themselves, not in the source tree or the
# configured prefix; make uninstall removes every file again. Needs no device; the one run that
# evaluates templates with the staged rvsfit-cl-eval is left out without one.
. "${top_srcdir:-$(dirname "$0")/..}/tests/lib.sh"
unset RVSFIT_CL_DATADIR
# the outer make's job server is not this make's
unset MAKEFLAGS MFLAGS MAKELEVEL
stage="$scratch/stage"
for v in "${RVS_INSTALL_BINDIR:-}" "${RVS_INSTALL_LIBDIR:-}" "${RVS_INSTALL_INCLUDEDIR:-}" \
    "${RVS_INSTALL_PKGDATADIR:-}" "${RVS_INSTALL_MANDIR:-}"; do
    case $v in
    /*) ;;
    *) fail "the install directories are not in the environment (run through make check)"
       finish ;;
    esac
done
bindir=$stage$RVS_INSTALL_BINDIR
libdir=$stage$RVS_INSTALL_LIBDIR
includedir=$stage$RVS_INSTALL_INCLUDEDIR
pkgdatadir=$stage$RVS_INSTALL_PKGDATADIR
man1=$stage$RVS_INSTALL_MANDIR/man1

start=$(date +%s)
run 0 "make install DESTDIR=$stage" -- "${MAKE:-make}" -C "$top_builddir" install \
    DESTDIR="$stage"
echo "staged install: $(($(date +%s) - start)) s"

# --- programs and their man pages
nprog=0
for p in "$bindir"/*; do
    [ -f "$p" ] || continue
    nprog=$((nprog + 1))
    name=$(basename "$p")
    [ -s "$man1/$name.1" ] || fail "$name is installed without a man page ($man1/$name.1)"
done
[ "$nprog" -ge 7 ] || fail "only $nprog program(s) in $bindir"
for p in rvsfit-cl rvsfit-cl-eval rvsfit-cl-mock rvsfit-cl-lsf rvsfit-cl-mkgrid \
    rvsfit-cl-train rvs-import; do
    [ -x "$bindir/$p" ] || fail "$p is not installed in $bindir"
done

# --- headers, library, pkg-config file, data
[ -s "$includedir/rvsfit.h" ] || fail "rvsfit.h is not installed"
for h in $(sed -n 's/^#include "\(rvsfit\/[a-z_0-9]*\.h\)"/\1/p' "$top_srcdir/include/rvsfit.h"); do
    [ -s "$includedir/$h" ] || fail "rvsfit.h includes $h, which is not installed"
done
ls "$libdir"/librvsfit.so* >/dev/null 2>&1 || fail "librvsfit.so is not installed in $libdir"
[ -s "$libdir/pkgconfig/rvsfit.pc" ] || fail "rvsfit.pc is not installed in $libdir/pkgconfig"
for f in default/rvsfit_desi_b.fits default/rvsfit_desi_r.fits default/rvsfit_desi_z.fits \
    desitarget/targetmask.yaml desitarget/sv3_targetmask.yaml; do
    [ -s "$pkgdatadir/$f" ] || fail "$f is not installed in $pkgdatadir"
done

# --- a program of one's own against the installed library, through pkg-config
export PKG_CONFIG_PATH="$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$stage"
version=$("$top_builddir/rvsfit-cl" --version | sed -n '1s/^rvsfit-cl //p')
got=$(pkg-config --modversion rvsfit)
[ "$got" = "$version" ] || fail "pkg-config --modversion rvsfit: '$got', want '$version'"
flags=$(pkg-config --cflags --libs rvsfit) || fail "pkg-config --cflags --libs rvsfit failed"
echo "pkg-config --cflags --libs rvsfit: $flags"
case " $flags " in
*" -I$includedir "*) ;;
*) fail "the flags do not name the staged headers ($includedir)" ;;
esac
case " $flags " in
*" -L$libdir -lrvsfit "*) ;;
*) fail "the flags do not link the staged library ($libdir)" ;;
esac
cat >"$scratch/libcheck.c" <<'EOF'
/* opens a template library with the installed librvsfit and prints what it holds */
#include <stdio.h>
#include <rvsfit.h>

int main(int argc, char **argv)
{
    struct rvs_library_arm *arm = NULL;
    int status = rvs_library_open(argc > 1 ? argv[1] : ".", "desi_r", &arm);
    if (status != RVS_OK) {
        fprintf(stderr, "libcheck: cannot open the library: %s\n", rvs_strerror(status));
        return 1;
    }
    printf("librvsfit %s: %s npix %zu\n", rvs_version(), rvs_library_setup(arm),
           rvs_library_npix(arm));
    rvs_library_close(&arm);
    return 0;
}
EOF
# shellcheck disable=SC2086
run 0 "cc against the installed library" -- cc -std=c11 -Wall -Werror -o "$scratch/libcheck" \
    "$scratch/libcheck.c" $flags
LD_LIBRARY_PATH="$libdir" ldd "$scratch/libcheck" >"$scratch/ldd.txt" 2>&1
grep -q "librvsfit.so.* => $libdir/librvsfit.so" "$scratch/ldd.txt" ||
    fail "libcheck does not load the staged librvsfit: $(grep librvsfit "$scratch/ldd.txt")"
run 0 "the program opens the installed default library" -- env LD_LIBRARY_PATH="$libdir" \
    "$scratch/libcheck" "$pkgdatadir/default"
expect_in out "^librvsfit $version: desi_r npix [1-9][0-9]*$" "it prints the library's npix"
cat "$scratch/out"
staged_npix=$(sed -n 's/.* npix //p' "$scratch/out")
# the same numbers from the source tree's library, read by the build's librvsfit
# shellcheck disable=SC2086
run 0 "the same program against the build" -- cc -std=c11 -o "$scratch/libcheck-build" \
    "$scratch/libcheck.c" -I"$top_srcdir/include" $(PKG_CONFIG_SYSROOT_DIR= pkg-config --cflags OpenCL) \
    -L"$top_builddir/.libs" -lrvsfit
run 0 "the source tree's library" -- env LD_LIBRARY_PATH="$top_builddir/.libs" \
    "$scratch/libcheck-build" "$top_srcdir/data/default"
[ "$(sed -n 's/.* npix //p' "$scratch/out")" = "$staged_npix" ] ||
    fail "the installed library's npix ($staged_npix) differs from the source tree's"

# --- the installed programs, run from the staged tree
export LD_LIBRARY_PATH="$libdir"
run 0 "installed rvsfit-cl --version" -- "$bindir/rvsfit-cl" --version
expect_in out "^rvsfit-cl $version$" "--version names the version"
run 0 "installed rvsfit-cl --help" -- "$bindir/rvsfit-cl" --help
expect_in out "^Usage: rvsfit-cl" "--help prints the usage"
expect_in out "--doplot" "--help lists --doplot"
for p in rvsfit-cl-eval rvsfit-cl-mock rvsfit-cl-lsf rvsfit-cl-mkgrid rvsfit-cl-train; do
    run 0 "installed $p --version" -- "$bindir/$p" --version
    expect_in out "$version" "$p --version names the version"
done
run 0 "installed rvs-import --version" -- "$bindir/rvs-import" --version
# the default library beside the program: <bindir>/../share/rvsfit-cl as installed
run 0 "installed rvsfit-cl --show-config" -- "$bindir/rvsfit-cl" --show-config
expect_in out "^template_lib = $pkgdatadir/default \(default\)$" \
    "the staged program takes the staged default library"
# desitarget's tables beside the program: a bit name they lack is refused by name
run 2 "an --objtypes name the staged tables lack" -- "$bindir/rvsfit-cl" --show-config \
    --objtypes NO_SUCH_TARGET_BIT
expect_in err "matches no target bit" "the staged desitarget tables were read"
if "$bindir/rvsfit-cl" --list-devices >/dev/null 2>&1; then
    run 0 "installed rvsfit-cl-eval with the default library" -- "$bindir/rvsfit-cl-eval" \
        --teff 5000 --logg 4.5 --feh 0 --alpha 0 --setup desi_r --format text
    [ "$(grep -cv '^#' "$scratch/out")" -ge 100 ] || fail "no spectrum from the staged library"
else
    echo "no OpenCL device: the staged rvsfit-cl-eval run is left out"
fi
unset LD_LIBRARY_PATH PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR

# --- uninstall leaves nothing
run 0 "make uninstall DESTDIR=$stage" -- "${MAKE:-make}" -C "$top_builddir" uninstall \
    DESTDIR="$stage"
left=$(find "$stage" -type f -o -type l | head -5)
[ -z "$left" ] || fail "make uninstall left files: $left"
finish
