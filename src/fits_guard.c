/* fits_guard.c: the headers of a FITS file checked before cfitsio parses them.
 *
 * Why: Debian 12's cfitsio (4.2.0) overflows a buffer while parsing a binary-table header whose
 * TTYPEn card holds non-ASCII bytes where its quoted string should be (ffgtbp's strcpy; the
 * fortified C library then aborts the process). tests/fuzz/fuzz_desi_read and fuzz_library found
 * it within minutes; in rvsfit-cl one such file would have ended the run for every input after it.
 * The FITS standard allows only the printable ASCII characters (0x20-0x7E) in headers, so a
 * header with any other byte is not FITS and is refused here, naming the HDU and card, before
 * cfitsio sees it.
 *
 * How: the file's HDUs are walked as the standard lays them out: header blocks of 36 80-byte
 * cards up to END, then the data unit, |BITPIX|/8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn)
 * bytes rounded up to whole 2880-byte blocks. Only forwards, so a gzipped file (which cfitsio
 * reads too) is checked through zlib in one pass. Whatever else is wrong with a header (a missing
 * END, a bad NAXISn, a truncated file) stops the walk quietly: cfitsio and the reader's own
 * checks report those with their reasons. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "internal.h"

enum { BLOCK = 2880, CARD = 80, CARDS_PER_BLOCK = BLOCK / CARD };
/* headers longer than this many blocks are left to cfitsio (which reads them, slowly) */
enum { MAX_HEADER_BLOCKS = 100000 };

/* A forward-only byte source: a plain file, or a gzip stream through zlib. */
struct source {
    FILE *in;
    int gz;
    z_stream z;
    unsigned char inbuf[1 << 15];
};

static int source_open(struct source *s, const char *path)
{
    memset(s, 0, sizeof *s);
    s->in = fopen(path, "rb");
    if (!s->in)
        return -1;
    unsigned char magic[2];
    s->gz = fread(magic, 1, 2, s->in) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    if (fseek(s->in, 0, SEEK_SET) != 0) {
        fclose(s->in);
        return -1;
    }
    if (s->gz && inflateInit2(&s->z, 16 + MAX_WBITS) != Z_OK) {
        fclose(s->in);
        return -1;
    }
    return 0;
}

static void source_close(struct source *s)
{
    if (s->gz)
        inflateEnd(&s->z);
    if (s->in)
        fclose(s->in);
}

/* Reads exactly n bytes into buf (NULL: skips them); 0, or -1 at the end or on an error. */
static int source_read(struct source *s, unsigned char *buf, uint64_t n)
{
    static __thread unsigned char sink[1 << 15];
    if (!s->gz) {
        if (!buf)
            return n > (uint64_t)INT64_MAX || fseeko(s->in, (off_t)n, SEEK_CUR) != 0 ? -1 : 0;
        return fread(buf, 1, (size_t)n, s->in) == n ? 0 : -1;
    }
    while (n > 0) {
        size_t want = buf ? (size_t)n : (n < sizeof sink ? (size_t)n : sizeof sink);
        s->z.next_out = buf ? buf : sink;
        s->z.avail_out = (uInt)(want > UINT32_MAX ? UINT32_MAX : want);
        uInt asked = s->z.avail_out;
        while (s->z.avail_out > 0) {
            if (s->z.avail_in == 0) {
                size_t got = fread(s->inbuf, 1, sizeof s->inbuf, s->in);
                if (got == 0)
                    return -1;
                s->z.next_in = s->inbuf;
                s->z.avail_in = (uInt)got;
            }
            int zs = inflate(&s->z, Z_NO_FLUSH);
            if (zs == Z_STREAM_END && s->z.avail_out > 0)
                return -1;
            if (zs != Z_OK && zs != Z_STREAM_END)
                return -1;
        }
        n -= asked;
        if (buf)
            buf += asked;
    }
    return 0;
}

/* The integer value of a card "KEY     = value"; 0 when it has none. */
static int card_integer(const char *card, long long *value)
{
    if (card[8] != '=' || card[9] != ' ')
        return 0;
    char text[CARD - 9];
    memcpy(text, card + 10, CARD - 10);
    text[CARD - 10] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || errno)
        return 0;
    while (*end == ' ')
        end++;
    if (*end && *end != '/')
        return 0;
    *value = v;
    return 1;
}

static int keyword_is(const char *card, const char *name)
{
    size_t n = strlen(name);
    if (memcmp(card, name, n) != 0)
        return 0;
    for (size_t i = n; i < 8; i++)
        if (card[i] != ' ')
            return 0;
    return 1;
}

