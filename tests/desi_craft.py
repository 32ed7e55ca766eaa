#!/usr/bin/python3
"""desi_craft.py: test inputs and independent reference values for the DESI input tests.

Run by tests/test_desi_read, test_select and test_prepare with Debian's /usr/bin/python3
(astropy + numpy). Modes:
  read-ref EDRDIR OUT   values read by astropy from the EDR files, as raw little-endian arrays
  bad EDRDIR OUT        broken copies of an EDR coadd, one per kind of damage
  select OUT            crafted FIBERMAP/SCORES/redrock files, plus S/N references
  prepare OUT           crafted spectra and the expected prepared arrays (a numpy port of
                        rvspecfit's get_specdata written for this test)
  big SRC N OUT         a coadd of N rows tiled from SRC, for benchmarks/bench_io
  rows SRC OUT R,R,...  a coadd of SRC's rows R (any order, any subset: every per-target HDU
                        taken alike), for the batch-independence and MPI tests
"""
import gzip
import os
import shutil
import sys

import numpy as np
from astropy.io import fits

ARMS = 'BRZ'


def write(path, *arrays):
    with open(path, 'wb') as fp:
        for a in arrays:
            fp.write(np.ascontiguousarray(a).tobytes())


# ----------------------------------------------------------------------------- read-ref
def read_ref(edr, out):
    rows = [4, 0, 1, 2]
    for name in sorted(os.listdir(edr)):
        if not name.endswith('.fits'):
            continue
        h = fits.open(os.path.join(edr, name))
        fm = h['FIBERMAP'].data
        stem = os.path.join(out, name[:-5])
        for arm in ARMS:
            res = h[arm + '_RESOLUTION'].data[rows].astype('<f4')
            mask = h[arm + '_MASK'].data[rows].astype(np.int64) & 0xffffffff
            write(stem + '.' + arm + '.bin', h[arm + '_WAVELENGTH'].data.astype('<f8'),
                  h[arm + '_FLUX'].data[rows].astype('<f4'),
                  h[arm + '_IVAR'].data[rows].astype('<f4'), mask.astype('<u4'), res)
        sc = h['SCORES'].data
        fam = [f for f in ('MEDIAN_CALIB_SNR', 'MEDIAN_COADD_SNR')
               if f + '_B' in sc.columns.names][0]
        sn = np.array([sc[fam + '_' + a] for a in ARMS], dtype='<f8')
        status = fm['FIBERSTATUS'] if 'FIBERSTATUS' in fm.columns.names \
            else fm['COADD_FIBERSTATUS']
        write(stem + '.fm.bin', fm['TARGETID'].astype('<i8'), status.astype('<i8'), sn)
        with open(stem + '.txt', 'w') as fp:
            fp.write('%s %d\n' % (fam, len(fm)))
            for t in fm['OBJTYPE']:
                fp.write('[%s]\n' % t)


