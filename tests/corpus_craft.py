#!/usr/bin/python3
"""corpus_craft.py: the bad-input corpus of tests/test_corpus.sh (issue 19), made at test time.

    corpus_craft.py EXAMPLE LIBDIR OUT

EXAMPLE is examples/coadd-main-bright-10000.fits (10 targets, arms B/R/Z), LIBDIR the default
template library (data/default). Everything is written under OUT: broken copies of the example
(truncated at several offsets, damaged headers, missing or reshaped HDUs, bad values in some
targets, damaged checksums, a header bomb), YAML configurations, a damaged template library
(one file truncated, the others symbolic links) and a few lists of TARGETIDs. Nothing here
decides what rvsfit-cl should do; the expectations are in tests/test_corpus.sh.

Also written: OUT/partly-bad.fits, the example with 3 of its 10 targets damaged (NaN flux, zero
ivar everywhere, NaN in a resolution matrix), and OUT/partly-bad.txt naming those TARGETIDs and
the damage, one a line.
"""
import gzip
import os
import struct
import sys

import numpy as np
from astropy.io import fits

CARD = 80
BLOCK = 2880


def main(example, libdir, out):
    os.makedirs(out, exist_ok=True)
    raw = open(example, 'rb').read()
    h0 = fits.open(example)
    info = {h.name: h0.fileinfo(i) for i, h in enumerate(h0)}
    tids = [int(t) for t in h0['FIBERMAP'].data['TARGETID']]

    def path(name):
        return os.path.join(out, name)

    def put(name, data):
        with open(path(name), 'wb') as fp:
            fp.write(data)

    def variant(name, change, checksum=True):
        """a copy of the example through astropy, changed by change(hdulist)"""
        h = fits.HDUList([hdu.copy() for hdu in h0])
        change(h)
        h.writeto(path(name), overwrite=True, output_verify='silentfix', checksum=checksum)

    # --- files that are not (whole) FITS files
    put('empty.fits', b'')
    put('notfits.fits', b'this is not a FITS file\n' * 200)
    put('binary-junk.fits', np.random.default_rng(19).bytes(3 * BLOCK))
    # truncations: inside the primary header, just after it, inside FIBERMAP's header, inside
    # FIBERMAP's data, inside B_FLUX's data, inside Z_RESOLUTION's data, in SCORES's header,
    # and the last 100 bytes (the final block of SCORES's data) missing
    fm, bf, zr, sc = info['FIBERMAP'], info['B_FLUX'], info['Z_RESOLUTION'], info['SCORES']
    cuts = {'trunc-primary-header': 1000,
            'trunc-after-primary': fm['hdrLoc'],
            'trunc-fibermap-header': fm['hdrLoc'] + 20 * CARD,
            'trunc-fibermap-data': fm['datLoc'] + 500,
            'trunc-bflux-data': bf['datLoc'] + bf['datSpan'] // 2,
            'trunc-zres-data': zr['datLoc'] + zr['datSpan'] // 3,
            'trunc-scores-header': sc['hdrLoc'] + 5 * CARD,
            'trunc-last-bytes': len(raw) - 100}
    for name, at in cuts.items():
        put(name + '.fits', raw[:at])

    # --- gzip: a good one, a corrupt one (bytes changed in the middle), truncated ones
    gz = gzip.compress(raw, mtime=0)
    put('good.fits.gz', gz)
    bad = bytearray(gz)
    for k in range(len(bad) // 3, len(bad) // 3 + 64):
        bad[k] ^= 0x5a
    put('corrupt.fits.gz', bytes(bad))
    # truncated streams (no trailer): the last 4 bytes, read as the trailer's size, are whatever
    # the cut leaves; one cut where they claim a plausible size (under 50 times the FITS file),
    # one where they claim more than deflate can produce (over 1100 times what is left)
    def cut(plausible):
        n = len(gz) // 2
        while True:
            claim = struct.unpack('<I', gz[n - 4:n])[0]
            if claim <= 50 * len(raw) if plausible else claim > 1100 * n:
                return gz[:n]
            n += 1
    put('trunc.fits.gz', cut(True))
    put('trunc-trailer.fits.gz', cut(False))

    # --- damaged header cards, edited in the raw bytes
    def edit_card(data, extname, key, value):
        at = data.find(b"EXTNAME = '%s" % extname.encode())
        start = data.rfind(b'XTENSION', 0, at)
        card = data.find(key.ljust(8).encode() + b'=', start)
        assert 0 <= card < at + BLOCK, (extname, key)
        data[card:card + CARD] = ('%-8s= %20s' % (key, value)).ljust(CARD).encode()

    for name, ext, key, value in (('huge-naxis2.fits', 'FIBERMAP', 'NAXIS2', '4000000000'),
                                  ('negative-naxis2.fits', 'B_FLUX', 'NAXIS2', '-5'),
                                  ('bitpix17.fits', 'B_FLUX', 'BITPIX', '17'),
                                  ('huge-naxis1.fits', 'R_IVAR', 'NAXIS1', '2147483647')):
        data = bytearray(raw)
        edit_card(data, ext, key, value)
        put(name, bytes(data))
    data = bytearray(raw)
    at = data.find(b"EXTNAME = 'B_FLUX")
    end = data.find(b'END' + b' ' * 77, at)
    data[end:end + CARD] = b' ' * CARD
    put('no-end.fits', bytes(data))

    # CHECKSUM/DATASUM: one bit of B_FLUX's data flipped (the value stays a finite float)
    data = bytearray(raw)
    data[bf['datLoc'] + 1000] ^= 0x01
    put('bad-datasum.fits', bytes(data))

    # --- missing and reshaped HDUs
    def drop(*names):
        return lambda h: [h.pop(h.index_of(n)) for n in names]
    variant('no-fibermap.fits', drop('FIBERMAP'))
    variant('no-bflux.fits', drop('B_FLUX'))
    variant('no-scores.fits', drop('SCORES'))
    variant('no-bresolution.fits', drop('B_RESOLUTION'))

    def rows(h):
        h['B_FLUX'].data = h['B_FLUX'].data[:9]
    variant('flux-rows.fits', rows)

    def wave(h):
        h['Z_WAVELENGTH'].data = h['Z_WAVELENGTH'].data[:-1]
    variant('wave-length.fits', wave)

    def int_flux(h):
        h['B_FLUX'] = fits.ImageHDU(np.round(h['B_FLUX'].data).astype(np.int16), name='B_FLUX')
    variant('int-flux.fits', int_flux)

    def f64_flux(h):
        h['B_FLUX'] = fits.ImageHDU(h['B_FLUX'].data.astype(np.float64), name='B_FLUX')
    variant('f64-flux.fits', f64_flux)

    def table_flux(h):
        col = fits.Column(name='FLUX', format='%dE' % h['B_FLUX'].data.shape[1],
                          array=h['B_FLUX'].data)
        h['B_FLUX'] = fits.BinTableHDU.from_columns([col], name='B_FLUX')
    variant('table-flux.fits', table_flux)

    def no_targetid(h):
        cols = [c for c in h['FIBERMAP'].columns if c.name != 'TARGETID']
        h['FIBERMAP'] = fits.BinTableHDU.from_columns(cols, name='FIBERMAP')
    variant('no-targetid.fits', no_targetid)

    def empty_fibermap(h):
        h['FIBERMAP'] = fits.BinTableHDU(h['FIBERMAP'].data[:0], name='FIBERMAP')
    variant('empty-fibermap.fits', empty_fibermap)

    # --- bad values in some targets (rows 1, 4, 7 unless said)
    def values(name, arm_hdu, rows_, value, how='row'):
        def change(h):
            d = h[arm_hdu].data
            for r in rows_:
                if how == 'row':
                    d[r] = value
                else:                 # a few pixels of the row
                    d[r, 100:110] = value
        variant(name, change)
    values('nan-flux.fits', 'B_FLUX', [1, 4], np.nan, 'pixels')
    values('inf-ivar.fits', 'R_IVAR', [7], np.inf, 'pixels')
    values('zero-ivar.fits', 'B_IVAR', [4], 0.0)
    values('neg-ivar.fits', 'Z_IVAR', [1], -1.0, 'pixels')

    def nan_res(h):
        h['B_RESOLUTION'].data[2, 5, 100] = np.nan
    variant('nan-res.fits', nan_res)

    # --- SCORES: reordered rows (matched by TARGETID), NaN S/N
    def scores_rev(h):
        h['SCORES'] = fits.BinTableHDU(h['SCORES'].data[::-1].copy(), name='SCORES',
                                       header=h['SCORES'].header)
    variant('scores-reversed.fits', scores_rev)

    def scores_nan(h):
        h['SCORES'].data['MEDIAN_COADD_SNR_B'][3] = np.nan
    variant('scores-nan.fits', scores_nan)

    def dup(h):
        for n in ('FIBERMAP', 'SCORES'):
            h[n].data['TARGETID'][5] = h[n].data['TARGETID'][4]
    variant('dup-targetid.fits', dup)

    # --- header bomb: 6000 keyword cards and 6000 COMMENT cards in FIBERMAP's header
    def bomb(h):
        hdr = h['FIBERMAP'].header
        for k in range(6000):
            hdr.append(('BOMB%04d' % k, k, 'header bomb'), end=True)
            hdr.append(('COMMENT', 'header bomb %d' % k), end=True)
    variant('header-bomb.fits', bomb)

    # --- the partly bad file: 3 of the 10 targets damaged, the others untouched
    damage = {2: 'nan-flux', 5: 'zero-ivar', 8: 'nan-resolution'}

    def partly(h):
        for arm in 'BRZ':
            h[arm + '_FLUX'].data[2, :] = np.nan
            h[arm + '_IVAR'].data[5, :] = 0
        h['R_RESOLUTION'].data[8, :, 300:310] = np.nan
    variant('partly-bad.fits', partly)
    with open(path('partly-bad.txt'), 'w') as fp:
        for r, what in sorted(damage.items()):
            fp.write('%d %s\n' % (tids[r], what))

    # --- target lists: one good target; a target of nan-flux.fits with NaN flux
    with open(path('ids-one.txt'), 'w') as fp:
        fp.write('%d\n' % tids[2])
    with open(path('ids-nan.txt'), 'w') as fp:
        fp.write('%d\n' % tids[1])

    # --- YAML configurations
    yamls = {'syntax.yaml': 'min_vel: -1000\nmax_vel: [1000\n  vel_step0: 5\n',
             'tabs.yaml': 'min_vel:\t-1000\n\tmax_vel: 1000\n',
             'unknown-key.yaml': 'min_vel: -1000\nno_such_key: 3\n',
             'wrong-type.yaml': 'min_vel: fast\n',
             'nonfinite.yaml': 'max_vel: .inf\n',
             'inconsistent.yaml': 'min_vel: 500\nmax_vel: 100\n',
             'list.yaml': '- min_vel\n- max_vel\n',
             'empty.yaml': '',
             'bad-lib.yaml': 'template_lib: %s\n' % path('no-such-library')}
    for name, text in yamls.items():
        with open(path(name), 'w') as fp:
            fp.write(text)
    with open(path('binary.yaml'), 'wb') as fp:
        fp.write(b'min_vel: \xff\xfe\x00\x01\n')

    # --- a template library with rvsfit_desi_b.fits truncated (its first 2 MB), r and z linked
    lib = path('lib-truncated')
    os.makedirs(lib, exist_ok=True)
    with open(os.path.join(libdir, 'rvsfit_desi_b.fits'), 'rb') as fp:
        head = fp.read(2 * 1024 * 1024)
    with open(os.path.join(lib, 'rvsfit_desi_b.fits'), 'wb') as fp:
        fp.write(head)
    for arm in 'rz':
        os.symlink(os.path.join(os.path.abspath(libdir), 'rvsfit_desi_%s.fits' % arm),
                   os.path.join(lib, 'rvsfit_desi_%s.fits' % arm))
    # ... and one without rvsfit_desi_z.fits
    lib = path('lib-no-z')
    os.makedirs(lib, exist_ok=True)
    for arm in 'br':
        os.symlink(os.path.join(os.path.abspath(libdir), 'rvsfit_desi_%s.fits' % arm),
                   os.path.join(lib, 'rvsfit_desi_%s.fits' % arm))


if __name__ == '__main__':
    if len(sys.argv) != 4:
        sys.exit('usage: corpus_craft.py EXAMPLE LIBDIR OUT')
    main(*sys.argv[1:])
