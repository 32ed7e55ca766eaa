#!/usr/bin/python3
"""check_output_schema.py: checks an rvtab/rvmod pair written by rvsfit-cl against the layout
in tests/output_schema.txt and against the input DESI file it came from.

Checks: HDU names and order; RVTAB column names, order, TFORM, TUNIT, TCOMM; FIBERMAP, SCORES
and EXP_FIBERMAP equal to the selected input rows (row-matched by TARGETID); one MODEL row per
RVTAB row; wavelengths equal to the input's; CHECKSUM/DATASUM present and valid on every HDU;
primary keywords present, and the copied ones equal to the input's.

With --values, the fit values follow tests/test_output.c's formulas for input row i (0-based):
VRAD = 10 (i + 1), TEFF = 5000 + i, NPIX_TOT = 7000 + i, CHISQ_X = 100 (a + 1) + i,
CHISQ_C_X = CHISQ_X + 60, SN_X = 1.5 (a + 1) + i, MODEL[k, j] = (i + 1) + a + 0.001 j, for arm
index a (b = 0, r = 1, z = 2); rows listed in --bad carry BAD_SPECTRUM with NaN fit values,
NPIX_TOT 0 and a zero model. With --rr, RR_Z = 0.001 (i + 1), RR_SPECTYPE = STAR,
RR_SUBTYPE = G2; without it RR_Z is NaN and the strings empty.
Exit status 0 when everything holds, 1 otherwise (each failure is printed).
"""
import argparse
import sys
import warnings

import numpy as np
import astropy.io.fits as fits

ARMS = 'brz'
failures = []


def fail(msg):
    failures.append(msg)
    print('FAIL: ' + msg, file=sys.stderr)


def read_schema(path):
    schema = {'hdu': [], 'col': [], 'key': [], 'copy': []}
    with open(path) as fp:
        for line in fp:
            line = line.rstrip('\n')
            if not line or line.startswith('#'):
                continue
            fields = line.split('|')
            schema[fields[0]].append(fields[1:])
    return schema


def expand(entries, when_index, arms, keep):
    """Expands consecutive 'arm' entries as a group per fitted arm; drops entries whose
    condition `keep(when)` is false."""
    out = []
    i = 0
    while i < len(entries):
        if entries[i][when_index] == 'arm':
            j = i
            while j < len(entries) and entries[j][when_index] == 'arm':
                j += 1
            for arm in arms:
                for e in entries[i:j]:
                    out.append([f.replace('{A}', arm.upper()) for f in e])
            i = j
            continue
        if keep(entries[i][when_index], entries[i]):
            out.append(entries[i])
        i += 1
    return out


