#!/usr/bin/python3
"""png_check.py: checks rvsfit-cl's --doplot figures (tests/test_doplot.sh) with a PNG decoder of
its own (zlib and numpy; no imaging library, and nothing shared with the writer, libpng):

  png_check.py target WIDTH HEIGHT FILE...    per-target figures
  png_check.py summary WIDTH HEIGHT FILE...   per-file summaries
  png_check.py selftest                       the decoder and the checks on images it makes

Every file must be a valid PNG (signature, chunk CRCs, IHDR, IDAT inflating to the right size,
known filters) of WIDTH x HEIGHT, and not blank. Panels are found from their frames (rows and
columns of black pixels that run along a whole panel), not from a copy of the layout, and each
must hold what it shows:
  target:  three arm blocks (a spectrum panel over a residual panel); in every spectrum panel
           black data and the red model, in every residual panel black residuals; blue masked
           points and the shaded dichroic in the figure; text and the posterior inset above;
  summary: three panels and a colour bar: coloured markers in the Kiel diagram, markers in
           the velocity-error panel, green and orange bars in the RVS_WARN panel.
Prints one line of statistics per file; exits 1 with one line per problem.
"""
import struct
import sys
import zlib

import numpy as np

SIGNATURE = b'\x89PNG\r\n\x1a\n'


def decode(path):
    """(height, width, 3) uint8 RGB pixels of an 8-bit RGB or RGBA PNG; ValueError if invalid."""
    with open(path, 'rb') as f:
        data = f.read()
    if data[:8] != SIGNATURE:
        raise ValueError('no PNG signature')
    pos, header, idat, ended = 8, None, [], False
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError('truncated chunk at byte %d' % pos)
        length, ctype = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])[0]
        if len(body) != length or zlib.crc32(ctype + body) & 0xffffffff != crc:
            raise ValueError('chunk %r: bad length or CRC' % ctype)
        if ctype == b'IHDR':
            header = struct.unpack('>IIBBBBB', body)
        elif ctype == b'IDAT':
            idat.append(body)
        elif ctype == b'IEND':
            ended = True
            break
        pos += 12 + length
    if header is None or not idat or not ended:
        raise ValueError('missing IHDR, IDAT or IEND')
    width, height, depth, colour, method, filt, interlace = header
    if depth != 8 or colour not in (2, 6) or method or filt or interlace:
        raise ValueError('unsupported IHDR (depth %d, colour type %d, interlace %d)'
                         % (depth, colour, interlace))
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b''.join(idat))
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError('image data inflate to %d bytes, not %d' % (len(raw), height * (stride + 1)))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:     # Sub: running sum along the row, per byte of a pixel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 0xff
        elif kind == 2:     # Up
            cur = (line + prev) & 0xff
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (line[i] + pred) & 0xff
        else:
            raise ValueError('row %d: unknown filter %d' % (y, kind))
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[:, :, :3]


def encode(rgb, filters=(0,), level=6):
    """A PNG of an (h, w, 3) uint8 image, row y with filter filters[y % len(filters)], zlib at
    `level` (the selftest; tools/readme-figures)."""
    h, w, _ = rgb.shape
    flat = rgb.reshape(h, w * 3).astype(np.int32)
    raw = bytearray()
    for y in range(h):
        kind = filters[y % len(filters)]
        line, prev = flat[y], flat[y - 1] if y else np.zeros(w * 3, dtype=np.int32)
        left = np.concatenate([np.zeros(3, dtype=np.int32), line[:-3]])
        upleft = np.concatenate([np.zeros(3, dtype=np.int32), prev[:-3]])
        if kind == 0:
            enc = line
        elif kind == 1:
            enc = line - left
        elif kind == 2:
            enc = line - prev
        elif kind == 3:
            enc = line - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            enc = line - pred
        raw.append(kind)
        raw += bytes((enc & 0xff).astype(np.uint8))

    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + \
            struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)
    return SIGNATURE + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + \
        chunk(b'IDAT', zlib.compress(bytes(raw), level)) + chunk(b'IEND', b'')


