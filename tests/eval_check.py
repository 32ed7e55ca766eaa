# eval_check.py: independent checks of rvsfit-cl-eval's output, run by tests/test_eval.sh.
#
#   python3 eval_check.py batch OUT.fits LIBDIR PARAMS.txt   the batched file, row by row
#   python3 eval_check.py single OUT.fits LIBDIR             a one-row file (keys, network)
#   python3 eval_check.py same BATCH.fits ROW:FILE...      batch rows == one-row files
#   python3 eval_check.py text OUT.txt OUT.fits              text columns == the FITS file
#
# The references are written here from the documents, sharing no code with the program:
# the network and the outside-grid penalty from doc/template-library.md (numpy, double, from
# the library's float32 weights), the rotation kernel W_k = int Lambda(k - R x) K(x) dx by
# quadrature (rvspecfit spec_fit.compute_vsini_kernel defines it; scipy's 'same' convolution),
# the Doppler shift with scipy's natural cubic spline at lambda sqrt((1 - b) / (1 + b)).
import os
import sys

import numpy as np
from astropy.io import fits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from library_ref import check, finish, forward, load_library, map_params, outside  # noqa: E402

C_KMS = 299792.458
EPS = 0.6
# log-flux: the device's float32 network vs numpy in double from the same float32 weights,
# relative to max |ln F| (tests/tolerances.h, RVS_TOL_NN_FP32_REL)
TOL_NN = 1e-5
# rotation and shift of the program's own vsini = 0 / vrad = 0 spectra of the same parameters
# (the program evaluates the network once per distinct parameter vector, so both start from the
# same template; fp64 device paths, float32 output): relative to max |F|, a few float32 ulp
TOL_ROT = 1e-6
TOL_SHIFT = 1e-6
# a row evaluated alone and in a batch: the NN's float32 GEMM rounds a row differently when other
# rows share the call (OpenBLAS, CLBlast alike), by a few float32 ulp of ln F (1e-6 relative flux
# per ulp at ln F ~ 15: 2.1e-6 measured), so the network's own tolerance applies
TOL_REBATCH = TOL_NN
# interior flux after rotation / before (kernel normalised to 1; flux only moves)
TOL_CONSERVE = 1e-3
# the penalty: same double arithmetic, different order
TOL_OUTSIDE = 1e-9

COLS = ('TEFF', 'LOGG', 'FEH', 'ALPHAFE', 'VSINI', 'VRAD')
# ------------------------------------------------------------------ library references
def log_flux(lib, theta):
    """doc/template-library.md section 4 in double precision (tests/library_ref.py)."""
    return forward(lib, map_params(lib, theta, like_rvspecfit=False), like_rvspecfit=False,
                   log=True)


def outside_of(lib, theta):
    """The penalty on rvspecfit's float32 mapping, as rvs_library_map documents."""
    return float(outside(lib, map_params(lib, np.atleast_2d(theta)))[0])


def rotation_kernel(R, eps=EPS, nquad=400001):
    """W_k = int_{-1}^{1} Lambda(k - R x) K(x) dx, K the limb-darkened rotation profile
    (2 (1 - eps) sqrt(1 - x^2) + pi eps (1 - x^2) / 2) / (pi (1 - eps / 3)); x = sin(phi) takes
    the square root's edge away; midpoint rule in phi; normalised to sum 1."""
    kmax = int(np.ceil(R + 1))
    phi = -np.pi / 2 + (np.arange(nquad) + 0.5) * np.pi / nquad
    x, dx = np.sin(phi), np.cos(phi) * np.pi / nquad
    K = ((2 * (1 - eps) * np.sqrt(1 - x * x) + np.pi * eps * (1 - x * x) / 2)
         / (np.pi * (1 - eps / 3)))
    w = np.array([np.sum(np.clip(1 - np.abs(k - R * x), 0, None) * K * dx)
                  for k in range(-kmax, kmax + 1)])
    return w / w.sum()


def rotate(wave, flux, vsini):
    R = vsini / C_KMS / np.log(wave[1] / wave[0])
    if R < 1e-9:
        return flux.copy(), 0
    w = rotation_kernel(R)
    return np.convolve(flux, w, mode='same'), (len(w) - 1) // 2


