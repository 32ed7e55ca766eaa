#!/usr/bin/python3
"""mkgrid-solar-check.py: compares a solar model written by rvsfit-cl-mkgrid
(--single 5750,4.5,0,0, all three arms in one FITS file) with reference solar spectra:

  * continuum shape: the FERRE synthetic solar spectrum (hypergravity/laspec; flux per 4 pi sr,
    i.e. Eddington flux) averaged in 50 A windows across the three arms, as ratios to the model;
  * line depths after degradation to the DESI resolution: the observed solar flux atlas
    (Hinkle et al. 2000, R = 47000, 4800-6800 A, via pacargile/ThePayne) and its full-resolution
    excerpts 4500-5300 / 8450-8750 A (via andycasey/sick), all air wavelengths;
  * the wavelength scale: the cross-correlation shift between model (converted to air with
    Morton 2000) and atlas.

Usage: mkgrid-solar-check.py MODEL.fits SHARED_DATA_DIR [--markdown]
Prints the numbers; exits 1 when a check fails (thresholds below), 0 otherwise.
"""
import gzip
import sys

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter1d

# A Milne-Eddington-like LTE model cannot reproduce chromospheric cores (H alpha, Ca II) or
# convective line shifts; these limits still catch a broken one (missing opacity, a wrong
# scale, wrong units, air/vacuum mix-ups).
MAX_SHAPE_DEV = 0.08    # each 50 A window, model/FERRE relative to the median ratio, 4300-9800 A
SCALE_RANGE = (0.85, 1.15)  # median(model / (4 pi FERRE))
MAX_DEPTH_DIFF = 0.15   # any line, absolute depth difference
MAX_MEAN_DEPTH_DIFF = 0.08
MAX_SHIFT = 0.05        # A

LINES = [  # name, air wavelength
    ("H beta", 4861.33), ("Mg b 5167", 5167.32), ("Mg b 5173", 5172.68), ("Mg b 5184", 5183.60),
    ("Fe I 5270", 5269.54), ("Fe I 5328", 5328.04), ("Fe I 5371", 5371.49),
    ("Na D2", 5889.95), ("Na D1", 5895.92), ("Ca I 6162", 6162.17), ("Fe I 6495", 6494.98),
    ("H alpha", 6562.80), ("Ca II 8498", 8498.02), ("Ca II 8542", 8542.09),
    ("Ca II 8662", 8662.14)]
CONT_WINDOWS = [4400, 4800, 5200, 5600, 6000, 6400, 6800, 7200, 7600, 8000, 8400, 8800, 9200,
                9600]


def vac_to_air(lam):
    s2 = 1e8 / lam ** 2
    return lam / (1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2))


def load_model(path):
    arms = {}
    with fits.open(path) as h:
        for a, fwhm in (("B", 1.55), ("R", 1.55), ("Z", 1.8)):
            arms[a] = (np.asarray(h[a + "_WAVELENGTH"].data, float),
                       np.asarray(h[a + "_FLUX"].data[0], float), fwhm)
    return arms


def arm_for(lam):
    return "B" if lam < 5800 else "R" if lam < 7500 else "Z"