# ----------------------------------------------------------------------------- bad inputs
def bad(edr, out):
    src = os.path.join(edr, 'coadd-5-169-thru20210419.fits')
    h0 = fits.open(src)

    def variant(name, change):
        h = fits.HDUList([hdu.copy() for hdu in h0])
        change(h)
        h.writeto(os.path.join(out, name), overwrite=True, output_verify='silentfix')

    with open(os.path.join(out, 'notfits.fits'), 'w') as fp:
        fp.write('this is not a FITS file\n' * 200)
    data = open(src, 'rb').read()
    with open(os.path.join(out, 'truncated.fits'), 'wb') as fp:
        fp.write(data[:len(data) // 2])
    with open(os.path.join(out, 'coadd-gz.fits.gz'), 'wb') as fp:
        fp.write(gzip.compress(data))
    variant('no-rflux.fits', lambda h: h.pop(h.index_of('R_FLUX')))
    variant('no-fibermap.fits', lambda h: h.pop(h.index_of('FIBERMAP')))
    variant('no-resolution.fits', lambda h: h.pop(h.index_of('B_RESOLUTION')))

    def shape(h):
        h['B_IVAR'].data = h['B_IVAR'].data[:4]
    variant('bad-shape.fits', shape)

    def wavelen(h):
        h['Z_WAVELENGTH'].data = h['Z_WAVELENGTH'].data[:-1]
    variant('bad-wavelength.fits', wavelen)

    def inttype(h):
        h['B_FLUX'] = fits.ImageHDU(np.zeros(h['B_FLUX'].data.shape, np.int32), name='B_FLUX')
    variant('int-flux.fits', inttype)

    def evenres(h):
        h['B_RESOLUTION'].data = h['B_RESOLUTION'].data[:, :10, :]
    variant('even-ndiag.fits', evenres)

    def empty(h):
        h['FIBERMAP'] = fits.BinTableHDU(h['FIBERMAP'].data[:0], name='FIBERMAP')
    variant('empty-fibermap.fits', empty)

    def dup(h):
        t = h['FIBERMAP'].data.copy()
        t['TARGETID'][1] = t['TARGETID'][0]
        h['FIBERMAP'] = fits.BinTableHDU(t, name='FIBERMAP')
        sc = h['SCORES'].data.copy()      # DESI writes the same TARGETIDs in SCORES
        sc['TARGETID'][1] = sc['TARGETID'][0]
        h['SCORES'] = fits.BinTableHDU(sc, name='SCORES')
    variant('dup-targetid.fits', dup)

    def nostatus(h):
        cols = [c for c in h['FIBERMAP'].columns if c.name != 'COADD_FIBERSTATUS']
        h['FIBERMAP'] = fits.BinTableHDU.from_columns(cols, name='FIBERMAP')
    variant('no-fiberstatus.fits', nostatus)

    def scores(h):
        h['SCORES'] = fits.BinTableHDU(h['SCORES'].data[:3], name='SCORES')
    variant('short-scores.fits', scores)

    # SCORES rows in reverse order (matched to FIBERMAP by TARGETID), and a SCORES row whose
    # TARGETID is not in FIBERMAP (an inconsistent file)
    def scores_reversed(h):
        h['SCORES'] = fits.BinTableHDU(h['SCORES'].data[::-1].copy(), name='SCORES')
    variant('scores-reversed.fits', scores_reversed)

    def scores_foreign(h):
        t = h['SCORES'].data.copy()
        t['TARGETID'][2] = 123456789
        h['SCORES'] = fits.BinTableHDU(t, name='SCORES')
    variant('scores-foreign.fits', scores_foreign)

    def int32mask(h):
        m = (h['B_MASK'].data.astype(np.int64) & 0xffffffff).astype(np.uint32).view(np.int32)
        m = m.copy()
        m[0, 0] = -2147483648  # bit 31 in a signed int32 mask
        m[0, 1] = 5
        h['B_MASK'] = fits.ImageHDU(m, name='B_MASK')
    variant('int32-mask.fits', int32mask)

    # a FIBERMAP header claiming 4e9 rows (a damaged NAXIS2 card): refused before allocating
    raw = bytearray(data)
    at = raw.find(b"EXTNAME = 'FIBERMAP'")
    start = raw.rfind(b'XTENSION', 0, at)
    card = raw.find(b'NAXIS2  =', start)
    raw[card:card + 80] = ('NAXIS2  = %20d / number of rows' % 4000000000).ljust(80).encode()
    with open(os.path.join(out, 'huge-fibermap.fits'), 'wb') as fp:
        fp.write(bytes(raw))

    # damaged headers (issue 19 item 10): reported as damaged, not as a missing HDU
    def edit_card(raw, extname, key, value):
        at = raw.find(b"EXTNAME = '%s" % extname.encode())
        start = raw.rfind(b'XTENSION', 0, at)
        card = raw.find(key.ljust(8).encode() + b'=', start)
        raw[card:card + 80] = ('%-8s= %20s' % (key, value)).ljust(80).encode()
    for name, ext, key, value in (('negative-naxis2.fits', 'B_FLUX', 'NAXIS2', '-5'),
                                  ('bitpix17.fits', 'B_FLUX', 'BITPIX', '17')):
        raw = bytearray(data)
        edit_card(raw, ext, key, value)
        with open(os.path.join(out, name), 'wb') as fp:
            fp.write(bytes(raw))
    raw = bytearray(data)
    at = raw.find(b"EXTNAME = 'B_FLUX")
    end = raw.find(b'END' + b' ' * 77, at)
    raw[end:end + 80] = b' ' * 80
    with open(os.path.join(out, 'no-end.fits'), 'wb') as fp:
        fp.write(bytes(raw))
    gz = bytearray(gzip.compress(data))
    for k in range(len(gz) // 3, len(gz) // 3 + 64):
        gz[k] ^= 0x5a
    with open(os.path.join(out, 'corrupt.fits.gz'), 'wb') as fp:
        fp.write(bytes(gz))

    hdus = [hdu.copy() for hdu in h0]
    # HDUs in another order: found by EXTNAME, never by position.
    fits.HDUList([hdus[0]] + hdus[:0:-1]).writeto(os.path.join(out, 'reordered.fits'),
                                                  overwrite=True)

    def nanarm(h):
        h['R_FLUX'].data[:] = np.nan
        h['Z_IVAR'].data[:] = 0
        h['B_MASK'].data[:] = 1
    variant('bad-arms.fits', nanarm)


# ----------------------------------------------------------------------------- select
def mkcols(spec):
    cols = []
    for name, fmt, values in spec:
        cols.append(fits.Column(name=name, format=fmt, array=np.array(values)))
    return cols


def spectra_hdus(n, nwave=20, flux=None, ivar=None, mask=None):
    hdus = []
    for i, arm in enumerate(ARMS):
        wave = 3600.0 + 2000 * i + 0.8 * np.arange(nwave)
        f = np.ones((n, nwave), np.float32) if flux is None else flux[i]
        iv = np.ones((n, nwave), np.float32) if ivar is None else ivar[i]
        m = np.zeros((n, nwave), np.int32) if mask is None else mask[i]
        hdus += [fits.ImageHDU(wave, name=arm + '_WAVELENGTH'),
                 fits.ImageHDU(f, name=arm + '_FLUX'), fits.ImageHDU(iv, name=arm + '_IVAR'),
                 fits.ImageHDU(m, name=arm + '_MASK'),
                 fits.ImageHDU(np.zeros((n, 11, nwave), np.float32), name=arm + '_RESOLUTION')]
    return hdus


def get_sns_ref(data, ivars, masks):
    # rvspecfit's get_sns, restated: median of flux*sqrt(ivar) over ivar > 0 and mask == 0.
    with np.errstate(all='ignore'):
        xsn = data.astype(np.float64) * np.sqrt(ivars.astype(np.float64))
        xsn[(ivars <= 0) | (masks != 0)] = np.nan
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            sns = np.nanmedian(xsn, axis=1)
    sns[~np.isfinite(sns)] = -1e9
    return sns


def select(out):
    B = lambda b: np.int64(1) << np.int64(b)  # noqa: E731
    # main-survey coadd: one row per rule.
    tid = np.arange(1000, 1012, dtype=np.int64)
    status = [0, 8, 1 << 20, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    objtype = ['TGT', 'TGT', 'TGT', 'TGT', 'SKY', 'BAD', 'TGT', 'TGT', 'TGT', 'TGT', 'NON', 'TGT']
    desi = [B(61), B(61), B(33), B(61), B(61), B(61), B(61), B(61), B(33), B(60), 0, B(35)]
    sn = np.array([[5, 1, 2], [5, 5, 5], [5, 5, 5], [5, 5, 5], [5, 5, 5], [5, 5, 5],
                   [5, np.nan, 5], [-5, -6, -7], [5, 5, 5], [5, 5, 5], [5, 5, 5], [1, 2, 0.5]])
    fm = mkcols([('TARGETID', 'K', tid), ('COADD_FIBERSTATUS', 'J', status),
                 ('OBJTYPE', '3A', objtype), ('DESI_TARGET', 'K', desi),
                 ('BGS_TARGET', 'K', np.zeros(12, np.int64)),
                 ('MWS_TARGET', 'K', np.zeros(12, np.int64)),
                 ('SCND_TARGET', 'K', np.zeros(12, np.int64))])
    sc = mkcols([('TARGETID', 'K', tid)] +
                [('MEDIAN_COADD_SNR_' + a, 'E', sn[:, i]) for i, a in enumerate(ARMS)])
    os.makedirs(os.path.join(out, 'main'), exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fm, name='FIBERMAP'),
                  fits.BinTableHDU.from_columns(mkcols([('TARGETID', 'K', tid)]),
                                                name='EXP_FIBERMAP')] +
                 spectra_hdus(12) +
                 [fits.BinTableHDU.from_columns(sc, name='SCORES')]).writeto(
        os.path.join(out, 'main', 'coadd-main-1.fits'), overwrite=True)
    # its redrock file, row-matched: stars at rows 0, 2; |z| small at 9; galaxies elsewhere.
    spectype = ['STAR', 'GALAXY', 'STAR', 'GALAXY', 'GALAXY', 'GALAXY', 'GALAXY', 'GALAXY',
                'GALAXY', 'GALAXY', 'QSO', 'GALAXY']
    z = [1e-4, 0.5, 2e-4, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.004, 2.0, 0.0051]
    subtype = ['G', '', 'K', '', '', '', '', '', '', '', '', '']
    rr = mkcols([('TARGETID', 'K', tid), ('Z', 'D', z), ('ZERR', 'D', np.zeros(12)),
                 ('ZWARN', 'K', np.zeros(12, np.int64)), ('SPECTYPE', '6A', spectype),
                 ('SUBTYPE', '20A', subtype)])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(rr, name='REDSHIFTS')]
                 ).writeto(os.path.join(out, 'main', 'redrock-main-1.fits'), overwrite=True)

    # spectra file with exposures (EXPID, FIBERSTATUS, MEDIAN_CALIB_SNR), and a gzipped
    # redrock file with fewer rows, matched by TARGETID.
    n = 8
    tid2 = np.array([1, 2, 3, 1, 2, 3, 4, 5], np.int64)
    expid = np.array([10, 10, 10, 11, 11, 11, 12, -1], np.int64)
    fm = mkcols([('TARGETID', 'K', tid2), ('FIBER', 'J', np.arange(n)),
                 ('FIBERSTATUS', 'J', np.zeros(n, np.int32)), ('OBJTYPE', '3A', ['TGT'] * n),
                 ('EXPID', 'J', expid),
                 ('SV1_DESI_TARGET', 'K', [B(3)] * 4 + [0] * 4),
                 ('DESI_TARGET', 'K', np.zeros(n, np.int64))])
    sc = mkcols([('TARGETID', 'K', tid2)] +
                [('MEDIAN_CALIB_SNR_' + a, 'D', np.ones(n)) for a in ARMS])
    os.makedirs(os.path.join(out, 'sv1'), exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fm, name='FIBERMAP'),
                  fits.BinTableHDU.from_columns(sc, name='SCORES')] +
                 spectra_hdus(n)).writeto(os.path.join(out, 'sv1', 'spectra-sv1-2.fits'),
                                          overwrite=True)
    rr = mkcols([('TARGETID', 'K', [3, 1, 4, 1]), ('Z', 'D', [0.0001, 0.7, 0.2, 0.0002]),
                 ('SPECTYPE', '6A', ['STAR', 'GALAXY', 'QSO', 'STAR']),
                 ('SUBTYPE', '20A', ['M', '', '', 'F'])])
    p = os.path.join(out, 'sv1', 'redrock-sv1-2.fits')
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(rr, name='REDSHIFTS')]
                 ).writeto(p, overwrite=True)
    with open(p, 'rb') as fi, gzip.open(p + '.gz', 'wb') as fo:
        fo.write(fi.read())
    os.remove(p)

    # legacy zbest file with wrong TARGETIDs but the same length (row match must fail).
    os.makedirs(os.path.join(out, 'legacy'), exist_ok=True)
    shutil.copy(os.path.join(out, 'main', 'coadd-main-1.fits'),
                os.path.join(out, 'legacy', 'coadd-x.fits'))
    rr = mkcols([('TARGETID', 'K', tid[::-1]), ('Z', 'D', z), ('SPECTYPE', '6A', spectype),
                 ('SUBTYPE', '20A', subtype)])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(rr, name='ZBEST')]
                 ).writeto(os.path.join(out, 'legacy', 'zbest-x.fits'), overwrite=True)

    # cmx and sv3 tables; no SCORES: S/N from the spectra.
    rng = np.random.default_rng(5)
    n = 6
    flux = [rng.normal(3, 1, (n, 20)).astype(np.float32) for _ in ARMS]
    ivar = [rng.uniform(0, 4, (n, 20)).astype(np.float32) for _ in ARMS]
    mask = [(rng.uniform(0, 1, (n, 20)) < 0.2).astype(np.int32) for _ in ARMS]
    ivar[0][1, :5] = 0
    flux[1][2, 3] = np.nan
    mask[2][3, :] = 1          # no good pixel in z: -1e9 there
    ivar[0][4, :] = -1
    flux[0][4, :] = np.nan     # b hopeless, r/z fine
    for surv, cols in (('cmx', [('CMX_TARGET', 'K', [1, 2, 8, 0, 1, 512])]),
                       ('sv3', [('SV3_DESI_TARGET', 'K', [8, 0, B(61), 8, 0, 0]),
                                ('SV3_MWS_TARGET', 'K', np.zeros(n, np.int64))])):
        fm = mkcols([('TARGETID', 'K', np.arange(n) + 50), ('COADD_FIBERSTATUS', 'J',
                                                            np.zeros(n, np.int32)),
                     ('OBJTYPE', '3A', ['TGT'] * n)] + cols)
        os.makedirs(os.path.join(out, surv), exist_ok=True)
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fm, name='FIBERMAP')] +
                     spectra_hdus(n, 20, flux, ivar, mask)).writeto(
            os.path.join(out, surv, 'coadd-%s-3.fits' % surv), overwrite=True)
    with open(os.path.join(out, 'sn_ref.txt'), 'w') as fp:
        for i in range(len(ARMS)):
            fp.write(' '.join('%.17g' % v for v in get_sns_ref(flux[i], ivar[i], mask[i])) +
                     '\n')
    with open(os.path.join(out, 'ids_good.txt'), 'w') as fp:
        fp.write('1005 1000\n\n  1000\t1002\n')
    with open(os.path.join(out, 'ids_junk.txt'), 'w') as fp:
        fp.write('1005\n1000\n10x2\n')


