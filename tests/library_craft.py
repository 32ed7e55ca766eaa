# library_craft.py: helper of tests/test_library.c.
#
#   python3 library_craft.py bad GOOD_FILE OUT_DIR    broken copies of a valid library file
#   python3 library_craft.py verify FILE [OTHER]       astropy opens FILE, its checksums verify,
#                                                      and (with OTHER) it has OTHER's HDUs,
#                                                      keywords and data
#
# "bad" writes OUT_DIR/<case>/rvsfit_<setup>.fits for every case and OUT_DIR/cases.txt with one
# line "<case>|<text the loader's message must contain>". Every file but the checksum cases is
# written with valid checksums, so the loader gets as far as the defect the case plants. GOOD_FILE
# is rvs-import's conversion without an LSF option (format version 2, LSFTYPE = 'UNKNOWN'); the
# LSF cases (doc/template-library.md 2.1) set the keywords and the LSF table themselves, and
# "<case>|OK" lines are variants the loader must accept (a version-1 file among them).
import os
import shutil
import sys
import warnings

import numpy as np
from astropy.io import fits


def hull_cols(x, y):
    """Facet equations (outward unit normals and offsets) of the polygon x, y in this order."""
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    dx, dy = x1 - x, y1 - y
    ln = np.hypot(dx, dy)
    nx, ny = dy / ln, -dx / ln
    return nx, ny, -(nx * x + ny * y)


def hull_hdu(old, x, y, nx=None, ny=None, off=None):
    if nx is None:
        nx, ny, off = hull_cols(x, y)
    cols = [fits.Column(name=n, format='D', array=a)
            for n, a in (('X', x), ('Y', y), ('NX', nx), ('NY', ny), ('OFFSET', off))]
    h = fits.BinTableHDU.from_columns(cols, header=old.header.copy(), name=old.name)
    return h


