# library_ref.py: an independent (astropy + numpy) reader and evaluator of rvsfit-cl's template
# library format, written from doc/template-library.md with no code shared with the C loader or
# tools/rvs-import; the reference of tests/rvs_import_check.py, tests/train_check.py and
# tests/eval_check.py. Also their check()/finish() reporting.
import sys
import warnings

import numpy as np
from astropy.io import fits

# ------------------------------------------------------------------ the documented format
# (keyword, python type) of the primary header, per doc/template-library.md (LSFTYPE and LSFRMAT:
# format version 2, section 2.1; LSFSIG only with LSFTYPE = 'GAUSSIAN', see read_lsf)
PRIMARY_KEYS = [
    ('RVSFMT', str), ('RVSFVER', int), ('SETUP', str), ('EMULATOR', str), ('NPARAM', int),
    ('NPIX', int), ('LOGSTEP', float), ('WAVEREF', str), ('INDIM', int), ('NLAYERS', int),
    ('WIDTH', int), ('NPC', int), ('WITHBN', bool), ('BNPOS', str), ('BNEPS', float),
    ('NONLIN', str), ('OUTPUT', str), ('LOGCLIP', float), ('NHULL', int), ('HULLSPC', str),
    ('LSFTYPE', str), ('LSFRMAT', bool), ('CREATOR', str), ('CREATVER', str), ('DATE', str),
    ('GRIDNAME', str), ('LIBREV', str), ('SRCSOFT', str), ('SRCVER', str), ('SRCH5', str),
    ('SRCH5SHA', str), ('SRCNN', str), ('SRCNNSHA', str), ('CKPTVER', int), ('NNARCHV', int),
]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print('FAIL: ' + what, file=sys.stderr)
    return cond


def finish():
    if failures:
        print('%d check(s) failed' % len(failures), file=sys.stderr)
        sys.exit(1)
    print('all checks passed')
    sys.exit(0)


def checksums_ok(path):
    """True when every HDU has CHECKSUM and DATASUM and astropy verifies both."""
    ok = True
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # astropy warns on a mismatch; we report it ourselves
        f = fits.open(path, checksum=True)
        for hdu in f:
            hdu.data  # noqa: B018 (load the data unit so the datasum is computed)
            if 'CHECKSUM' not in hdu.header or 'DATASUM' not in hdu.header:
                ok = False
            if hdu.verify_checksum() != 1 or hdu.verify_datasum() != 1:
                ok = False
        f.close()
    return ok


# FWHM / sigma of a Gaussian, 2 sqrt(2 ln 2)
FWHM_PER_SIGMA = 2.3548200450309493


def read_lsf(path):
    """The templates' LSF of section 2.1 as a dict (version, type 'GAUSSIAN' or 'UNKNOWN', sigma
    or None, rmat, table: (wave, sigma) arrays or None), checking the rules of that section;
    a version-1 file reads as unknown, LSFRMAT F. A rule broken is a failed check()."""
    with fits.open(path) as f:
        h = f[0].header
        version = h.get('RVSFVER')
        out = dict(version=version, type='UNKNOWN', sigma=None, rmat=False, table=None)
        if version == 1:
            check('LSFTYPE' not in h and 'LSF' not in f, path + ': LSF keywords in version 1')
            return out
        check(version == 2, '%s: RVSFVER = %r' % (path, version))
        out['type'] = h.get('LSFTYPE')
        check(out['type'] in ('GAUSSIAN', 'UNKNOWN'), '%s: LSFTYPE = %r' % (path, out['type']))
        rmat = h.get('LSFRMAT')
        check(type(rmat) is bool, '%s: LSFRMAT = %r is not a logical' % (path, rmat))
        out['rmat'] = bool(rmat)
        if out['type'] == 'GAUSSIAN':
            sig = h.get('LSFSIG')
            if check(type(sig) is float and 0 < sig < 100, '%s: LSFSIG = %r' % (path, sig)):
                out['sigma'] = sig
        else:
            check('LSFSIG' not in h, path + ': LSFSIG with LSFTYPE = UNKNOWN')
            check(not out['rmat'], path + ': LSFTYPE = UNKNOWN with LSFRMAT = T')
        if 'LSF' in f:
            check(out['type'] == 'GAUSSIAN', path + ': an LSF table needs LSFTYPE = GAUSSIAN')
            d = f['LSF'].data
            w, s = np.array(d['WAVE'], dtype=np.float64), np.array(d['SIGMA'], dtype=np.float64)
            check(2 <= len(w) <= 4096 and np.all(np.diff(w) > 0) and np.all(s > 0),
                  path + ': LSF table rows')
            out['table'] = (w, s)
    return out


