# rvs_import_check.py: checks of tools/rvs-import, run by tests/test_rvs_import.sh (mode
# "convert") and tests/test_rvs_import_errors.sh (mode "errors").
#
#   python3 rvs_import_check.py MODE SCRATCH_DIR FIXTURE_DIR RVS_IMPORT
#
# "convert" converts rvspecfit's fixture library, reads OUR files back with astropy only and
# evaluates the network and the outside penalty with the numpy forward pass of
# tests/library_ref.py (no code shared with the converter), against rvspecfit's own
# evaluations (reference_evals.fits), and checks the LSF keywords of format version 2 for every
# LSF option (doc/template-library.md 2.1 and 8). "errors" feeds the converter bad inputs, among
# them checkpoints written here by a small stand-in for torch.save (zip + pickle + raw storages),
# and bad LSF options.
import collections
import io
import os
import pickle
import shutil
import subprocess
import sys
import types
import zipfile

import h5py
import numpy as np
from astropy.io import fits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from library_ref import (FWHM_PER_SIGMA, PRIMARY_KEYS, check, check_hulls,  # noqa: E402
                         checksums_ok, finish, forward, load_library, map_params, outside,
                         read_lsf)

MODE, SCRATCH, FIXTURE, RVS_IMPORT = sys.argv[1:5]
ARMS = ('desi_b', 'desi_r', 'desi_z')

# Tolerances (brief of issue #4): float32 network vs rvspecfit's float32 torch evaluation.
FLUX_RTOL = 1e-5
OUTSIDE_TOL = 1e-6

# The templates' LSF per option (doc/template-library.md 2.1, 8): rvspecfit's DESI templates are
# Gaussians of FWHM 1.55, 1.55, 1.8 A; its resolution-matrix library has sigma 0.5 A.
DESI_FWHM = {'desi_b': 1.55, 'desi_r': 1.55, 'desi_z': 1.8}
# LSFSIG holds 12 significant digits (what src/library/library.c's writer keeps); against the exact
# sigma that is a relative error below 5e-12.
LSFSIG_RTOL = 5e-12
# The primary-header comments of the LSF keywords, as src/library/library.c's write_primary writes them,
# and their place: right after HULLSPC, before CREATOR.
LSF_COMMENTS = {'LSFTYPE': 'line-spread function of the templates',
                'LSFSIG': '[Angstrom] its Gaussian sigma (table: median)',
                'LSFRMAT': 'made for the resolution-matrix fit'}
# A phrase of the one message rvs-import gives when no LSF option is passed.
UNKNOWN_LSF_PHRASE = "line-spread function (LSF) is not known"