def mode_bad(good, out):
    cases = []
    base = os.path.basename(good)

    def emit(case, expect, edit, checksum=True):
        d = os.path.join(out, case)
        os.makedirs(d, exist_ok=True)
        with fits.open(good) as f:
            hdul = fits.HDUList([h.copy() for h in f])
        hdul = edit(hdul) or hdul
        hdul.writeto(os.path.join(d, base), overwrite=True, checksum=checksum)
        cases.append('%s|%s' % (case, expect))

    def set_key(k, v):
        def e(h):
            h[0].header[k] = v
        return e

    emit('version', 'format version 3; this rvsfit-cl', set_key('RVSFVER', 3))
    emit('foreign', 'not an rvsfit-cl template library', set_key('RVSFMT', 'something else'))
    emit('setup', 'but the file is not called', set_key('SETUP', 'desi_q'))
    emit('nonlin', "NONLIN = 'ReLU'", set_key('NONLIN', 'ReLU'))
    emit('keytype', 'keyword NPIX', set_key('NPIX', '6215'))
    emit('logclip', 'LOGCLIP = 100', set_key('LOGCLIP', 100.0))

    def del_key(h):
        del h[0].header['WIDTH']
    emit('nokey', 'required keyword WIDTH is missing', del_key)

    def drop_hdu(h):
        del h['LIN1_W']
    emit('nohdu', 'HDU LIN1_W: missing', drop_hdu)

    def bad_shape(h):
        h['LIN1_W'].data = np.ascontiguousarray(h['LIN1_W'].data[:, :-1])
    emit('shape', 'HDU LIN1_W: shape [64, 63], expected [64, 64]', bad_shape)

    def bad_type(h):
        h['LIN0_B'].data = h['LIN0_B'].data.astype(np.float64)
    emit('dtype', 'HDU LIN0_B: BITPIX = -64, expected -32', bad_type)

    def nan_weight(h):
        d = h['PC_W'].data.copy()
        d[3, 2] = np.nan
        h['PC_W'].data = d
    emit('nan', 'HDU PC_W: element 62 is nan', nan_weight)

    # the fixture has no BatchNorm: add BN1 HDUs (identity statistics) for the BatchNorm cases
    def add_bn(h, withbn=True, skip=None, var=None):
        h[0].header['WITHBN'] = withbn
        w = h[0].header['WIDTH']
        pos = h.index_of('LIN1_B') + 1
        for suffix, key, val in (('W', 'weight', 1.0), ('B', 'bias', 0.0),
                                 ('MEAN', 'running_mean', 0.0), ('VAR', 'running_var', 1.0)):
            name = 'BN1_' + suffix
            if name == skip:
                continue
            arr = np.full(w, val, dtype=np.float32)
            if suffix == 'VAR' and var is not None:
                arr[5] = var
            hdu = fits.ImageHDU(arr, name=name)
            hdu.header['SRCKEY'] = 'model.bn_1.' + key
            h.insert(pos, hdu)
            pos += 1
    emit('bn_ok', 'OK', add_bn)
    emit('bnvar', 'HDU BN1_VAR: element 5 is -0.25: BatchNorm variances must be >= 0',
         lambda h: add_bn(h, var=-0.25))
    emit('bnflag', 'HDU BN1_W: present although WITHBN = F', lambda h: add_bn(h, withbn=False))
    emit('bnmissing', 'HDU BN1_MEAN: missing', lambda h: add_bn(h, skip='BN1_MEAN'))

    def zero_s(h):
        d = h['PARAMS'].data
        d['S'][1] = 0.0
    emit('szero', 'S = 0: both must be finite and S non-zero', zero_s)

    def wave_step(h):
        d = h['WAVE'].data.copy()
        d[100] *= 1 + 1e-5
        h['WAVE'].data = d
    emit('wave', 'HDU WAVE: step 100 deviates from LOGSTEP', wave_step)

    def open_hull(h):
        t = h['HULL1']
        d = t.data
        # the last facet no longer closes the polygon: drop its row but keep the other facets
        h['HULL1'] = hull_hdu(t, d['X'][:-1], d['Y'][:-1], d['NX'][:-1], d['NY'][:-1],
                              d['OFFSET'][:-1])
    emit('openhull', 'HDU HULL1: row', open_hull)

    def concave_hull(h):
        t = h['HULL2']
        d = t.data
        x, y = np.array(d['X']), np.array(d['Y'])
        # a new vertex between vertices 0 and 1, pulled towards the centroid: every facet still
        # joins its two vertices, but the polygon has a reflex corner
        mx, my = 0.5 * (x[0] + x[1]), 0.5 * (y[0] + y[1])
        mx, my = mx + 0.3 * (x.mean() - mx), my + 0.3 * (y.mean() - my)
        x, y = np.insert(x, 1, mx), np.insert(y, 1, my)
        h['HULL2'] = hull_hdu(t, x, y)
    emit('concave', 'the polygon is not convex', concave_hull)

    def clockwise(h):
        t = h['HULL1']
        d = t.data
        x, y = np.array(d['X'])[::-1], np.array(d['Y'])[::-1]
        nx, ny, off = hull_cols(x, y)
        # outward normals again (hull_cols assumes counter-clockwise order): only the order
        # of the vertices is wrong
        h['HULL1'] = hull_hdu(t, x, y, -nx, -ny, -off)
    emit('clockwise', 'vertices are not in counter-clockwise order', clockwise)

    def long_normal(h):
        t = h['HULL1']
        d = t.data
        h['HULL1'] = hull_hdu(t, np.array(d['X']), np.array(d['Y']), 2 * d['NX'], 2 * d['NY'],
                              2 * d['OFFSET'])
    emit('normal', 'must be 1 within', long_normal)

    def hull_names(h):
        h['HULL2'].header['HULLP1'] = 'logg'
    emit('hullname', "HULLP1/HULLP2 = 'logg'", hull_names)

    # ---- the templates' LSF (format version 2, section 2.1)
    def lsf(kind='GAUSSIAN', sigma=0.6, rmat=False, drop=(), table=None, version=None):
        def e(h):
            hd = h[0].header
            hd['LSFTYPE'] = kind
            if sigma is not None:
                hd.set('LSFSIG', sigma, '[Angstrom] its Gaussian sigma (table: median)',
                       after='LSFTYPE')
            hd['LSFRMAT'] = rmat
            for k in drop:
                del hd[k]
            if version is not None:
                hd['RVSFVER'] = version
            if table is not None:
                cols = [fits.Column(name='WAVE', format='D', unit='Angstrom',
                                    array=np.asarray(table[0], dtype=np.float64)),
                        fits.Column(name='SIGMA', format='D', unit='Angstrom',
                                    array=np.asarray(table[1], dtype=np.float64))]
                h.append(fits.BinTableHDU.from_columns(cols, name='LSF'))
        return e
    emit('lsf_ok', 'OK', lsf(rmat=True))
    emit('lsftable_ok', 'OK', lsf(table=([3500, 4500, 6000], [0.55, 0.6, 0.7])))
    # a version-1 file has no LSF keywords and loads as unknown
    emit('v1_ok', 'OK', lsf(sigma=None, drop=('LSFTYPE', 'LSFRMAT'), version=1))
    emit('lsftype', "LSFTYPE = 'LORENTZ': must be 'GAUSSIAN' or 'UNKNOWN'",
         lsf(kind='LORENTZ', sigma=None))
    emit('lsfsig', 'required keyword LSFSIG is missing', lsf(sigma=None))
    emit('lsfrange', 'LSFSIG = 150: the Gaussian sigma must be in (0, 100)', lsf(sigma=150.0))
    emit('lsfrmat', 'required keyword LSFRMAT is missing', lsf(drop=('LSFRMAT',)))
    emit('lsfv2', 'required keyword LSFTYPE is missing',
         lsf(sigma=None, drop=('LSFTYPE', 'LSFRMAT')))
    emit('lsfunkrmat', "LSFTYPE = 'UNKNOWN' with LSFRMAT = T",
         lsf(kind='UNKNOWN', sigma=None, rmat=True))
    emit('lsfunktable', "HDU LSF: an LSF table needs LSFTYPE = 'GAUSSIAN'",
         lsf(kind='UNKNOWN', sigma=None, table=([3500, 6000], [0.5, 0.6])))
    emit('lsftableorder', 'HDU LSF: row 2: WAVE must increase strictly',
         lsf(table=([3500, 4500, 4500], [0.5, 0.6, 0.7])))
    emit('lsftablesig', 'HDU LSF: row 1: WAVE = 4500, SIGMA = 0',
         lsf(table=([3500, 4500], [0.5, 0.0])))
    emit('lsftablerows', 'HDU LSF: 1 rows: an LSF table needs 2..4096',
         lsf(table=([3500], [0.5])))

    def strip_checksums(h):
        for hdu in h:
            for k in ('CHECKSUM', 'DATASUM'):
                if k in hdu.header:
                    del hdu.header[k]
    emit('nochecksum', 'keyword missing (every HDU must carry', strip_checksums, checksum=False)

    # one flipped byte in PC_W's data unit, checksums left as they were
    d = os.path.join(out, 'flipped')
    os.makedirs(d, exist_ok=True)
    dest = os.path.join(d, base)
    shutil.copy(good, dest)
    os.chmod(dest, 0o644)
    with fits.open(good) as f:
        where = f['PC_W'].fileinfo()['datLoc'] + 1000
    with open(dest, 'r+b') as fh:
        fh.seek(where)
        b = fh.read(1)
        fh.seek(where)
        fh.write(bytes([b[0] ^ 0x40]))
    cases.append('flipped|HDU PC_W: DATASUM does not match')

    # not FITS at all
    d = os.path.join(out, 'notfits')
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, base), 'w') as fh:
        fh.write('this is not a FITS file\n' * 200)
    cases.append('notfits|open the template-library file')

    with open(os.path.join(out, 'cases.txt'), 'w') as fh:
        fh.write('\n'.join(cases) + '\n')