def shift(wave, flux, vrad):
    from scipy.interpolate import CubicSpline
    b = vrad / C_KMS
    x = wave * np.sqrt((1 - b) / (1 + b))
    out = CubicSpline(wave, flux, bc_type='natural')(x)
    out[(x < wave[0]) | (x >= wave[-1])] = np.nan
    return out


# ------------------------------------------------------------------ the program's file
def read_eval(path):
    """{setup: (wave, flux[nrows, npix])}, the PARAMS table, the primary header; checks the
    layout doc/rvsfit-cl-eval.1 documents."""
    arms = {}
    with fits.open(path, checksum=True) as f:
        for hdu in f:
            check('CHECKSUM' in hdu.header and 'DATASUM' in hdu.header,
                  '%s: HDU %s has CHECKSUM and DATASUM' % (path, hdu.name))
            check(hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1,
                  '%s: HDU %s checksums verify' % (path, hdu.name))
        prim = f[0].header
        n = prim['NROWS']
        setups = prim['SETUPS'].split(',')
        check([h.name.lower() for h in f[1:-1]] == setups,
              '%s: arm HDUs %s in SETUPS order %s' % (path, [h.name for h in f[1:-1]], setups))
        check(f[-1].name == 'PARAMS', '%s: last HDU is PARAMS' % path)
        for s in setups:
            h = f[s]
            check(h.columns.names == ['WAVELENGTH', 'FLUX'], '%s %s: columns %s'
                  % (path, s, h.columns.names))
            check(h.columns['WAVELENGTH'].unit == 'Angstrom', '%s %s: WAVELENGTH unit' % (path, s))
            check(h.columns['FLUX'].format == '%dE' % n, '%s %s: FLUX format %s, expected %dE'
                  % (path, s, h.columns['FLUX'].format, n))
            check(h.header['SETUP'] == s and h.header['NROWS'] == n
                  and h.header['NPIX'] == len(h.data), '%s %s: SETUP/NROWS/NPIX keys' % (path, s))
            for key in ('LOGSTEP', 'WAVEREF', 'NOUTSIDE', 'LIBFILE', 'LIBREV', 'SRCVER'):
                check(key in h.header, '%s %s: keyword %s' % (path, s, key))
            flux = np.asarray(h.data['FLUX'], dtype=np.float64).reshape(len(h.data), n).T
            arms[s] = (np.asarray(h.data['WAVELENGTH'], dtype=np.float64), flux)
        params = f['PARAMS'].data
        check(list(params.columns.names) == list(COLS) + ['OUTSIDE', 'WARN'],
              '%s: PARAMS columns %s' % (path, params.columns.names))
        check(len(params) == n, '%s: PARAMS has NROWS rows' % path)
        for key in ('CREATOR', 'CREATVER', 'DATE', 'TMPLLIB', 'TMPLREV', 'DEVICE', 'EVALCMD'):
            check(key in prim, '%s: primary keyword %s' % (path, key))
        params = {c: np.array(params[c]) for c in params.columns.names}
        prim = dict(prim)
    return arms, params, prim


def rel(a, b, scale):
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[both] - b[both])) / scale) if both.any() else 0.0


def lib_of(libdir, setup, cache={}):
    if setup not in cache:
        cache[setup] = load_library(os.path.join(libdir, 'rvsfit_%s.fits' % setup))
    return cache[setup]


def check_network(arms, libdir, theta, row, label):
    worst = 0.0
    for s, (wave, flux) in arms.items():
        lib = lib_of(libdir, s)
        check(np.array_equal(wave, lib['wave']), '%s %s: WAVELENGTH is the library grid'
              % (label, s))
        ref = log_flux(lib, theta)
        got = np.log(flux[row])
        err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        worst = max(worst, err)
        check(err <= TOL_NN, '%s %s: max |d ln F| / max |ln F| = %.3g > %g'
              % (label, s, err, TOL_NN))
    return worst


