# RVS_PKG_REQUIRE(VARIABLE-PREFIX, PKG-CONFIG-MODULE, DEBIAN-PACKAGES)
# Finds a dependency with pkg-config; when it is missing, stops and names the Debian
# package(s) that provide it, so the user knows exactly what to install.
AC_DEFUN([RVS_PKG_REQUIRE], [
  PKG_CHECK_MODULES([$1], [$2], [],
    [AC_MSG_ERROR([pkg-config module '$2' not found.
  Install it on Debian/Ubuntu with:  sudo apt-get install $3
  (or run tools/install-deps), then run ./configure again.
  pkg-config said: $$1_PKG_ERRORS])])
])

# AX_RVS_REQUIRE_C11: the compiler must accept C11.
AC_DEFUN([AX_RVS_REQUIRE_C11], [
  AC_CACHE_CHECK([whether $CC accepts C11], [rvs_cv_c11], [
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[
#if !defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L
#error not C11
#endif
_Static_assert(1, "c11");]], [])],
      [rvs_cv_c11=yes],
      [rvs_save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS -std=gnu11"
       AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[_Static_assert(1, "c11");]], [])],
         [rvs_cv_c11=-std=gnu11], [rvs_cv_c11=no])
       CFLAGS=$rvs_save_CFLAGS])])
  AS_CASE([$rvs_cv_c11],
    [no], [AC_MSG_ERROR([a C11 compiler is required (Debian: gcc)])],
    [yes], [],
    [CFLAGS="$CFLAGS $rvs_cv_c11"])
])