# ------------------------------------------------------------------ reference evaluation
def load_library(path):
    with fits.open(path) as f:
        h = f[0].header
        lib = dict(setup=h['SETUP'], nlayers=h['NLAYERS'], withbn=h['WITHBN'], eps=h['BNEPS'],
                   clip=h['LOGCLIP'], wave=f['WAVE'].data.astype(np.float64),
                   logstep=h['LOGSTEP'])
        p = f['PARAMS'].data
        lib['names'] = [str(n).strip() for n in p['NAME']]
        lib['log10'] = np.array(p['LOG10'], dtype=bool)
        lib['M'] = np.array(p['M'], dtype=np.float64)
        lib['S'] = np.array(p['S'], dtype=np.float64)
        arrays = {}
        for hdu in f[1:]:
            if hdu.name.startswith(('LIN', 'BN', 'PC_')):
                arrays[hdu.name] = hdu.data.astype(np.float32)
        lib['arrays'] = arrays
        lib['hulls'] = []
        for n in range(1, h['NHULL'] + 1):
            t = f['HULL%d' % n]
            d = t.data
            lib['hulls'].append(dict(i1=t.header['HULLI1'], i2=t.header['HULLI2'],
                                     x=np.array(d['X']), y=np.array(d['Y']),
                                     nx=np.array(d['NX']), ny=np.array(d['NY']),
                                     off=np.array(d['OFFSET'])))
    return lib


def map_params(lib, theta, like_rvspecfit=True):
    """Mapping of the doc: log10 of flagged parameters, then (y - M) / S. rvspecfit's Mapper
    rounds the parameters to float32 and takes log10 in float32 (NNInterpolator.Mapper.forward);
    like_rvspecfit=False does everything in double, as the C loader may."""
    if like_rvspecfit:
        x = np.asarray(theta, dtype=np.float32)
        y = x.copy()
        y[..., lib['log10']] = np.log10(x[..., lib['log10']])
        return (y.astype(np.float64) - lib['M']) / lib['S']
    x = np.asarray(theta, dtype=np.float64).copy()
    x[..., lib['log10']] = np.log10(x[..., lib['log10']])
    return (x - lib['M']) / lib['S']


def silu(z):
    return z / (1.0 + np.exp(-z))


def forward(lib, mapped, like_rvspecfit=True, log=False):
    """Network of the doc, unfolded, in double from the float32 weights: the flux (the clipped
    log-flux with log=True). rvspecfit feeds the network float32 inputs
    (torch.tensor(x, dtype=float32) in RVSInterpolator.__call__)."""
    a = lib['arrays']
    h = mapped.astype(np.float32).astype(np.float64) if like_rvspecfit else mapped
    for i in range(lib['nlayers'] + 2):
        h = silu(h @ a['LIN%d_W' % i].T.astype(np.float64) + a['LIN%d_B' % i])
        if lib['withbn'] and 0 < i <= lib['nlayers']:
            h = ((h - a['BN%d_MEAN' % i]) / np.sqrt(a['BN%d_VAR' % i].astype(np.float64)
                                                      + lib['eps']) * a['BN%d_W' % i]
                 + a['BN%d_B' % i])
    out = np.clip(h @ a['PC_W'].T.astype(np.float64) + a['PC_B'], -lib['clip'], lib['clip'])
    return out if log else np.exp(out)


def outside(lib, mapped):
    """Penalty of the doc: square of the largest facet value over all hulls, 0 if none > 0."""
    worst = np.zeros(mapped.shape[0])
    for hl in lib['hulls']:
        v = (mapped[:, hl['i1'], None] * hl['nx'][None, :]
             + mapped[:, hl['i2'], None] * hl['ny'][None, :] + hl['off'][None, :])
        worst = np.maximum(worst, v.max(axis=1))
    return worst ** 2


def check_hulls(lib, path, pts):
    """Closed counter-clockwise convex polygons with unit outward normals, vertices taken from
    the training points, every training point inside."""
    for n, hl in enumerate(lib['hulls'], start=1):
        what = '%s HULL%d' % (path, n)
        x, y, nx, ny, off = hl['x'], hl['y'], hl['nx'], hl['ny'], hl['off']
        nv = len(x)
        check(nv >= 3, what + ': fewer than 3 vertices')
        check(np.allclose(np.hypot(nx, ny), 1, rtol=0, atol=1e-12), what + ': normals not unit')
        x1, y1 = np.roll(x, -1), np.roll(y, -1)
        check(np.all(np.abs(nx * x + ny * y + off) < 1e-12)
              and np.all(np.abs(nx * x1 + ny * y1 + off) < 1e-12),
              what + ': facet k does not join vertex k to vertex k+1')
        area2 = np.sum(x * y1 - x1 * y)
        check(area2 > 0, what + ': not counter-clockwise')
        vals = np.outer(x, nx) + np.outer(y, ny) + off[None, :]
        check(vals.max() < 1e-12, what + ': not convex')
        p2 = pts[:, [hl['i1'], hl['i2']]]
        inside = p2 @ np.stack([nx, ny]) + off[None, :]
        check(inside.max() < 1e-12, what + ': a training point lies outside (%g)' % inside.max())
        verts = set(map(tuple, np.stack([x, y], axis=1)))
        check(verts <= set(map(tuple, p2)), what + ': a vertex is not a training point')