def run_import(*args, expect=0):
    p = subprocess.run([RVS_IMPORT] + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode != expect:
        check(False, 'rvs-import %s: exit %d, expected %d\n--- stdout\n%s--- stderr\n%s'
              % (' '.join(map(str, args)), p.returncode, expect, p.stdout, p.stderr))
    return p


def fresh_dir(name):
    d = os.path.join(SCRATCH, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d




def check_keywords(path):
    with fits.open(path) as f:
        h = f[0].header
        for key, typ in PRIMARY_KEYS:
            if check(key in h, '%s: primary keyword %s missing' % (path, key)):
                check(type(h[key]) is typ, '%s: %s is %r (%s), expected %s'
                      % (path, key, h[key], type(h[key]).__name__, typ.__name__))
        check(h.get('RVSFMT') == 'rvsfit-cl template library', path + ': RVSFMT')
        check(h.get('RVSFVER') == 2, path + ': RVSFVER = %r, expected 2' % h.get('RVSFVER'))
        keys = list(h.keys())
        want = ['HULLSPC', 'LSFTYPE'] + (['LSFSIG'] if 'LSFSIG' in h else []) + ['LSFRMAT',
                                                                                 'CREATOR']
        if check('HULLSPC' in keys, path + ': HULLSPC missing'):
            i = keys.index('HULLSPC')
            check(keys[i:i + len(want)] == want, '%s: keywords after HULLSPC are %r, expected %r'
                  % (path, keys[i:i + len(want)], want))
        for key, comment in LSF_COMMENTS.items():
            if key in h:
                check(h.comments[key] == comment, '%s: %s comment %r, expected %r (as '
                      'src/library/library.c writes it)' % (path, key, h.comments[key], comment))
        check(h.get('NONLIN') == 'SiLU' and h.get('OUTPUT') == 'log_flux'
              and h.get('BNPOS') == 'after_nonlin' and h.get('HULLSPC') == 'mapped'
              and h.get('WAVEREF') == 'vacuum', path + ': fixed-value keywords')
        check(h.get('NPARAM') == h.get('INDIM'), path + ': NPARAM == INDIM')
        check(f['WAVE'].header.get('BUNIT') == 'Angstrom', path + ': WAVE BUNIT')
        # cfitsio's fits_read_key_longstr keeps a trailing '&' before an empty CONTINUE card
        with open(path, 'rb') as fh:
            raw = fh.read(f[0].fileinfo()['datLoc'])
        check(b"CONTINUE  ''" not in raw, path + ': empty CONTINUE card in the primary header')
        check(f['WAVE'].data.dtype == np.dtype('>f8'), path + ': WAVE is f8')
        check(list(f['PARAMS'].columns.names) == ['NAME', 'LOG10', 'M', 'S', 'TRAINMIN',
                                                  'TRAINMAX'], path + ': PARAMS columns')
        for hdu in f[1:]:
            if hdu.name.startswith(('LIN', 'BN', 'PC_')):
                check(hdu.data.dtype == np.dtype('>f4'), '%s: %s is not float32'
                      % (path, hdu.name))
                check('SRCKEY' in hdu.header, '%s: %s lacks SRCKEY' % (path, hdu.name))
        for n in range(1, h.get('NHULL', 0) + 1):
            hh = f['HULL%d' % n].header
            for key in ('HULLI1', 'HULLI2', 'HULLP1', 'HULLP2'):
                check(key in hh, '%s: HULL%d lacks %s' % (path, n, key))


# ------------------------------------------------------------------ a stand-in for torch.save
# Enough of PyTorch's zip serialization to write test checkpoints without PyTorch: fake
# 'torch' and 'torch._utils' modules so that pickle names the same globals torch does.
def fake_torch():
    if 'torch' in sys.modules and getattr(sys.modules['torch'], 'IS_FAKE', False):
        return sys.modules['torch']
    if 'torch' in sys.modules:
        raise RuntimeError('real torch imported; the stand-in would shadow it')
    torch = types.ModuleType('torch')
    torch.IS_FAKE = True
    utils = types.ModuleType('torch._utils')
    for sname in ('FloatStorage', 'DoubleStorage', 'LongStorage'):
        cls = type(sname, (), {'__module__': 'torch'})
        setattr(torch, sname, cls)

    def _rebuild_tensor_v2(*args):
        raise RuntimeError('never called here')
    _rebuild_tensor_v2.__module__ = 'torch._utils'
    _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    sys.modules['torch'] = torch
    sys.modules['torch._utils'] = utils
    return torch


class FakeStorage:
    def __init__(self, key, array):
        self.key = key
        self.array = array


class FakeTensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride))

    def __reduce_ex__(self, proto):
        torch = fake_torch()
        return (torch._utils._rebuild_tensor_v2,
                self.args + (False, collections.OrderedDict()))