# ------------------------------------------------------------------ modes
def mode_batch(path, libdir, params_txt):
    arms, par, _ = read_eval(path)
    rows = []
    for ln in open(params_txt):
        v = [float(x) for x in ln.split('#')[0].replace(',', ' ').split()]
        if v:
            rows.append(v + [0.0] * (6 - len(v)))  # a 5-column row: vrad 0 (no --vrad)
    rows = np.array(rows)
    n = len(rows)
    check(len(par['TEFF']) == n, 'PARAMS has %d rows, the file %d' % (len(par['TEFF']), n))
    for k, c in enumerate(COLS):
        check(np.array_equal(par[c], rows[:, k]), 'PARAMS column %s equals the input' % c)

    def find(t, vs, vr):
        for i in range(n):
            if (tuple(rows[i, :4]) == tuple(t) and rows[i, 4] == vs and rows[i, 5] == vr):
                return i
        return None

    worst = dict(nn=0.0, rot=0.0, shift=0.0, conserve=0.0, outside=0.0)
    nchk = dict(nn=0, rot=0, shift=0)
    for i in range(n):
        theta, vs, vr = rows[i, :4], rows[i, 4], rows[i, 5]
        # outside-grid penalty: the worst over the arms; WARN bit 1 exactly when > 0
        ref_out = max(outside_of(lib_of(libdir, s), theta) for s in arms)
        err = abs(par['OUTSIDE'][i] - ref_out) / max(ref_out, 1.0)
        worst['outside'] = max(worst['outside'], err)
        check(err <= TOL_OUTSIDE, 'row %d: OUTSIDE %.10g, reference %.10g'
              % (i + 1, par['OUTSIDE'][i], ref_out))
        check(bool(par['WARN'][i] & 1) == (ref_out > 0), 'row %d: WARN bit 1 (%d) vs penalty %g'
              % (i + 1, par['WARN'][i], ref_out))
        shifted_nan = any(np.isnan(fl[i]).any() for _, fl in arms.values())
        check(bool(par['WARN'][i] & 2) == shifted_nan, 'row %d: WARN bit 2 (%d) vs NaN pixels'
              % (i + 1, par['WARN'][i]))
        if vs == 0 and vr == 0:
            err = check_network(arms, libdir, theta, i, 'row %d' % (i + 1))
            worst['nn'] = max(worst['nn'], err)
            nchk['nn'] += 1
        elif vr == 0:
            j = find(theta, 0, 0)
            if j is None:
                continue
            for s, (wave, flux) in arms.items():
                ref, km = rotate(wave, flux[j], vs)
                err = rel(flux[i], ref, np.max(np.abs(ref)))
                worst['rot'] = max(worst['rot'], err)
                check(err <= TOL_ROT, 'row %d %s: vsini %g vs reference kernel on row %d: %.3g > %g'
                      % (i + 1, s, vs, j + 1, err, TOL_ROT))
                inner = slice(km + 1, len(wave) - km - 1)
                cons = abs(np.sum(flux[i][inner]) / np.sum(flux[j][inner]) - 1)
                worst['conserve'] = max(worst['conserve'], cons)
                check(cons <= TOL_CONSERVE, 'row %d %s: interior flux changed by %.3g > %g'
                      % (i + 1, s, cons, TOL_CONSERVE))
            nchk['rot'] += 1
        else:
            j = find(theta, vs, 0)
            if j is None:
                continue
            for s, (wave, flux) in arms.items():
                ref = shift(wave, flux[j], vr)
                check(np.array_equal(np.isnan(ref), np.isnan(flux[i])),
                      'row %d %s: NaN pixels of the shift (%d) where the reference has them (%d)'
                      % (i + 1, s, np.isnan(flux[i]).sum(), np.isnan(ref).sum()))
                err = rel(flux[i], ref, np.nanmax(np.abs(ref)))
                worst['shift'] = max(worst['shift'], err)
                check(err <= TOL_SHIFT, 'row %d %s: vrad %g vs natural spline of row %d: %.3g > %g'
                      % (i + 1, s, vr, j + 1, err, TOL_SHIFT))
            nchk['shift'] += 1
    check(nchk['nn'] >= 1 and nchk['rot'] >= 1 and nchk['shift'] >= 1,
          'the params file exercises network, rotation and shift (%s)' % nchk)
    print('batch of %d rows, %d arms: network max|d ln F|/max|ln F| %.2g (%d rows, tol %g); '
          'rotation %.2g (%d rows, tol %g), interior flux change %.2g (tol %g); shift %.2g '
          '(%d rows, tol %g); OUTSIDE %.2g (tol %g)'
          % (n, len(arms), worst['nn'], nchk['nn'], TOL_NN, worst['rot'], nchk['rot'], TOL_ROT,
             worst['conserve'], TOL_CONSERVE, worst['shift'], nchk['shift'], TOL_SHIFT,
             worst['outside'], TOL_OUTSIDE))
    finish()