def same(a, b):
    """Element-wise equality (NaN equal to NaN); strings compared as lists, since
    np.array_equal gives False for equal astropy chararrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in 'SU' or b.dtype.kind in 'SU':
        return [str(x).rstrip() for x in a.ravel()] == [str(x).rstrip() for x in b.ravel()]
    if a.dtype.kind == 'f':
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def tables_equal(got, want, what):
    if got.columns.names != want.columns.names:
        fail(f'{what}: columns {got.columns.names} != input {want.columns.names}')
        return
    if len(got) != len(want):
        fail(f'{what}: {len(got)} rows, expected {len(want)}')
        return
    for name in want.columns.names:
        a, b = got[name], want[name]
        if a.dtype != b.dtype:
            fail(f'{what}: column {name} type {a.dtype} != input {b.dtype}')
        elif not same(a, b):
            fail(f'{what}: column {name} differs from the input')
    for col_got, col_want in zip(got.columns, want.columns):
        if col_got.format != col_want.format or col_got.unit != col_want.unit:
            fail(f'{what}: column {col_got.name} format/unit {col_got.format}/{col_got.unit}'
                 f' != input {col_want.format}/{col_want.unit}')


def check_checksums(path):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        try:
            with fits.open(path, checksum=True) as hdul:
                for i, hdu in enumerate(hdul):
                    hdu.data  # noqa: B018 -- reading the data verifies DATASUM
                    for key in ('CHECKSUM', 'DATASUM'):
                        if key not in hdu.header:
                            fail(f'{path}: HDU {i} has no {key}')
        except Exception as exc:  # an astropy warning turned error: a bad checksum
            fail(f'{path}: checksum verification: {exc}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--schema', required=True)
    ap.add_argument('--input', required=True)
    ap.add_argument('--tab', required=True)
    ap.add_argument('--mod', required=True)
    ap.add_argument('--arms', default='brz')
    ap.add_argument('--ccf', type=int, default=1)
    ap.add_argument('--rows', default='', help='input rows in output order, comma-separated')
    ap.add_argument('--bad', default='', help='input rows written as BAD_SPECTRUM')
    ap.add_argument('--values', action='store_true')
    ap.add_argument('--rr', action='store_true')
    ap.add_argument('--header', action='append', default=[],
                    help='KEY=VALUE expected in both primary headers')
    args = ap.parse_args()

    schema = read_schema(args.schema)
    rows = [int(x) for x in args.rows.split(',') if x != '']
    bad = set(int(x) for x in args.bad.split(',') if x != '')
    arms = args.arms

    inp = fits.open(args.input)
    in_names = [h.name for h in inp]
    coadd = 'EXP_FIBERMAP' in in_names
    in_fib = inp['FIBERMAP']
    tab = fits.open(args.tab)
    mod = fits.open(args.mod)

    # ---- HDU names and order
    def hdu_keep(when, entry):
        return when == 'always' or (when == 'coadd' and coadd)

    for name, hdul in (('rvtab', tab), ('rvmod', mod)):
        want = [e[1] for e in expand([e for e in schema['hdu'] if e[0] == name], 2, arms,
                                     hdu_keep)]
        got = [h.name for h in hdul]
        if got != want:
            fail(f'{name}: HDUs {got}, expected {want}')

    # ---- RVTAB columns
    def col_keep(when, entry):
        return (when == 'always' or (when == 'ccf' and args.ccf)
                or (when == 'input' and entry[0] in in_fib.columns.names))

    cols = expand(schema['col'], 3, arms, col_keep)
    rvtab = tab['RVTAB']
    got_names = rvtab.columns.names
    want_names = [c[0] for c in cols]
    if got_names != want_names:
        fail(f'RVTAB columns {got_names}, expected {want_names}')
    hdr = rvtab.header
    for i, (name, tform, unit, when, desc) in enumerate(cols):
        if name not in got_names:
            continue
        n = got_names.index(name) + 1
        got_form = hdr.get(f'TFORM{n}', '')
        if tform == 'input':
            want_form = in_fib.columns[name].format
            if got_form != want_form:
                fail(f'RVTAB {name}: TFORM {got_form}, input has {want_form}')
        elif tform == 'A':
            if not got_form.endswith('A'):
                fail(f'RVTAB {name}: TFORM {got_form}, expected a string')
        elif got_form != tform:
            fail(f'RVTAB {name}: TFORM {got_form}, expected {tform}')
        got_unit = hdr.get(f'TUNIT{n}', '')
        if got_unit != unit:
            fail(f'RVTAB {name}: TUNIT "{got_unit}", expected "{unit}"')
        if f'TCOMM{n}' not in hdr:
            fail(f'RVTAB {name}: no TCOMM{n}')
        elif hdr[f'TCOMM{n}'] != desc:
            fail(f'RVTAB {name}: TCOMM{n} "{hdr[f"TCOMM{n}"]}", expected "{desc}"')

    # ---- rows: RVTAB, FIBERMAP, SCORES row-matched to the selected input rows
    data = rvtab.data
    nrows = len(data) if data is not None else 0
    if nrows != len(rows):
        fail(f'RVTAB has {nrows} rows, expected {len(rows)}')
    want_fib = in_fib.data[rows]
    tables_equal(tab['FIBERMAP'].data, want_fib, 'rvtab FIBERMAP')
    tables_equal(mod['FIBERMAP'].data, want_fib, 'rvmod FIBERMAP')
    tables_equal(tab['SCORES'].data, inp['SCORES'].data[rows], 'SCORES')
    for key in ('TTYPE1', 'TUNIT3', 'EXTNAME'):
        if key in in_fib.header and tab['FIBERMAP'].header.get(key) != in_fib.header[key]:
            fail(f'rvtab FIBERMAP header {key} not copied from the input')
    if nrows == len(rows) and nrows > 0:
        tid = data['TARGETID']
        if not same(tid, want_fib['TARGETID']):
            fail('RVTAB TARGETID does not follow the selected input rows')
        if not same(tab['SCORES'].data['TARGETID'], tid):
            fail('SCORES is not row-matched to RVTAB')
        for name in ('FIBER', 'REF_ID', 'REF_CAT', 'TARGET_RA', 'TARGET_DEC', 'EXPID'):
            if name in in_fib.columns.names and not same(data[name], want_fib[name]):
                fail(f'RVTAB {name} differs from the input FIBERMAP')
    if coadd:
        exp = inp['EXP_FIBERMAP'].data
        want_exp = exp[np.isin(exp['TARGETID'], in_fib.data['TARGETID'][rows])]
        tables_equal(tab['EXP_FIBERMAP'].data, want_exp, 'EXP_FIBERMAP')

    # ---- models: one row per RVTAB row; wavelengths from the input
    for a, arm in enumerate(ARMS):
        if arm not in arms:
            continue
        A = arm.upper()
        wave = mod[f'{A}_WAVELENGTH'].data
        if not np.array_equal(wave, inp[f'{A}_WAVELENGTH'].data) or wave.dtype != '>f8':
            fail(f'{A}_WAVELENGTH differs from the input or is not float64')
        hm = mod[f'{A}_MODEL']
        shape = (hm.header.get('NAXIS2'), hm.header.get('NAXIS1'))
        if shape != (len(rows), len(wave)) or hm.header.get('BITPIX') != -32:
            fail(f'{A}_MODEL is {shape} BITPIX {hm.header.get("BITPIX")}, '
                 f'expected ({len(rows)}, {len(wave)}) float32')
            continue
        if args.values and len(rows) > 0:
            model = hm.data
            for k, i in enumerate(rows):
                want = (np.zeros(len(wave)) if i in bad else
                        (i + 1) + a + 0.001 * np.arange(len(wave)))
                if not np.allclose(model[k], want, rtol=1e-6, atol=1e-5):
                    fail(f'{A}_MODEL row {k} (input row {i}) has the wrong values')

    # ---- values
    if args.values and nrows == len(rows):
        fit_cols = [c[0] for c in cols if c[1] == 'D' and c[0] != 'RR_Z']
        for k, i in enumerate(rows):
            r = data[k]
            if i in bad:
                if (not r['RVS_WARN'] & 32 or r['SUCCESS'] or r['NPIX_TOT'] != 0
                        or r['PARAM_PRIOR'] != 0):
                    fail(f'bad row {k}: RVS_WARN {r["RVS_WARN"]} SUCCESS {r["SUCCESS"]}')
                for name in fit_cols:
                    if not np.isnan(r[name]):
                        fail(f'bad row {k}: {name} = {r[name]}, expected NaN')
            else:
                checks = [('VRAD', 10.0 * (i + 1)), ('TEFF', 5000.0 + i),
                          ('NPIX_TOT', 7000 + i), ('PARAM_PRIOR', i % 16)]
                for a, arm in enumerate(ARMS):
                    if arm in arms:
                        A = arm.upper()
                        checks += [(f'CHISQ_{A}', 100.0 * (a + 1) + i),
                                   (f'CHISQ_C_{A}', 100.0 * (a + 1) + i + 60)]
                for name, want in checks:
                    if r[name] != want:
                        fail(f'row {k}: {name} = {r[name]}, expected {want}')
                if bool(r['SUCCESS']) != (r['RVS_WARN'] == 0):
                    fail(f'row {k}: SUCCESS {r["SUCCESS"]} with RVS_WARN {r["RVS_WARN"]}')
            for a, arm in enumerate(ARMS):
                if arm in arms and not np.isclose(r[f'SN_{arm.upper()}'], 1.5 * (a + 1) + i):
                    fail(f'row {k}: SN_{arm.upper()} = {r[f"SN_{arm.upper()}"]}')
            if args.rr:
                if (not np.isclose(r['RR_Z'], 0.001 * (i + 1)) or r['RR_SPECTYPE'] != 'STAR'
                        or r['RR_SUBTYPE'] != 'G2'):
                    fail(f'row {k}: redrock values {r["RR_Z"]} {r["RR_SPECTYPE"]}')
            elif not np.isnan(r['RR_Z']) or r['RR_SPECTYPE'] != '' or r['RR_SUBTYPE'] != '':
                fail(f'row {k}: redrock columns should be NaN/empty')

    # ---- primary headers
    for name, hdul in (('rvtab', tab), ('rvmod', mod)):
        h = hdul[0].header
        for which, key in schema['key']:
            if which in (name, 'both') and key not in h:
                fail(f'{name}: primary keyword {key} missing')
        if h.get('DEPNAM00') != 'rvsfit-cl' or h.get('DEPNAM01') != 'cfitsio':
            fail(f'{name}: DEPNAM00/01 are {h.get("DEPNAM00")}/{h.get("DEPNAM01")}')
        for item in args.header:
            key, value = item.split('=', 1)
            if h.get(key) != value:
                fail(f'{name}: primary {key} = {h.get(key)!r}, expected {value!r}')
        for which, key in schema['copy']:
            if which != name:
                continue
            if key in inp[0].header:
                if key not in h or h[key] != inp[0].header[key]:
                    fail(f'{name}: primary {key} not copied from the input')
            elif key in h:
                fail(f'{name}: primary {key} is not in the input')

    for path in (args.tab, args.mod):
        check_checksums(path)
    if failures:
        print(f'check_output_schema: {len(failures)} failure(s)', file=sys.stderr)
        return 1
    print(f'check_output_schema: {args.tab} and {args.mod} conform')
    return 0


if __name__ == '__main__':
    sys.exit(main())