def torch_save(path, obj_builder, byteorder='little', archive='archive', write_byteorder=True):
    """obj_builder(add) builds the object to pickle; add(array) returns a tensor stand-in."""
    torch = fake_torch()
    storages = []

    def add(array, transpose_view=False):
        array = np.ascontiguousarray(array)
        st = FakeStorage(str(len(storages)), array)
        storages.append(st)
        if transpose_view and array.ndim == 2:
            # a transposed view (non-contiguous strides) of the stored [in, out] array
            return FakeTensor(st, 0, array.shape[::-1], (1, array.shape[1]))
        strides = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
        return FakeTensor(st, 0, array.shape, strides)

    obj = obj_builder(add)
    types_of = {np.dtype('f4'): torch.FloatStorage, np.dtype('f8'): torch.DoubleStorage,
                np.dtype('i8'): torch.LongStorage}

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, FakeStorage):
                return ('storage', types_of[o.array.dtype], o.key, 'cpu', o.array.size)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr(archive + '/data.pkl', buf.getvalue())
        if write_byteorder:
            zf.writestr(archive + '/byteorder', byteorder)
        for st in storages:
            a = st.array.astype(st.array.dtype.newbyteorder('>' if byteorder == 'big' else '<'))
            zf.writestr(archive + '/data/' + st.key, a.tobytes())
        zf.writestr(archive + '/version', '3\n')


def state_dict_from_library(path):
    """Our FITS weights back as {torch key: array} (through SRCKEY)."""
    sd = collections.OrderedDict()
    with fits.open(path) as f:
        for hdu in f[1:]:
            if 'SRCKEY' in hdu.header:
                sd[hdu.header['SRCKEY']] = hdu.data.astype(np.float32)
    return sd


def versioned(sd_builder, magic='rvspecfit.nn_interpolator', cver=1, aver=1):
    def build(add):
        return {'checkpoint_magic': magic, 'checkpoint_version': cver, 'nn_arch_version': aver,
                'state_dict': sd_builder(add)}
    return build


def weights_of(path):
    with fits.open(path) as f:
        return {hdu.name: hdu.data.copy() for hdu in f[1:]
                if hdu.name.startswith(('LIN', 'BN', 'PC_'))}


def same_weights(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a)


# ------------------------------------------------------------------ LSF keywords
def check_lsf(path, sigma, rmat, what):
    """The file records a Gaussian of this sigma (None: UNKNOWN) and LSFRMAT = rmat."""
    lsf = read_lsf(path)
    if sigma is None:
        ok = lsf['type'] == 'UNKNOWN' and lsf['sigma'] is None
    else:
        ok = (lsf['type'] == 'GAUSSIAN' and lsf['sigma'] is not None
              and abs(lsf['sigma'] / sigma - 1) <= LSFSIG_RTOL
              and lsf['sigma'] == float('%.12g' % sigma))
    check(ok, '%s: %s: LSF %s sigma %r, expected %s' % (what, path, lsf['type'], lsf['sigma'],
                                                         'UNKNOWN' if sigma is None else sigma))
    check(lsf['rmat'] == rmat, '%s: %s: LSFRMAT %s, expected %s' % (what, path, lsf['rmat'],
                                                                      rmat))
    check(lsf['table'] is None, '%s: %s: unexpected LSF table' % (what, path))
    return lsf