# ----------------------------------------------------------------------------- prepare
def interp_ref(spec, bad):
    # runs of bad pixels: constant from the good neighbour at the ends, linear inside.
    out = spec.copy()
    n = len(spec)
    if bad.all() or not bad.any():
        return out
    i = 0
    while i < n:
        if not bad[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and bad[j + 1]:
            j += 1
        if i == 0:
            out[:j + 1] = spec[j + 1]
        elif j == n - 1:
            out[i:] = spec[i - 1]
        else:
            x = np.arange(i, j + 1)
            out[i:j + 1] = spec[i - 1] + (spec[j + 1] - spec[i - 1]) * (x - (i - 1)) / (j - i + 2)
        i = j + 1
    return out


def resolution_ref(data, pix, sig0):
    # R[i, i+off] = data[h-off, i+off]; row form rows[r, i] = R[i, i+r-h] (wrapping like np.roll)
    w, n = data.shape
    h = w // 2
    rows = np.zeros((w, n))
    for r in range(w):
        rows[r] = np.roll(data[2 * h - r].astype(np.float64), h - r)
    for i in range(h):
        rows[:h - i - 1, i] = 0
        rows[h + 1 + i:, n - 1 - i] = 0
    s = sig0 / pix
    x = np.arange(w)
    g = np.exp(-0.5 * ((x[None, :] - x[:, None]) / s) ** 2) / np.sqrt(2 * np.pi) / s
    rows = np.linalg.solve(g, rows)
    mult = np.median(rows.sum(axis=0))
    if mult == 0:
        mult = 1
    for i in range(h):
        n1 = rows[h - i:, i].sum()
        rows[:, i] *= mult / (n1 + (n1 == 0))
        n2 = rows[:h + 1 + i, n - 1 - i].sum()
        rows[:, n - 1 - i] *= mult / (n2 + (n2 == 0))
    outd = np.zeros((w, n))
    for k in range(w):
        outd[k] = np.roll(rows[2 * h - k], h - k)
    return outd


def prepare_ref(wave, flux, ivar, mask, res, dichroic, use_res, sig0):
    """Expected output of get_specdata for one arm, float32 as rvspecfit keeps it."""
    spec = flux.copy()
    iv = ivar.copy()
    badmask = mask != 0
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        med = np.nanmedian(spec)
        if badmask.all():
            return None
        if med == 0:
            med = np.nanmedian(spec[(spec > 0) & ~badmask])
            if not np.isfinite(med):
                med = np.nanmedian(np.abs(spec))
    if not np.isfinite(med) or med == 0:
        return None
    with np.errstate(all='ignore'):
        baddat = ~np.isfinite(spec) | ~np.isfinite(iv)
        baderr = iv <= 0
    dic = (wave > 4300) & (wave < 4450) if dichroic else np.zeros(len(wave), bool)
    edge = np.zeros(len(wave), bool)
    rout = None
    if use_res:
        rout = resolution_ref(res, wave[1] - wave[0], sig0)
        edge[:5] = True
        edge[-5:] = True
    badall = baddat | badmask | baderr | dic | edge
    interp = baddat | badmask | baderr
    iv[badall] = 1. / med ** 2 / 1000 ** 2
    spec = interp_ref(spec.astype(np.float64), interp).astype(np.float32)
    espec = 1. / iv ** .5
    if badall.all():
        return None  # rvsfit-cl skips an arm with no good pixel (rvspecfit fits it)
    floor = np.median(espec[~badall]) * 0.3
    espec[(espec < floor) & ~badall] = floor
    return spec.astype(np.float64), espec.astype(np.float64), badall.astype(np.uint8), rout


def gauss_res(n, w, rng, width=1.0):
    h = w // 2
    data = np.zeros((w, n), np.float32)
    for j in range(n):
        s = width * rng.uniform(0.8, 1.2)
        k = np.exp(-0.5 * (np.arange(-h, h + 1) / s) ** 2)
        data[:, j] = (k / k.sum())[::-1]
    data[:, :2] *= 1.1  # imperfect edges, as real files have
    data[0, -1] = 0.03  # a padding value that the wrapped entry carries
    return data


def prepare(out):
    rng = np.random.default_rng(11)
    cases = []

    def case(name, n=300, w0=4200.0, step=0.8, dichroic=1, use_res=0, sig0=0.5, ndiag=11,
             edit=None, width=1.0):
        wave = w0 + step * np.arange(n)
        flux = rng.normal(10, 2, n).astype(np.float32)
        ivar = rng.uniform(0.5, 2, n).astype(np.float32)
        mask = np.zeros(n, np.uint32)
        res = gauss_res(n, ndiag, rng, width)
        if edit:
            edit(flux, ivar, mask)
        cases.append((name, wave, flux, ivar, mask, res, dichroic, use_res, sig0))

    def runs(f, iv, m):
        m[:4] = 1           # run at the start
        iv[-3:] = 0         # run at the end
        f[100:103] = np.nan  # interior run
        iv[150] = np.inf
        m[len(m) // 2 + 20] = 1 << 31  # only the top bit
        f[50] = np.inf

    def clamp(f, iv, m):
        iv[10:20] = 1e6     # tiny errors: clamped to 0.3 x median

    def allmasked(f, iv, m):
        m[:] = 4

    def zeromed(f, iv, m):
        f[:200] = 0
        f[200:] = np.abs(f[200:])

    def zeromed2(f, iv, m):
        # median 0, no positive unmasked pixel: the median of |flux| is used
        f[:100] = -np.abs(f[:100])
        f[100:200] = 0
        f[200:] = np.abs(f[200:])
        m[200:] = 2

    def allzero(f, iv, m):
        f[:] = 0

    def allnan(f, iv, m):
        f[:] = np.nan

    def zeroivar(f, iv, m):
        iv[:] = 0

    case('clean')
    case('nodichroic', dichroic=0)
    case('runs', edit=runs)
    case('clamp', edit=clamp)
    case('allmasked', edit=allmasked)
    case('zeromedian', edit=zeromed)
    case('zeromedian_abs', edit=zeromed2)
    case('allzero', edit=allzero)
    case('allnan', edit=allnan)
    case('zeroivar', edit=zeroivar)
    case('res11', n=200, w0=5000.0, use_res=1, edit=runs)
    case('res7', n=120, w0=7600.0, use_res=1, sig0=0.3, ndiag=7, width=0.8)
    case('res11_wide', n=150, w0=6000.0, step=0.6, use_res=1, sig0=0.7, width=1.6)
    with open(os.path.join(out, 'index.txt'), 'w') as idx:
        for (name, wave, flux, ivar, mask, res, dic, use_res, sig0) in cases:
            r = prepare_ref(wave, flux, ivar, mask, res, dic, use_res, sig0)
            n, w = len(wave), res.shape[0]
            idx.write('%s %d %d %d %d %.17g %d\n' % (name, n, w, dic, use_res, sig0,
                                                    r is not None))
            write(os.path.join(out, name + '.in'), wave.astype('<f8'), flux.astype('<f4'),
                  ivar.astype('<f4'), mask.astype('<u4'), res.astype('<f4'))
            if r is not None:
                arrays = [r[0].astype('<f8'), r[1].astype('<f8'), r[2]]
                if use_res:
                    arrays.append(r[3].astype('<f8'))
                write(os.path.join(out, name + '.out'), *arrays)


# ----------------------------------------------------------------------------- big (benchmarks)
def big(src, n, out):
    """A coadd of n rows made by tiling the rows of `src` (TARGETIDs made unique, every fiber
    good): the input of benchmarks/bench_io at realistic sizes."""
    h = fits.open(src)
    n0 = len(h['FIBERMAP'].data)
    idx = np.arange(n) % n0
    hdus = [h[0].copy()]
    for hdu in h[1:]:
        name = hdu.name
        if isinstance(hdu, fits.BinTableHDU) and name in ('FIBERMAP', 'SCORES'):
            t = hdu.data[idx].copy()
            t['TARGETID'] = np.arange(n) + 1
            if name == 'FIBERMAP':
                t['OBJTYPE'] = 'TGT'
                t['COADD_FIBERSTATUS' if 'COADD_FIBERSTATUS' in t.columns.names
                  else 'FIBERSTATUS'] = 0
            hdus.append(fits.BinTableHDU(t, name=name))
        elif name.endswith(('_FLUX', '_IVAR', '_MASK', '_RESOLUTION')):
            hdus.append(fits.ImageHDU(hdu.data[idx], name=name))
        elif name != 'EXP_FIBERMAP':
            hdus.append(hdu.copy())
    fits.HDUList(hdus).writeto(out, overwrite=True)


# ----------------------------------------------------------------------------- rows
def rows(src, out, order):
    """SRC with only the rows `order`, in that order, in every per-target HDU (FIBERMAP, SCORES
    and each arm's FLUX, IVAR, MASK, RESOLUTION); the rest copied. Checksums are dropped, not
    kept stale."""
    order = np.asarray(order)
    with fits.open(src) as h:
        hdus = fits.HDUList()
        for hdu in h:
            if hdu.name in ('FIBERMAP', 'SCORES'):
                hdu = fits.BinTableHDU(hdu.data[order], header=hdu.header)
            elif hdu.name[:2] in ('B_', 'R_', 'Z_') and hdu.name[2:] != 'WAVELENGTH':
                hdu = fits.ImageHDU(hdu.data[order], header=hdu.header)
            else:
                hdu = hdu.copy()
            for key in ('CHECKSUM', 'DATASUM'):
                hdu.header.pop(key, None)
            hdus.append(hdu)
        hdus.writeto(out, overwrite=True)


if __name__ == '__main__':
    mode = sys.argv[1]
    if mode == 'read-ref':
        read_ref(sys.argv[2], sys.argv[3])
    elif mode == 'bad':
        bad(sys.argv[2], sys.argv[3])
    elif mode == 'select':
        select(sys.argv[2])
    elif mode == 'prepare':
        prepare(sys.argv[2])
    elif mode == 'rows':
        rows(sys.argv[2], sys.argv[3], [int(r) for r in sys.argv[4].split(',')])
    elif mode == 'big':
        big(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit('unknown mode ' + mode)