int rvs_fits_check_headers(const char *path, char *why, size_t why_size)
{
    struct source s;
    why[0] = 0;
    if (source_open(&s, path) != 0)
        return RVS_OK; /* the caller's open reports why */
    unsigned char block[BLOCK];
    int status = RVS_OK;
    for (int hdu = 1;; hdu++) {
        long long bitpix = 0, naxis = -1, pcount = 0, gcount = 1, axes[1000];
        memset(axes, 0xff, sizeof axes); /* -1: not given */
        int have_end = 0, nblocks = 0;
        char extname[72] = "";
        while (!have_end) {
            if (nblocks >= MAX_HEADER_BLOCKS || source_read(&s, block, BLOCK) != 0)
                goto done; /* the end, or a header cfitsio will judge */
            for (int c = 0; c < CARDS_PER_BLOCK && !have_end; c++) {
                const char *card = (const char *)block + c * CARD;
                for (int i = 0; i < CARD; i++) {
                    unsigned char ch = (unsigned char)card[i];
                    if (ch < 0x20 || ch > 0x7e) {
                        snprintf(why, why_size,
                                 "card %d of the header of HDU %d%s%s holds byte 0x%02x at "
                                 "column %d: FITS headers are printable ASCII only, so the file "
                                 "is damaged (or not FITS)",
                                 nblocks * CARDS_PER_BLOCK + c + 1, hdu, extname[0] ? " " : "",
                                 extname, ch, i + 1);
                        status = RVS_ERR_FORMAT;
                        goto done;
                    }
                }
                long long v;
                if (keyword_is(card, "END"))
                    have_end = 1;
                else if (keyword_is(card, "BITPIX") && card_integer(card, &v))
                    bitpix = v;
                else if (keyword_is(card, "NAXIS") && card_integer(card, &v))
                    naxis = v;
                else if (keyword_is(card, "PCOUNT") && card_integer(card, &v))
                    pcount = v;
                else if (keyword_is(card, "GCOUNT") && card_integer(card, &v))
                    gcount = v;
                else if (keyword_is(card, "EXTNAME") && card[8] == '=') {
                    const char *q = strchr(card + 10, '\'');
                    const char *e = q ? memchr(q + 1, '\'', (size_t)(card + CARD - q - 1)) : NULL;
                    if (q && e && (size_t)(e - q - 1) < sizeof extname) {
                        memcpy(extname, q + 1, (size_t)(e - q - 1));
                        extname[e - q - 1] = 0;
                        for (char *t = extname + strlen(extname); t > extname && t[-1] == ' ';)
                            *--t = 0;
                    }
                } else if (memcmp(card, "NAXIS", 5) == 0 && isdigit((unsigned char)card[5])) {
                    long k = strtol(card + 5, NULL, 10);
                    if (k >= 1 && k <= 999 && card_integer(card, &v))
                        axes[k] = v;
                }
            }
            nblocks++;
        }
        /* the data unit: skip it (a header whose sizes make no sense ends the walk) */
        int legal_bitpix = bitpix == 8 || bitpix == 16 || bitpix == 32 || bitpix == 64 ||
                           bitpix == -32 || bitpix == -64;
        if (naxis < 0 || naxis > 999 || !legal_bitpix || pcount < 0 || gcount < 0)
            break;
        uint64_t count = naxis > 0 ? 1 : 0;
        for (long long k = 1; k <= naxis; k++) {
            if (axes[k] < 0 || (axes[k] > 0 && count > UINT64_MAX / (uint64_t)axes[k]))
                goto done;
            count *= (uint64_t)axes[k];
        }
        uint64_t bytes = (uint64_t)(bitpix < 0 ? -bitpix : bitpix) / 8;
        if (count > 0 || pcount > 0) {
            if (count > UINT64_MAX / 2 || (uint64_t)pcount > UINT64_MAX / 2 - count)
                goto done;
            uint64_t elements = (uint64_t)pcount + count;
            if (elements > UINT64_MAX / bytes / (uint64_t)(gcount ? gcount : 1))
                goto done;
            uint64_t size = bytes * (uint64_t)(gcount ? gcount : 1) * elements;
            uint64_t padded = (size + BLOCK - 1) / BLOCK * BLOCK;
            if (source_read(&s, NULL, padded) != 0)
                break;
        }
    }
done:
    source_close(&s);
    return status;
}

int rvs_fits_guard(const char *path, const char *module, const char *advice)
{
    char why[400];
    if (rvs_fits_check_headers(path, why, sizeof why) == RVS_OK)
        return RVS_OK;
    rvs_log(RVS_LOG_ERROR, module, "%s: %s; %s", path, why, advice);
    return RVS_ERR_FORMAT;
}