def check_lsf_options():
    """Each LSF option of rvs-import, on all three arms: the keywords, their order and comments
    (check_keywords), and the unknown-LSF message only without an option."""
    cases = [
        ('--lsf desi', ['--lsf', 'desi'], lambda a: DESI_FWHM[a] / FWHM_PER_SIGMA, False),
        ('--lsf resolution-matrix', ['--lsf', 'resolution-matrix'], lambda a: 0.5, True),
        ('--lsf-sigma 0.7', ['--lsf-sigma', '0.7'], lambda a: 0.7, False),
        ('--lsf-sigma 0.45 --resolution-matrix-library',
         ['--lsf-sigma', '0.45', '--resolution-matrix-library'], lambda a: 0.45, True),
    ]
    for n, (what, opts, sigma, rmat) in enumerate(cases):
        d = fresh_dir('lsf%d' % n)
        p = run_import(*(opts + [FIXTURE, d]))
        check(UNKNOWN_LSF_PHRASE not in p.stderr, '%s: the unknown-LSF message was given:\n%s'
              % (what, p.stderr))
        for arm in ARMS:
            path = os.path.join(d, 'rvsfit_%s.fits' % arm)
            check_keywords(path)
            check(checksums_ok(path), path + ': checksums')
            lsf = check_lsf(path, sigma(arm), rmat, what)
            print('%s: %s LSFSIG %r (FWHM %.6g A), LSFRMAT %s' % (what, arm, lsf['sigma'],
                                                                 (lsf['sigma'] or 0)
                                                                 * FWHM_PER_SIGMA, lsf['rmat']))
    # one file with --h5: the setup comes from the file name
    d = fresh_dir('lsf_h5')
    out = os.path.join(d, 'rvsfit_desi_z.fits')
    run_import('--lsf', 'desi', '--h5', os.path.join(FIXTURE, 'interp_desi_z.h5'), '--out', out)
    check_lsf(out, 1.8 / FWHM_PER_SIGMA, False, '--lsf desi --h5')


