# train_check.py: helpers of tests/test_train_cli.sh (rvsfit-cl-train).
#
#   python3 train_check.py grid OUT.fits [KIND]     a toy grid (doc/trainer.md); KIND makes a
#                                                   broken one: shape, nowave, negflux, noparam
#   python3 train_check.py check LIB.fits GRID.fits PRED.fits
#
# "check" reads the library the trainer wrote with astropy only and verifies it against
# doc/template-library.md with tests/library_ref.py's helpers (checksums, hull geometry,
# and its numpy reference forward pass, written from the document): the numpy forward of the
# written weights must reproduce the trainer's own predictions (PRED.fits, --predictions), and
# the mapping must be rvspecfit's (M, S = mean and std of the grid's log10 teff, logg, ...).
import os
import sys

import numpy as np
from astropy.io import fits

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import library_ref as ref  # noqa: E402

# log-flux of the trainer's forward pass vs the numpy forward of the written library
PRED_ATOL = 1e-5


def toy_logflux(th, x):
    """Smooth toy spectra: a teff-dependent slope and three lines (depths from teff, feh,
    alpha; widths from logg)."""
    t = th[:, 0:1] / 5500
    lg, feh, al = th[:, 1:2], th[:, 2:3], th[:, 3:4]
    w = 0.01 + 0.004 * (lg - 3)
    v = -0.3 * (t - 1) * (x[None, :] - 0.5)
    for c, d in ((0.2, 0.4 * np.exp(0.8 * feh) / t),
                 (0.5, 0.25 * np.exp(0.6 * (feh + al)) / t ** 2),
                 (0.8, 0.15 * (1 + 0.3 * al) * t)):
        v = v - d * np.exp(-(x[None, :] - c) ** 2 / (2 * w ** 2))
    return v


def make_grid(path, kind):
    rng = np.random.default_rng(5)
    n, npix = 160, 150
    th = np.stack([rng.uniform(4000, 7000, n), rng.uniform(1, 5, n), rng.uniform(-2, 0.5, n),
                   rng.uniform(-0.2, 0.6, n)], axis=1)
    wave = 3600 * np.exp(np.arange(npix) * 1e-4)
    x = np.arange(npix) / npix
    flux = np.exp(toy_logflux(th, x)).astype(np.float32)
    if kind == 'negflux':
        flux[7, 11] = -1
    if kind == 'shape':
        flux = flux[:, :-3]
    cols = [fits.Column(name=nm, format='D', array=th[:, i])
            for i, nm in enumerate(('TEFF', 'LOGG', 'FEH', 'ALPHA'))]
    if kind == 'noparam':
        cols = cols[:3]
    prim = fits.PrimaryHDU()
    prim.header['GRIDNAME'] = 'toy-analytic'
    hdus = [prim, fits.BinTableHDU.from_columns(cols, name='PARAMS'),
            fits.ImageHDU(flux, name='FLUX')]
    hdus[-1].header['FLUXTYPE'] = 'LINEAR'
    if kind != 'nowave':
        hdus.append(fits.ImageHDU(wave, name='WAVE'))
    fits.HDUList(hdus).writeto(path, overwrite=True)


REQUIRED = [k for k in ref.PRIMARY_KEYS
            if k[0] not in ('SRCH5', 'SRCH5SHA', 'SRCNN', 'SRCNNSHA', 'CKPTVER', 'NNARCHV')]