def depth(w, f, lam0):
    """1 - line minimum / pseudo-continuum (highest point within +-20 A)."""
    win = (w > lam0 - 20) & (w < lam0 + 20)
    core = (w > lam0 - 1.0) & (w < lam0 + 1.0)
    return 1.0 - f[core].min() / f[win].max()


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    markdown = "--markdown" in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    model, data = args
    arms = load_model(model)
    fail = []

    # ---- continuum shape against FERRE
    with fits.open(data + "/solar/FERRE_FEH+0.00_AFE+0.00_VMIC+0.00_TEFF+5750_LOGG+4.50.fits") as h:
        fw = np.asarray(h[1].data["wave"], float)
        ff = np.asarray(h[1].data["flux"], float)
    ratios = []
    for c in CONT_WINDOWS:
        w, f, _ = arms[arm_for(c)]
        m = (w > c - 25) & (w < c + 25)
        mf = (fw > c - 25) & (fw < c + 25)
        ratios.append(f[m].mean() / (4 * np.pi * ff[mf].mean()))
    ratios = np.array(ratios)
    med = np.median(ratios)
    shape = ratios / med - 1
    print("continuum: model F_lambda / (4 pi FERRE) in 50 A windows; median %.3f" % med)
    if markdown:
        print("\n| window (A) | " + " | ".join("%d" % c for c in CONT_WINDOWS) + " |")
        print("|---|" + "---|" * len(CONT_WINDOWS))
        print("| model/(4pi FERRE) | " + " | ".join("%.3f" % r for r in ratios) + " |\n")
    else:
        for c, r, s in zip(CONT_WINDOWS, ratios, shape):
            print("  %5d A  %.3f  (%+.3f)" % (c, r, s))
    if not SCALE_RANGE[0] <= med <= SCALE_RANGE[1]:
        fail.append("absolute scale %.3f outside %s" % (med, SCALE_RANGE))
    worst = np.max(np.abs(shape))
    if worst > MAX_SHAPE_DEV:
        fail.append("continuum shape deviates by %.3f (limit %.2f)" % (worst, MAX_SHAPE_DEV))

    # ---- line depths against the atlas, both at DESI resolution
    with gzip.open(data + "/solar/ATLAS.Sun_47000.txt.gz", "rt") as fh:
        at = np.loadtxt(fh, skiprows=1)
    atlas = [(at[:, 0] * 10.0, at[:, 1], 47000.0)]
    for name in ("sun-450-530.fits", "sun-845-875.fits"):
        with fits.open(data + "/solar/" + name) as h:
            y = np.asarray(h[0].data, float)
            x = h[0].header["CRVAL1"] + h[0].header["CDELT1"] * np.arange(len(y))
        atlas.append((x, y, None))

    def atlas_depth(lam0, fwhm):
        # prefer the full-resolution excerpts, then the R=47000 atlas
        for x, y, r in atlas[1:] + atlas[:1]:
            if x.min() < lam0 - 25 and x.max() > lam0 + 25:
                m = (x > lam0 - 40) & (x < lam0 + 40)
                step = np.median(np.diff(x[m]))
                own = 0.0 if r is None else lam0 / r
                sig = np.sqrt(max(fwhm ** 2 - own ** 2, 0.0)) / 2.3548 / step
                return x[m], gaussian_filter1d(y[m], sig)
        return None

    rows = []
    diffs = []
    for name, lam in LINES:
        w, f, fwhm = arms[arm_for(lam)]
        wa = vac_to_air(w)
        dm = depth(wa, f, lam)
        ref = atlas_depth(lam, fwhm)
        if ref is None:
            continue
        da = depth(ref[0], ref[1], lam)
        rows.append((name, lam, dm, da))
        diffs.append(dm - da)
        if abs(dm - da) > MAX_DEPTH_DIFF:
            fail.append("%s depth %.3f vs atlas %.3f" % (name, dm, da))
    if markdown:
        print("| line | air A | model depth | atlas depth | difference |")
        print("|---|---|---|---|---|")
        for name, lam, dm, da in rows:
            print("| %s | %.2f | %.3f | %.3f | %+.3f |" % (name, lam, dm, da, dm - da))
        print()
    else:
        print("line depths at DESI resolution (1 - min / max within 20 A):")
        for name, lam, dm, da in rows:
            print("  %-11s %8.2f  model %.3f  atlas %.3f  (%+.3f)" % (name, lam, dm, da, dm - da))
    mean_abs = float(np.mean(np.abs(diffs)))
    print("mean |depth difference| %.3f" % mean_abs)
    if mean_abs > MAX_MEAN_DEPTH_DIFF:
        fail.append("mean depth difference %.3f (limit %.2f)" % (mean_abs, MAX_MEAN_DEPTH_DIFF))

    # ---- wavelength scale: cross-correlate 5000-5800 (b) and 6000-6700 (r) with the atlas
    x, y, _ = atlas[0]
    shifts = []
    for a, lo, hi in (("B", 5000.0, 5800.0), ("R", 6000.0, 6700.0)):
        w, f, fwhm = arms[a]
        wa = vac_to_air(w)
        grid = np.arange(lo, hi, 0.02)
        m = (x > lo - 50) & (x < hi + 50)
        step = np.median(np.diff(x[m]))
        ya = np.interp(grid, x[m], gaussian_filter1d(y[m], fwhm / 2.3548 / step))
        ym = np.interp(grid, wa, f)
        ya = ya / gaussian_filter1d(ya, 1500) - 1
        ym = ym / gaussian_filter1d(ym, 1500) - 1
        lags = np.arange(-100, 101)
        cc = [np.sum(ya[100:-100] * np.roll(ym, k)[100:-100]) for k in lags]
        k = int(np.argmax(cc))
        k = min(max(k, 1), len(lags) - 2)
        d = 0.5 * (cc[k - 1] - cc[k + 1]) / (cc[k - 1] - 2 * cc[k] + cc[k + 1])
        shift = (lags[k] + d) * 0.02  # model shifted by +shift matches the atlas
        shifts.append(shift)
        print("wavelength shift model->atlas %s %.0f-%.0f A: %+.3f A" % (a, lo, hi, shift))
        if abs(shift) > MAX_SHIFT:
            fail.append("wavelength shift %.3f A in %s" % (shift, a))
    for f_ in fail:
        print("FAIL: " + f_, file=sys.stderr)
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