# ------------------------------------------------------------------ mode: convert
def mode_convert():
    lib_dir = fresh_dir('lib')
    p = run_import('--grid-name', 'fixture-phoenix-layout', FIXTURE, lib_dir)
    # no LSF option: every file says UNKNOWN, and rvs-import says so once, with the way out
    check(p.stderr.count(UNKNOWN_LSF_PHRASE) == 1, 'unknown LSF: the message should come once '
          'per run:\n' + p.stderr)
    for phrase in ('--lsf desi', '--lsf resolution-matrix', '--lsf-sigma',
                   'resolution-matrix fit must deconvolve', 'mock'):
        check(phrase in p.stderr, 'unknown LSF: the message lacks "%s":\n%s' % (phrase, p.stderr))
    print('no LSF option: ' + p.stderr.strip())
    for arm in ARMS:
        check_lsf(os.path.join(lib_dir, 'rvsfit_%s.fits' % arm), None, False, 'no LSF option')
    check_lsf_options()
    leg_dir = fresh_dir('legacy')
    leg = os.path.join(leg_dir, 'rvsfit_desi_r.fits')
    p = run_import('--h5', os.path.join(FIXTURE, 'interp_desi_r.h5'), '--nn',
                   os.path.join(FIXTURE, 'legacy', 'NNstate_desi_r.sav'), '--out', leg)
    check('legacy' in p.stderr, 'legacy checkpoint not reported: ' + p.stderr)
    check(p.stderr.count(UNKNOWN_LSF_PHRASE) == 1, '--h5 without an LSF option: message once')
    check(sorted(os.listdir(lib_dir)) == ['rvsfit_%s.fits' % a for a in ARMS],
          'library directory holds %r' % sorted(os.listdir(lib_dir)))

    ref = fits.open(os.path.join(FIXTURE, 'reference_evals.fits'))
    par = ref['PARAMS'].data
    theta = np.stack([par['TEFF'], par['LOGG'], par['FEH'], par['ALPHA']], axis=1)
    for arm in ARMS:
        path = os.path.join(lib_dir, 'rvsfit_%s.fits' % arm)
        check_keywords(path)
        check(checksums_ok(path), path + ': CHECKSUM/DATASUM do not verify')
        lib = load_library(path)
        check(lib['setup'] == arm, path + ': SETUP')
        check(lib['names'] == ['teff', 'logg', 'feh', 'alpha'], path + ': parameter names')
        wref = ref[arm.upper() + '_WAVE'].data
        check(np.array_equal(lib['wave'], wref), path + ': WAVE differs from rvspecfit lam')
        dln = np.diff(np.log(lib['wave']))
        check(np.max(np.abs(dln / lib['logstep'] - 1)) < 1e-6, path + ': LOGSTEP')
        with h5py.File(os.path.join(FIXTURE, 'interp_%s.h5' % arm), 'r') as f:
            pts = f['outside_kwargs/pts'][:]
        check_hulls(lib, path, pts)

        fref = ref[arm.upper() + '_FLUX'].data
        mapped = map_params(lib, theta)
        flux = forward(lib, mapped)
        rel = np.max(np.abs(flux / fref - 1))
        check(rel <= FLUX_RTOL, '%s: flux max relative error %.3g > %g' % (arm, rel, FLUX_RTOL))
        mapped_d = map_params(lib, theta, like_rvspecfit=False)
        rel_d = np.max(np.abs(forward(lib, mapped_d, like_rvspecfit=False) / fref - 1))
        oref = ref[arm.upper() + '_OUTSIDE'].data
        out = outside(lib, mapped)
        oerr = np.max(np.abs(out - oref) / np.maximum(1, np.abs(oref)))
        check(oerr <= OUTSIDE_TOL, '%s: outside penalty error %.3g' % (arm, oerr))
        out_d = outside(lib, mapped_d)
        oerr_d = np.max(np.abs(out_d - oref) / np.maximum(1, np.abs(oref)))
        check(oref[-1] > 0 and out[-1] > 0, '%s: the last point must be outside' % arm)
        check(np.array_equal(oref > 0, out > 0), '%s: inside/outside flags differ' % arm)
        print('%s: flux max rel err %.3g (rvspecfit float32 input rounding), %.3g (double '
              'mapping); outside max err %.3g / %.3g (ref %s); %d outside'
              % (arm, rel, rel_d, oerr, oerr_d, np.array2string(oref[oref > 0], precision=6),
                 np.sum(out > 0)))

    # the legacy and versioned desi_r checkpoints hold the same weights
    check(same_weights(weights_of(leg), weights_of(os.path.join(lib_dir, 'rvsfit_desi_r.fits'))),
          'legacy and versioned desi_r weights differ')
    with fits.open(leg) as f:
        check(f[0].header['CKPTVER'] == 0 and f[0].header['NNARCHV'] == 0,
              'legacy conversion: CKPTVER/NNARCHV should be 0')
    check(checksums_ok(leg), leg + ': checksums')

    # the checksum test can fail: one flipped byte in a data unit is detected
    bad = os.path.join(SCRATCH, 'flipped.fits')
    shutil.copy(os.path.join(lib_dir, 'rvsfit_desi_b.fits'), bad)
    os.chmod(bad, 0o644)
    with fits.open(bad) as f:
        where = f['PC_W'].fileinfo()['datLoc'] + 1000
    with open(bad, 'r+b') as fh:
        fh.seek(where)
        b = fh.read(1)
        fh.seek(where)
        fh.write(bytes([b[0] ^ 0x40]))
    check(not checksums_ok(bad), 'a flipped byte was not detected by the checksums')

    # an existing output is kept unless --force
    p = run_import(FIXTURE, lib_dir, expect=1)
    check('--force' in p.stderr, 'existing output: message should mention --force')
    run_import('--force', '--setup', 'desi_b', FIXTURE, lib_dir)
    check(not [n for n in os.listdir(lib_dir) if n.endswith('.tmp')], 'temporary file left')
    finish()


# ------------------------------------------------------------------ mode: errors
def expect_error(what, args, pattern, outdir=None, code=1):
    p = run_import(*args, expect=code)
    check(pattern.lower() in p.stderr.lower(), '%s: stderr lacks "%s":\n%s'
          % (what, pattern, p.stderr))
    check('Traceback' not in p.stderr, what + ': traceback instead of a message')
    if outdir is not None:
        left = os.listdir(outdir)
        check(not left, '%s: output directory not empty: %r' % (what, left))
    print('%s: refused: %s' % (what, p.stderr.strip().splitlines()[-1] if p.stderr else ''))