def check(lib_path, grid_path, pred_path):
    ref.check(ref.checksums_ok(lib_path), lib_path + ': checksums')
    with fits.open(lib_path) as f:
        h = f[0].header
        for key, typ in REQUIRED:
            if ref.check(key in h, '%s: keyword %s missing' % (lib_path, key)):
                ref.check(type(h[key]) is typ, '%s: %s has type %s' % (lib_path, key,
                                                                        type(h[key]).__name__))
        for key in ('TRNLOSS', 'VALERR', 'VALMED', 'VAL99', 'TRAINCMD'):
            ref.check(key in h, '%s: provenance keyword %s missing' % (lib_path, key))
        ref.check(h.get('RVSFMT') == 'rvsfit-cl template library' and h.get('RVSFVER') == 2,
                  lib_path + ': format name/version')
        # version 2: the LSF keywords; the toy grid has no FWHM keyword, so unknown
        ref.check(h.get('LSFTYPE') in ('GAUSSIAN', 'UNKNOWN') and 'LSFRMAT' in h,
                  lib_path + ': LSFTYPE/LSFRMAT')
        if h.get('LSFTYPE') == 'GAUSSIAN':
            ref.check(h.get('LSFSIG', 0) > 0, lib_path + ': LSFSIG')
        ref.check(h.get('CREATOR') == 'rvsfit-cl-train', lib_path + ': CREATOR')
        ref.check(h.get('GRIDNAME') == 'toy-analytic', lib_path + ': GRIDNAME')
        for hdu in f[1:]:
            if hdu.name.startswith(('LIN', 'BN', 'PC_')):
                ref.check(hdu.data.dtype == np.dtype('>f4'), hdu.name + ' is not float32')
                ref.check('SRCKEY' in hdu.header, hdu.name + ' lacks SRCKEY')
        ref.check(list(f['PARAMS'].columns.names) == ['NAME', 'LOG10', 'M', 'S', 'TRAINMIN',
                                                      'TRAINMAX'], 'PARAMS columns')
    lib = ref.load_library(lib_path)
    with fits.open(grid_path) as g:
        par = g['PARAMS'].data
        theta = np.stack([np.asarray(par[n], dtype=np.float64)
                          for n in ('TEFF', 'LOGG', 'FEH', 'ALPHA')], axis=1)
        wave = np.asarray(g['WAVE'].data, dtype=np.float64)
    ref.check(np.array_equal(lib['wave'], wave), 'WAVE differs from the grid')
    # rvspecfit train_interpolator.getData: M, S = mean, std of the (log10) parameters
    y = theta.copy()
    y[:, 0] = np.log10(y[:, 0])
    ref.check(lib['names'] == ['teff', 'logg', 'feh', 'alpha'], 'names %r' % lib['names'])
    ref.check(list(lib['log10']) == [True, False, False, False], 'LOG10 flags')
    ref.check(np.allclose(lib['M'], y.mean(axis=0), rtol=1e-12, atol=1e-12), 'M')
    ref.check(np.allclose(lib['S'], y.std(axis=0), rtol=1e-12, atol=1e-12), 'S')
    mapped = ref.map_params(lib, theta, like_rvspecfit=False)
    ref.check_hulls(lib, lib_path, mapped)
    inside = ref.outside(lib, mapped)
    ref.check(inside.max() < 1e-20, 'a grid point is outside the hulls (%g)' % inside.max())
    with fits.open(pred_path) as p:
        ptheta = np.asarray(p['PARAMS'].data, dtype=np.float64)
        pred = np.asarray(p['PRED'].data, dtype=np.float64)
    flux = ref.forward(lib, ref.map_params(lib, ptheta, like_rvspecfit=False),
                       like_rvspecfit=False)
    dev = np.abs(np.log(flux) - pred).max()
    print('numpy forward of the written library vs the trainer: max |d ln flux| = %.3g '
          '(tol %.0e) over %d spectra x %d px' % (dev, PRED_ATOL, pred.shape[0], pred.shape[1]))
    ref.check(dev <= PRED_ATOL, 'library forward differs from the trainer by %g' % dev)
    ref.finish()


if __name__ == '__main__':
    if sys.argv[1] == 'grid':
        make_grid(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else '')
    elif sys.argv[1] == 'check':
        check(*sys.argv[2:5])
    else:
        sys.exit('unknown mode ' + sys.argv[1])