def mode_single(path, libdir, tol=None):
    global TOL_NN
    if tol:
        TOL_NN = float(tol)
    arms, par, prim = read_eval(path)
    check(prim['NROWS'] == 1, 'one row')
    theta = [prim['TEFF'], prim['LOGG'], prim['FEH'], prim['ALPHAFE']]
    for k, c in enumerate(COLS):
        check(prim[c] == par[c][0], 'primary keyword %s equals PARAMS' % c)
    check(prim['OUTSIDE'] == par['OUTSIDE'][0] and prim['EVALWARN'] == par['WARN'][0],
          'OUTSIDE/EVALWARN keywords equal PARAMS')
    for s in arms:
        check(len(arms[s][1]) == 1, '%s: one spectrum' % s)
    if prim['VSINI'] == 0 == prim['VRAD']:
        err = check_network(arms, libdir, theta, 0, path)
        print('%s: %d arms, network max|d ln F|/max|ln F| %.2g (tol %g)'
              % (os.path.basename(path), len(arms), err, TOL_NN))
    else:
        print('%s: %d arms (vsini or vrad set: layout only)' % (os.path.basename(path), len(arms)))
    finish()


def mode_same(batch, *pairs):
    """pairs: ROW:FILE, ROW 0-based; FILE a one-row file of a subset of the batch's arms."""
    a, pa, _ = read_eval(batch)
    for pair in pairs:
        row, single = pair.split(':', 1)
        row = int(row)
        b, pb, _ = read_eval(single)
        worst = 0.0
        check(set(b) <= set(a), '%s: arms %s among the batch arms %s' % (single, list(b), list(a)))
        for c in COLS:
            check(pa[c][row] == pb[c][0], 'PARAMS %s of batch row %d and %s' % (c, row + 1, single))
        check(pa['WARN'][row] == pb['WARN'][0], '%s: same WARN' % single)
        for s in b:
            if s not in a:
                continue
            fa, fb = a[s][1][row], b[s][1][0]
            check(np.array_equal(np.isnan(fa), np.isnan(fb)),
                  '%s %s: same NaN pixels' % (single, s))
            err = rel(fa, fb, np.nanmax(np.abs(fb)))
            worst = max(worst, err)
            check(err <= TOL_REBATCH, '%s %s: batch row %d vs single call: %.3g > %g'
                  % (single, s, row + 1, err, TOL_REBATCH))
        print('batch row %d vs %s (%s): max |dF| / max F = %.2g (tol %g)'
              % (row + 1, os.path.basename(single), ','.join(b), worst, TOL_REBATCH))
    finish()


def mode_text(txt, path):
    arms, _, _ = read_eval(path)
    blocks, cur = [], []
    for ln in open(txt):
        if ln.startswith('# setup '):
            cur = []
            blocks.append((ln.split()[2].rstrip(':'), cur))
        elif ln.strip() and not ln.startswith('#'):
            cur.append([float(v) for v in ln.split()])
    check([s for s, _ in blocks] == list(arms), 'text blocks %s, FITS arms %s'
          % ([s for s, _ in blocks], list(arms)))
    for s, data in blocks:
        if s not in arms:
            continue
        data = np.array(data)
        wave, flux = arms[s]
        check(data.shape == (len(wave), 1 + len(flux)), '%s: text shape %s' % (s, data.shape))
        if data.shape != (len(wave), 1 + len(flux)):
            continue
        check(np.max(np.abs(data[:, 0] / wave - 1)) < 1e-11, '%s: wavelengths' % s)
        # %.9g round-trips float32
        txt32, fits32 = data[:, 1:].astype(np.float32), flux.T.astype(np.float32)
        same = np.array_equal(txt32, fits32, equal_nan=True)
        check(same, '%s: text fluxes equal the FITS float32 values' % s)
    print('text output: %d blocks equal to the FITS file' % len(blocks))
    finish()


if __name__ == '__main__':
    modes = {'batch': mode_batch, 'single': mode_single, 'same': mode_same, 'text': mode_text}
    modes[sys.argv[1]](*sys.argv[2:])
