# mock_check.py: helper of tests/test_mock.c, an independent (astropy) reader of the files of
# rvsfit-cl-mock.
#
#   python3 mock_check.py dump COADD OUT.bin
#       verifies every HDU's checksums, then writes per arm B, R, Z the little-endian arrays
#       WAVELENGTH (f8), FLUX (f4), IVAR (f4), MASK (i4), RESOLUTION (f4), then FIBERMAP
#       TARGETID (i8) and SCORES MEDIAN_COADD_SNR_B/R/Z (f4), for a byte comparison in C
#   python3 mock_check.py check COADD TRUTH REDROCK
#       the three files agree: TARGETIDs in the same order, redrock Z = VRAD / c, SPECTYPE STAR,
#       truth SN = SCORES S/N, the FIBERMAP/EXP_FIBERMAP columns and primary keywords DESI
#       coadds carry, the mock's keywords (MOCKLSFM, MOCKCONT the same in coadd and truth) and
#       the continuum columns (EBV within [0, 0.5 x MOCKCSC], 0 with the legendre continuum;
#       CONTMISS finite and >= 0)
import sys
import warnings

import numpy as np
from astropy.io import fits

C_KMS = 299792.458
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print('FAIL: ' + what, file=sys.stderr)


def verify_checksums(path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with fits.open(path, checksum=True) as f:
            for hdu in f:
                hdu.data  # noqa: B018
                check('CHECKSUM' in hdu.header and 'DATASUM' in hdu.header,
                      '%s %s: no CHECKSUM/DATASUM' % (path, hdu.name))
                check(hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1,
                      '%s %s: checksums do not verify' % (path, hdu.name))


def dump(coadd, out):
    verify_checksums(coadd)
    with fits.open(coadd) as f, open(out, 'wb') as fp:
        for arm in 'BRZ':
            fp.write(f[arm + '_WAVELENGTH'].data.astype('<f8').tobytes())
            fp.write(f[arm + '_FLUX'].data.astype('<f4').tobytes())
            fp.write(f[arm + '_IVAR'].data.astype('<f4').tobytes())
            fp.write(f[arm + '_MASK'].data.astype('<i4').tobytes())
            fp.write(f[arm + '_RESOLUTION'].data.astype('<f4').tobytes())
        fp.write(f['FIBERMAP'].data['TARGETID'].astype('<i8').tobytes())
        for arm in 'BRZ':
            fp.write(f['SCORES'].data['MEDIAN_COADD_SNR_' + arm].astype('<f4').tobytes())


def consistency(coadd, truth, redrock):
    for p in (coadd, truth, redrock):
        verify_checksums(p)
    f, t, r = fits.open(coadd), fits.open(truth), fits.open(redrock)
    h = f[0].header
    for k, v in (('SPGRP', 'healpix'), ('HPXNSIDE', 64), ('HPXNEST', True), ('SURVEY', 'main'),
                 ('PROGRAM', 'bright')):
        check(h.get(k) == v, 'primary %s = %r, expected %r' % (k, h.get(k), v))
    check(h.get('HPXPIXEL') == h.get('SPGRPVAL'), 'HPXPIXEL != SPGRPVAL')
    th = t[0].header
    check(h.get('MOCKLSFM') in ('total', 'on-top') and th.get('MOCKLSFM') == h.get('MOCKLSFM'),
          'MOCKLSFM %r (coadd) %r (truth)' % (h.get('MOCKLSFM'), th.get('MOCKLSFM')))
    check(h.get('MOCKCONT') in ('realistic', 'legendre') and th.get('MOCKCONT') == h.get('MOCKCONT'),
          'MOCKCONT %r (coadd) %r (truth)' % (h.get('MOCKCONT'), th.get('MOCKCONT')))
    fm, exp, sc = f['FIBERMAP'].data, f['EXP_FIBERMAP'].data, f['SCORES'].data
    tt, rr = t['TRUTH'].data, r['REDSHIFTS'].data
    tid = fm['TARGETID']
    check(len(set(tid)) == len(tid), 'duplicate TARGETIDs')
    check(np.array_equal(tid, tt['TARGETID']) and np.array_equal(tid, rr['TARGETID'])
          and np.array_equal(tid, sc['TARGETID']), 'TARGETID order differs between files')
    check(np.all(fm['OBJTYPE'] == 'TGT'), 'OBJTYPE')
    check(np.all(fm['COADD_FIBERSTATUS'] == 0), 'COADD_FIBERSTATUS')
    check(np.all((fm['DESI_TARGET'] >> 61) & 1 == 1), 'DESI_TARGET lacks MWS_ANY (bit 61)')
    check(np.all(fm['MWS_TARGET'] & 1 == 1), 'MWS_TARGET lacks MWS_BROAD')
    for col in ('TARGET_RA', 'TARGET_DEC', 'REF_ID', 'REF_CAT', 'BGS_TARGET', 'SCND_TARGET',
                'BRICKID', 'PHOTSYS'):
        check(col in fm.columns.names, 'FIBERMAP lacks ' + col)
    check(set(exp['TARGETID']) == set(tid), 'EXP_FIBERMAP targets')
    for col in ('EXPID', 'NIGHT', 'TILEID', 'FIBER'):
        check(col in exp.columns.names, 'EXP_FIBERMAP lacks ' + col)
    n_exp = np.array([np.sum(exp['TARGETID'] == x) for x in tid])
    check(np.array_equal(n_exp, fm['COADD_NUMEXP']), 'COADD_NUMEXP vs EXP_FIBERMAP rows')
    check(np.allclose(rr['Z'], tt['VRAD'] / C_KMS, rtol=0, atol=1e-15), 'redrock Z != VRAD/c')
    check(np.all(rr['SPECTYPE'] == 'STAR'), 'SPECTYPE')
    ebv, miss = tt['EBV'], tt['CONTMISS']
    cscale = t[0].header.get('MOCKCSC', 1.0)
    if h.get('MOCKCONT') == 'legendre':
        check(np.all(ebv == 0), 'EBV not 0 with the legendre continuum')
    check(np.all((ebv >= 0) & (ebv <= 0.5 * cscale)), 'EBV outside [0, 0.5 x MOCKCSC]')
    check(miss.shape == (len(tid), 3) and np.all(np.isfinite(miss)) and np.all(miss >= 0),
          'CONTMISS not finite/non-negative per arm')
    print('EBV %.4f..%.4f, CONTMISS max %s' % (ebv.min(), ebv.max(),
                                               ' '.join('%.2e' % x for x in miss.max(axis=0))))
    for i, arm in enumerate('BRZ'):
        check(np.array_equal(sc['MEDIAN_COADD_SNR_' + arm], tt['SN'][:, i].astype(np.float32)),
              'truth SN_%s != SCORES' % arm)
        # get_sns of rvspecfit on the file's arrays, with numpy
        fl, iv, mk = (f[arm + x].data for x in ('_FLUX', '_IVAR', '_MASK'))
        xsn = fl * np.sqrt(iv)
        xsn[(iv <= 0) | (mk > 0)] = np.nan
        sns = np.nanmedian(xsn, axis=1)
        err = np.max(np.abs(sns / sc['MEDIAN_COADD_SNR_' + arm] - 1))
        check(err < 1e-6, 'numpy get_sns differs from SCORES %s by %g' % (arm, err))
        print('%s: numpy get_sns vs SCORES max rel diff %.2g' % (arm, err))
    print('%d targets, %d exposures, %s' % (len(tid), len(exp),
                                           'ok' if not failures else 'FAILED'))


if __name__ == '__main__':
    if sys.argv[1] == 'dump':
        dump(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == 'check':
        consistency(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit('unknown mode ' + sys.argv[1])
    sys.exit(1 if failures else 0)