def src_with(name, nn_bytes=None, nn_writer=None, arm='desi_b', h5_edit=None):
    """A source directory with the fixture's h5 for `arm` and a replacement checkpoint."""
    d = fresh_dir(name)
    h5 = os.path.join(d, 'interp_%s.h5' % arm)
    shutil.copy(os.path.join(FIXTURE, 'interp_%s.h5' % arm), h5)
    os.chmod(h5, 0o644)
    if h5_edit:
        with h5py.File(h5, 'r+') as f:
            h5_edit(f)
    nn = os.path.join(d, 'NNstate_%s.sav' % arm)
    if nn_bytes is not None:
        with open(nn, 'wb') as fh:
            fh.write(nn_bytes)
    if nn_writer is not None:
        nn_writer(nn)
    return d


def mode_errors():
    base = fresh_dir('base')
    run_import('--setup', 'desi_b', FIXTURE, base)
    good = os.path.join(base, 'rvsfit_desi_b.fits')
    sd = state_dict_from_library(good)

    def sd_builder(transform=None):
        def build(add):
            out = collections.OrderedDict()
            for k, v in sd.items():
                out[k] = add(v)
            if transform:
                transform(out, add)
            return out
        return build

    # positive controls for the stand-in writer: round trip, big-endian storages, transposed
    # (non-contiguous) views, no byteorder record
    for label, kwargs, transpose in (('round trip', {}, False),
                                     ('big-endian', {'byteorder': 'big'}, False),
                                     ('strided views', {}, True),
                                     ('no byteorder record', {'write_byteorder': False}, False)):
        def build(add, transpose=transpose):
            out = collections.OrderedDict()
            for k, v in sd.items():
                if transpose and v.ndim == 2:
                    out[k] = add(np.ascontiguousarray(v.T), transpose_view=True)
                else:
                    out[k] = add(v)
            return out
        src = src_with('ok_' + label.replace(' ', '_'),
                       nn_writer=lambda p, b=build, kw=kwargs: torch_save(p, versioned(b), **kw))
        out = fresh_dir('out_' + label.replace(' ', '_'))
        run_import('--setup', 'desi_b', src, out)
        res = os.path.join(out, 'rvsfit_desi_b.fits')
        check(os.path.exists(res) and same_weights(weights_of(res), weights_of(good)),
              label + ': weights differ from the fixture conversion')
        print('%s: converted, weights identical' % label)

    # BatchNorm arrays go to the BNi_* extensions (rvspecfit's fixture has withbn=False)
    rng = np.random.default_rng(4)
    bn = {s: rng.uniform(0.5, 1.5, 64).astype(np.float32) for s in ('weight', 'bias',
                                                                    'running_mean',
                                                                    'running_var')}

    def add_bn(out, add):
        for s, v in bn.items():
            out['model.bn_1.' + s] = add(v)
        out['model.bn_1.num_batches_tracked'] = add(np.array(7, dtype=np.int64))

    def set_withbn(f):
        del f['class_kwargs/withbn']
        f['class_kwargs/withbn'] = True
        f['class_kwargs/withbn'].attrs['type'] = 'scalar'
    src = src_with('ok_bn', h5_edit=set_withbn,
                   nn_writer=lambda p: torch_save(p, versioned(sd_builder(add_bn))))
    out = fresh_dir('out_bn')
    run_import('--setup', 'desi_b', src, out)
    res = os.path.join(out, 'rvsfit_desi_b.fits')
    if check(os.path.exists(res), 'withbn conversion failed'):
        w = weights_of(res)
        check(all(np.array_equal(w['BN1_' + e], bn[s]) for e, s in
                  (('W', 'weight'), ('B', 'bias'), ('MEAN', 'running_mean'),
                   ('VAR', 'running_var'))), 'BN arrays misplaced')
        with fits.open(res) as f:
            check(f[0].header['WITHBN'] is True, 'WITHBN should be T')
        check(checksums_ok(res), 'withbn file checksums')
        print('withbn: BN1_W/B/MEAN/VAR written')

    # ---- bad inputs: each is refused with a message and leaves DEST empty
    out = fresh_dir('out_bad')
    d = fresh_dir('missing_ckpt')
    shutil.copy(os.path.join(FIXTURE, 'interp_desi_b.h5'), d)
    expect_error('missing checkpoint', ['--setup', 'desi_b', d, out], 'NNstate_desi_b.sav', out)
    expect_error('missing h5', ['--setup', 'desi_q', FIXTURE, out], 'interp_desi_q.h5', out)

    src = src_with('garbage_zip', nn_bytes=b'this is not a zip archive\n' * 40)
    expect_error('corrupt zip (garbage)', ['--setup', 'desi_b', src, out], 'corrupt', out)
    with open(os.path.join(FIXTURE, 'NNstate_desi_b.sav'), 'rb') as fh:
        raw = fh.read()
    src = src_with('truncated_zip', nn_bytes=raw[:len(raw) // 2])
    expect_error('corrupt zip (truncated)', ['--setup', 'desi_b', src, out], 'corrupt', out)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF  # inside a storage: the zip CRC check fails
    src = src_with('crc_zip', nn_bytes=bytes(flipped))
    expect_error('corrupt zip (CRC)', ['--setup', 'desi_b', src, out], 'corrupt', out)

    src = src_with('magic', nn_writer=lambda p: torch_save(
        p, versioned(sd_builder(), magic='someone.else')))
    expect_error('wrong magic', ['--setup', 'desi_b', src, out], 'checkpoint_magic', out)
    src = src_with('version', nn_writer=lambda p: torch_save(
        p, versioned(sd_builder(), cver=2)))
    expect_error('wrong checkpoint version', ['--setup', 'desi_b', src, out],
                 'checkpoint_version 2', out)
    src = src_with('arch', nn_writer=lambda p: torch_save(
        p, versioned(sd_builder(), aver=5)))
    expect_error('wrong architecture version', ['--setup', 'desi_b', src, out],
                 'nn_arch_version 5', out)

    # a pickle naming a global outside the allow-list is refused before anything runs
    sentinel = os.path.join(SCRATCH, 'pwned')
    if os.path.exists(sentinel):
        os.unlink(sentinel)
    evil = {
        'os.system': b"cos\nsystem\n(S'touch " + sentinel.encode() + b"'\ntR.",
        'builtins.eval': (b"c__builtin__\neval\n(S'open(\"" + sentinel.encode()
                          + b"\", \"w\")'\ntR."),
        'subprocess.call': (b"\x80\x02csubprocess\ncall\n]q\x00(X\x05\x00\x00\x00touchq\x01X"
                            + len(sentinel).to_bytes(4, 'little') + sentinel.encode()
                            + b"e\x85R."),
    }
    for name, payload in evil.items():
        def w(p, payload=payload):
            with zipfile.ZipFile(p, 'w') as zf:
                zf.writestr('archive/data.pkl', payload)
                zf.writestr('archive/version', '3\n')
        src = src_with('evil_' + name, nn_writer=w)
        expect_error('disallowed global ' + name, ['--setup', 'desi_b', src, out],
                     'refusing', out)
        check(not os.path.exists(sentinel), name + ': the payload ran!')

    # shape mismatches between the h5 and the checkpoint
    def set_width(f):
        del f['class_kwargs/width']
        f['class_kwargs/width'] = np.int64(32)
        f['class_kwargs/width'].attrs['type'] = 'scalar'
    src = src_with('shape_width', h5_edit=set_width,
                   nn_writer=lambda p: shutil.copy(os.path.join(FIXTURE, 'NNstate_desi_b.sav'),
                                                   p))
    expect_error('shape mismatch (width)', ['--setup', 'desi_b', src, out], 'shape mismatch', out)

    def bad_pc(o, add):
        o['pc_layer.weight'] = add(np.zeros((100, 20), dtype=np.float32))
    src = src_with('shape_pc', nn_writer=lambda p: torch_save(
        p, versioned(sd_builder(bad_pc))))
    expect_error('shape mismatch (pc_layer)', ['--setup', 'desi_b', src, out], 'shape mismatch',
                 out)

    def drop_key(o, add):
        del o['model.lin_1.bias']
    src = src_with('missing_key', nn_writer=lambda p: torch_save(
        p, versioned(sd_builder(drop_key))))
    expect_error('missing state-dict key', ['--setup', 'desi_b', src, out], 'model.lin_1.bias',
                 out)

    def nan_w(o, add):
        a = sd['model.lin_0.weight'].copy()
        a[3, 1] = np.nan
        o['model.lin_0.weight'] = add(a)
    src = src_with('nan', nn_writer=lambda p: torch_save(p, versioned(sd_builder(nan_w))))
    expect_error('non-finite weight', ['--setup', 'desi_b', src, out], 'non-finite', out)

    def f64(o, add):
        o['pc_layer.bias'] = add(sd['pc_layer.bias'].astype(np.float64))
    src = src_with('float64', nn_writer=lambda p: torch_save(p, versioned(sd_builder(f64))))
    expect_error('float64 weights', ['--setup', 'desi_b', src, out], 'float32', out)

    # bad LSF options: usage errors (exit 2) before anything is read or written
    for what, args, pattern in (
            ('--lsf desi on a setup that is not DESI',
             ['--lsf', 'desi', '--setup', 'desi_b,sdss_blue', FIXTURE, out], 'not for sdss_blue'),
            ('--lsf desi with --h5 of another setup',
             ['--lsf', 'desi', '--h5', os.path.join(FIXTURE, 'interp_desi_b.h5'), '--setup',
              'boss', '--out', os.path.join(out, 'rvsfit_boss.fits')], 'not for boss'),
            ('--lsf with --lsf-sigma', ['--lsf', 'desi', '--lsf-sigma', '0.6', FIXTURE, out],
             'pass one of them'),
            ('--resolution-matrix-library alone', ['--resolution-matrix-library', FIXTURE, out],
             'goes with --lsf-sigma'),
            ('--resolution-matrix-library with --lsf desi',
             ['--lsf', 'desi', '--resolution-matrix-library', FIXTURE, out],
             'goes with --lsf-sigma'),
            ('--lsf-sigma 0', ['--lsf-sigma', '0', FIXTURE, out], 'in (0, 100)'),
            ('--lsf-sigma -1', ['--lsf-sigma=-1', FIXTURE, out], 'in (0, 100)'),
            ('--lsf-sigma 150', ['--lsf-sigma', '150', FIXTURE, out], 'in (0, 100)'),
            ('--lsf-sigma nan', ['--lsf-sigma', 'nan', FIXTURE, out], 'in (0, 100)'),
            ('--lsf-sigma abc', ['--lsf-sigma', 'abc', FIXTURE, out], "invalid float value"),
            ('--lsf gaussian', ['--lsf', 'gaussian', FIXTURE, out], 'invalid choice')):
        expect_error(what, args, pattern, out, code=2)

    # no half-written library: desi_b and desi_r are fine, desi_z is broken -> nothing written
    d = fresh_dir('partial')
    for arm in ARMS:
        for n in ('interp_%s.h5', 'NNstate_%s.sav'):
            shutil.copy(os.path.join(FIXTURE, n % arm), d)
    os.chmod(os.path.join(d, 'NNstate_desi_z.sav'), 0o644)
    with open(os.path.join(d, 'NNstate_desi_z.sav'), 'wb') as fh:
        fh.write(raw[:1000])
    expect_error('one broken arm', [d, out], 'NNstate_desi_z.sav', out)
    finish()


if __name__ == '__main__':
    {'convert': mode_convert, 'errors': mode_errors}[MODE]()