def mode_verify(path, other=None):
    bad = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with fits.open(path, checksum=True) as f:
            for hdu in f:
                hdu.data  # noqa: B018
                if 'CHECKSUM' not in hdu.header or 'DATASUM' not in hdu.header:
                    bad.append('%s: HDU %s lacks CHECKSUM/DATASUM' % (path, hdu.name))
                elif hdu.verify_checksum() != 1 or hdu.verify_datasum() != 1:
                    bad.append('%s: HDU %s: checksums do not verify' % (path, hdu.name))
            if other:
                with fits.open(other) as g:
                    na, nb = [h.name for h in f], [h.name for h in g]
                    if na != nb:
                        bad.append('HDUs %r != %r' % (na, nb))
                    for a, b in zip(f, g):
                        skip = {'CHECKSUM', 'DATASUM', 'DATE', 'CREATOR', 'CREATVER', 'COMMENT'}
                        ka = {k: a.header[k] for k in a.header if k not in skip}
                        kb = {k: b.header[k] for k in b.header if k not in skip}
                        if ka != kb:
                            diff = sorted(set(ka.items()) ^ set(kb.items()), key=str)
                            bad.append('HDU %s: keywords differ: %r' % (a.name, diff[:6]))
                        if a.data is None or b.data is None:
                            continue
                        if hasattr(a.data, 'columns'):
                            for c in a.data.columns.names:
                                x, y = a.data[c], b.data[c]
                                if x.dtype.kind in 'US':  # padding: NUL (astropy), blank (cfitsio)
                                    x = [str(v).rstrip() for v in x]
                                    y = [str(v).rstrip() for v in y]
                                if not np.array_equal(x, y):
                                    bad.append('HDU %s column %s differs' % (a.name, c))
                        elif (a.data.dtype != b.data.dtype
                              or a.data.tobytes() != b.data.tobytes()):
                            bad.append('HDU %s data differs' % a.name)
    for b in bad:
        print('FAIL: ' + b, file=sys.stderr)
    print('verify %s: %s' % (path, 'ok' if not bad else '%d problem(s)' % len(bad)))
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    if sys.argv[1] == 'bad':
        mode_bad(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == 'verify':
        mode_verify(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit('unknown mode ' + sys.argv[1])