# ------------------------------------------------------------------ pixel classes
def classes(rgb):
    r, g, b = (rgb[:, :, k].astype(np.int32) for k in range(3))
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    return {
        'dark': mx < 60,                                       # data, frames, text
        'red': (r > 150) & (g < 120) & (b < 120) & (r - g > 70),  # the model
        'blue': (b > 170) & (r < 110) & (b - r > 90),          # masked pixels
        'orange': (r > 235) & (g > 195) & (g < 235) & (b > 130) & (b < 185),  # dichroic
        'pink': (r > 225) & (g > 170) & (g < 225) & (b > 170) & (b < 225) & (r - g > 20),
        'coloured': mx - mn > 60,                              # saturated colours
        'green': (g > r + 40) & (g > b + 40),
        'ink': mx < 235,                                       # anything not (almost) white
        'marker': mx < 120,                                    # grey or black markers
    }


def runs(mask):
    """Start and end (inclusive) of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0] - 1))


def merge(indices):
    """Groups of adjacent indices -> their first index."""
    out = []
    for i in sorted(indices):
        if not out or i > out[-1][1] + 1:
            out.append([i, i])
        else:
            out[-1][1] = i
    return [a for a, _ in out]


def frame_rows(dark, min_count, min_run):
    """Rows with at least min_count dark pixels, in runs of which one is min_run long: the top
    and bottom edges of panels (no line of text or data is that dark)."""
    rows = [y for y in np.nonzero(dark.sum(axis=1) >= min_count)[0]
            if any(e - s + 1 >= min_run for s, e in runs(dark[y]))]
    return merge(rows)


def fraction(mask, top, bottom, left, right):
    """Fraction of the panel interior (a pixel in from its frame) where mask holds."""
    region = mask[top + 2:bottom - 1, left + 2:right - 1]
    return float(region.mean()) if region.size else 0.0


# ------------------------------------------------------------------ the checks
def check_target(rgb):
    problems, stats = [], []
    h, w, _ = rgb.shape
    c = classes(rgb)
    rows = frame_rows(c['dark'], int(0.6 * w), int(0.6 * w))
    if len(rows) != 9:
        return ['%d long horizontal frame lines, not 9 (three arms, each a spectrum panel over '
                'a residual panel)' % len(rows)], stats
    arms = [rows[3 * a:3 * a + 3] for a in range(3)]
    for top, mid, bottom in arms:
        if not (mid - top > bottom - mid > 10):
            problems.append('arm block at rows %d/%d/%d: the spectrum panel is not above a '
                            'shorter residual panel' % (top, mid, bottom))
    # the frames' sides: columns dark along the whole height of every arm block
    sides = np.ones(w, dtype=bool)
    for top, _, bottom in arms:
        sides &= c['dark'][top:bottom + 1].all(axis=0)
    cols = merge(np.nonzero(sides)[0])
    if len(cols) < 2:
        return problems + ['no left and right panel edges found'], stats
    left, right = cols[0], cols[-1]
    for a, (top, mid, bottom) in enumerate(arms):
        data = fraction(c['dark'], top, mid, left, right)
        model = fraction(c['red'], top, mid, left, right)
        resid = fraction(c['dark'], mid, bottom, left, right)
        stats.append('arm %d: data %.3f model %.3f residual %.3f' % (a, data, model, resid))
        # a good fit hides much of the data under the model: little black is enough
        if data < 0.001:
            problems.append('arm %d: no data drawn (%.4f of the panel black)' % (a, data))
        if model < 0.003:
            problems.append('arm %d: no model drawn (%.4f of the panel red)' % (a, model))
        if resid < 0.01:
            problems.append('arm %d: no residual drawn (%.4f of the panel black)' % (a, resid))
    blue = int(c['blue'][rows[0]:rows[-1]].sum())
    orange = fraction(c['orange'], arms[0][0], arms[0][1], left, right)
    header_ink = float(c['ink'][:max(rows[0] - 12, 1)].mean())
    inset = int(c['pink'][:rows[0], w // 2:].sum())
    stats.append('masked %d px, dichroic %.3f of arm 0, header ink %.3f, posterior %d px'
                 % (blue, orange, header_ink, inset))
    if blue < 10:
        problems.append('no masked pixels drawn (%d blue pixels)' % blue)
    if orange < 0.01:
        problems.append('no dichroic region shaded in the first arm (%.4f)' % orange)
    if header_ink < 0.02:
        problems.append('no header text (%.4f of the header not white)' % header_ink)
    if inset < 200:
        problems.append('no velocity posterior inset (%d pixels of its fill)' % inset)
    return problems, stats


def check_summary(rgb):
    problems, stats = [], []
    h, w, _ = rgb.shape
    c = classes(rgb)
    rows = frame_rows(c['dark'], int(0.7 * w), int(0.2 * w))
    if len(rows) != 2:
        return ['%d long horizontal frame lines, not 2 (the panels share top and bottom)'
                % len(rows)], stats
    top, bottom = rows
    cols = merge(np.nonzero(c['dark'][top:bottom + 1].all(axis=0))[0])
    if len(cols) != 8:
        return ['%d vertical frame lines, not 8 (three panels and the colour bar)'
                % len(cols)], stats
    boxes = [(cols[2 * k], cols[2 * k + 1]) for k in range(4)]
    widths = [r - l for l, r in boxes]
    if not (widths[1] < 40 < min(widths[0], widths[2], widths[3])):
        return ['panel widths %s: not a panel, a colour bar and two panels' % widths], stats
    kiel, bar, rverr, warn = boxes

    def count(name, box):
        return int(c[name][top + 2:bottom - 1, box[0] + 2:box[1] - 1].sum())
    n_kiel = count('coloured', kiel)
    bar_fill = fraction(c['coloured'], top, bottom, bar[0], bar[1])
    n_rverr = count('marker', rverr) + count('coloured', rverr)
    n_green, n_orange = count('green', warn), count('coloured', warn) - count('green', warn)
    stats.append('Kiel %d px, colour bar %.2f, error panel %d px, bars %d green %d other'
                 % (n_kiel, bar_fill, n_rverr, n_green, n_orange))
    if n_kiel < 60:
        problems.append('Kiel diagram: no coloured markers (%d pixels)' % n_kiel)
    if bar_fill < 0.8:
        problems.append('colour bar not filled (%.2f)' % bar_fill)
    if n_rverr < 60:
        problems.append('VRAD_ERR panel: no markers (%d pixels)' % n_rverr)
    if n_green < 200:
        problems.append('RVS_WARN panel: no bar of targets without warnings (%d green pixels)'
                        % n_green)
    return problems, stats


def check_files(kind, width, height, paths):
    failures = 0
    for path in paths:
        try:
            rgb = decode(path)
        except (OSError, ValueError, zlib.error) as e:
            print('FAIL: %s: not a valid PNG: %s' % (path, e))
            failures += 1
            continue
        problems, stats = [], []
        if rgb.shape[:2] != (height, width):
            problems.append('%dx%d, not %dx%d' % (rgb.shape[1], rgb.shape[0], width, height))
        else:
            problems, stats = (check_target if kind == 'target' else check_summary)(rgb)
        print('%s: %s' % (path, '; '.join(stats) or 'no statistics'))
        for p in problems:
            print('FAIL: %s: %s' % (path, p))
        failures += bool(problems)
    return failures


def selftest():
    """The decoder reads every filter type back exactly; blank images fail both checks."""
    import os
    import tempfile
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    fails = 0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'x.png')
        with open(path, 'wb') as f:
            f.write(encode(img, filters=(0, 1, 2, 3, 4)))
        if not np.array_equal(decode(path), img):
            print('FAIL: selftest: the decoder does not read back what was encoded')
            fails += 1
        with open(path, 'r+b') as f:       # one byte of the image data changed: bad CRC
            f.seek(45)
            byte = f.read(1)
            f.seek(45)
            f.write(bytes([byte[0] ^ 0xff]))
        try:
            decode(path)
            print('FAIL: selftest: a damaged PNG decodes')
            fails += 1
        except ValueError:
            pass
        blank = np.full((100, 120, 3), 255, dtype=np.uint8)
        with open(path, 'wb') as f:
            f.write(encode(blank, filters=(2,)))
        for kind in ('target', 'summary'):
            if check_files(kind, 120, 100, [path]) == 0:
                print('FAIL: selftest: a blank image passes the %s check' % kind)
                fails += 1
    print('png_check selftest: %s' % ('failed' if fails else 'passed'))
    return 1 if fails else 0


def main(argv):
    if len(argv) == 2 and argv[1] == 'selftest':
        return selftest()
    if len(argv) < 5 or argv[1] not in ('target', 'summary'):
        sys.exit(__doc__)
    return 1 if check_files(argv[1], int(argv[2]), int(argv[3]), argv[4:]) else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
