/* fits_guard.c: the headers of a FITS file checked before cfitsio parses them.
 *
 * Why: Debian 12's cfitsio (4.2.0) overflows a buffer while parsing a binary-table header whose
 * TTYPEn card holds non-ASCII bytes where its quoted string should be (ffgtbp's strcpy; the
 * fortified C library then aborts the process). tests/fuzz/fuzz_desi_read and fuzz_library found
 * it within minutes; in rvsfit-cl one such file would have ended the run for every input after it.
 * The FITS standard allows only the printable ASCII characters (0x20-0x7E) in headers, so a
 * header with any other byte is not FITS and is refused here, naming the HDU and card, before
 * cfitsio sees it; so is an unquoted value longer than any FITS value can be (the same overflow
 * with ASCII bytes: "TTYPE15 =mmm...m").
 *
 * How: every 2880-byte block is read, forwards only (a gzipped file, which cfitsio reads too, is
 * checked through zlib in one pass); a block that starts a header (SIMPLE first, XTENSION
 * anywhere: cfitsio finds HDUs only at block boundaries) and the blocks after it up to the END
 * card are checked card by card. Whatever else is wrong with a header is left to cfitsio and the
 * reader's own checks, which report it with its reason. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "base/internal.h"

enum { BLOCK = 2880, CARD = 80, CARDS_PER_BLOCK = BLOCK / CARD };

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

/* 1 when the block starts a header: the primary one, or an extension (cfitsio finds both only
 * at block boundaries, so no header can start elsewhere) */
static int starts_header(const unsigned char *block, int first)
{
    return memcmp(block, "XTENSION=", 9) == 0 || (first && memcmp(block, "SIMPLE  =", 9) == 0);
}

int rvs_fits_check_headers(const char *path, char *why, size_t why_size)
{
    struct source s;
    why[0] = 0;
    if (source_open(&s, path) != 0)
        return RVS_OK; /* the caller's open reports why */
    /* Every block is looked at, data blocks too, rather than skipping data units by their
     * sizes: a header whose sizes this walk could not read (a damaged NAXIS, BITPIX) may still
     * be one cfitsio reads, and the header after it must not escape the check (a fuzzed file
     * did just that). Data blocks are skipped by their first bytes. */
    static __thread unsigned char block[BLOCK];
    int status = RVS_OK, hdu = 0, in_header = 0, card_in_header = 0;
    char extname[72] = "";
    for (long long nblock = 0; source_read(&s, block, BLOCK) == 0; nblock++) {
        if (!in_header) {
            if (!starts_header(block, nblock == 0))
                continue;
            in_header = 1;
            hdu++;
            card_in_header = 0;
            extname[0] = 0;
        }
        for (int c = 0; c < CARDS_PER_BLOCK && in_header; c++) {
            const char *card = (const char *)block + c * CARD;
            card_in_header++;
            if (memcmp(card, "EXTNAME = '", 11) == 0) {
                const char *e = memchr(card + 11, '\'', CARD - 11);
                size_t len = e ? (size_t)(e - card - 11) : 0;
                memcpy(extname, card + 11, len);
                extname[len] = 0;
                while (len > 0 && extname[len - 1] == ' ')
                    extname[--len] = 0;
            }
            for (int i = 0; i < CARD; i++) {
                unsigned char ch = (unsigned char)card[i];
                if (ch < 0x20 || ch > 0x7e) {
                    snprintf(why, why_size,
                             "card %d of the header of HDU %d%s%s holds byte 0x%02x at column %d: "
                             "FITS headers are printable ASCII only, so the file is damaged (or "
                             "not FITS)",
                             card_in_header, hdu, extname[0] ? " " : "", extname, ch, i + 1);
                    status = RVS_ERR_FORMAT;
                    goto done;
                }
            }
            /* an unquoted value longer than a quoted string can be (68 characters): cfitsio
             * copies such a TTYPEn value into a 70-byte field and overflows it (a fuzzed
             * "TTYPE15 =mmm...m" aborted it); no FITS number or logical is that long */
            if (card[8] == '=') {
                int v = 9;
                while (v < CARD && card[v] == ' ')
                    v++;
                if (v < CARD && card[v] != '\'') {
                    int e = v;
                    while (e < CARD && card[e] != '/')
                        e++;
                    while (e > v && card[e - 1] == ' ')
                        e--;
                    if (e - v > 68) {
                        snprintf(why, why_size,
                                 "card %d of the header of HDU %d%s%s has an unquoted value of %d "
                                 "characters, longer than any FITS value: the file is damaged",
                                 card_in_header, hdu, extname[0] ? " " : "", extname, e - v);
                        status = RVS_ERR_FORMAT;
                        goto done;
                    }
                }
            }
            if (memcmp(card, "END", 3) == 0 && memcmp(card + 3, "     ", 5) == 0)
                in_header = 0;
        }
    }
done:
    source_close(&s);
    return status;
}

/* cfitsio uncompresses a gzipped file in memory and allocates, first, the size the gzip trailer
 * claims (ISIZE, the last four bytes). A 14 kB file claiming 4 GB made it allocate 4 GB (found by
 * tests/fuzz/fuzz_desi_read; fuzz_library then did it with a library). Deflate cannot expand more than 1032:1, so a larger claim is a
 * damaged (or hostile) file; say so before cfitsio sees it. RVS_OK for every other file. */
static int check_gzip_claim(const char *path, long long size, const char *module)
{
    enum { DEFLATE_MAX_RATIO = 1032 };
    unsigned char magic[2], trailer[4];
    FILE *in = fopen(path, "rb");
    if (!in)
        return RVS_OK; /* cfitsio reports the real reason */
    int gz = fread(magic, 1, 2, in) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    int have = gz && size >= 18 && fseek(in, -4L, SEEK_END) == 0 &&
               fread(trailer, 1, 4, in) == 4;
    fclose(in);
    if (!have)
        return RVS_OK;
    unsigned long long claim = (unsigned long long)trailer[0] | (unsigned long long)trailer[1] << 8 |
                               (unsigned long long)trailer[2] << 16 |
                               (unsigned long long)trailer[3] << 24;
    /* read as cfitsio reads it (mem_compress_open): ISIZE is the length modulo 2^32, and a claim
     * below the compressed size of a file over 10000 bytes gets 2^32 added (a 74 kB file
     * claiming 0 bytes made cfitsio allocate 4 GiB: test_fuzz.sh's short run) */
    if (size > 10000)
        while (claim < (unsigned long long)size)
            claim += 1ULL << 32;
    if (claim <= (unsigned long long)size * DEFLATE_MAX_RATIO)
        return RVS_OK;
    rvs_log(RVS_LOG_ERROR, module,
            "%s: the gzip trailer claims %llu uncompressed bytes from %lld compressed ones, more "
            "than deflate can produce (1032:1): the file is damaged; copy it again from its source",
            path, claim, size);
    return RVS_ERR_FORMAT;
}

/* A gzipped input must be a whole gzip stream. cfitsio uncompresses what it can of a truncated
 * or corrupt one and says nothing, so the file then looks like a shorter FITS file whose later
 * HDUs (an arm, SCORES) are simply not there: the user was told "HDU Z_WAVELENGTH is missing",
 * or, with that arm left out, got outputs without SCORES (tests/test_corpus.sh). zlib inflates
 * the whole stream here (no output kept) and checks its CRC and length. RVS_OK for a file that
 * is not gzipped (*uncompressed -1), or a whole stream (*uncompressed its length). */
static int check_gzip_stream(const char *path, long long *uncompressed, const char *module)
{
    unsigned char magic[2];
    *uncompressed = -1;
    FILE *in = fopen(path, "rb");
    if (!in)
        return RVS_OK; /* cfitsio reports the real reason */
    int gz = fread(magic, 1, 2, in) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    if (!gz || fseek(in, 0, SEEK_SET) != 0) {
        fclose(in);
        return RVS_OK;
    }
    z_stream z;
    memset(&z, 0, sizeof z);
    /* 16 + MAX_WBITS: a gzip wrapper, whose CRC-32 and length zlib verifies */
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
        fclose(in);
        rvs_log(RVS_LOG_ERROR, module, "%s: zlib cannot start (out of host memory?)", path);
        return RVS_ERR_NOMEM;
    }
    static __thread unsigned char inbuf[1 << 16], outbuf[1 << 16];
    int zs = Z_OK;
    unsigned long long total = 0;
    while (zs != Z_STREAM_END) {
        if (z.avail_in == 0) {
            size_t n = fread(inbuf, 1, sizeof inbuf, in);
            if (n == 0)
                break; /* the file ended before the stream did */
            z.next_in = inbuf;
            z.avail_in = (uInt)n;
        }
        z.next_out = outbuf;
        z.avail_out = sizeof outbuf;
        zs = inflate(&z, Z_NO_FLUSH);
        total += sizeof outbuf - z.avail_out;
        if (zs != Z_OK && zs != Z_STREAM_END)
            break;
    }
    int read_error = ferror(in);
    fclose(in);
    const char *why = zs == Z_STREAM_END ? NULL
                      : read_error       ? strerror(errno)
                      : zs == Z_OK || zs == Z_BUF_ERROR
                          ? "the file ends before the compressed stream does: it is truncated"
                          : z.msg ? z.msg
                                  : "the compressed data are corrupt";
    inflateEnd(&z);
    if (!why) {
        *uncompressed = (long long)total;
        return RVS_OK;
    }
    rvs_log(RVS_LOG_ERROR, module,
            "%s: the gzip stream is damaged after %llu uncompressed bytes (zlib: %s); copy or "
            "download the file again",
            path, total, why);
    return RVS_ERR_FORMAT;
}

int rvs_fits_guard(const char *path, const char *module, const char *advice,
                   long long *uncompressed)
{
    long long size = -1;
    struct stat st;
    if (uncompressed)
        *uncompressed = -1;
    if (stat(path, &st) != 0)
        return RVS_OK; /* the caller's open reports why */
    int status = check_gzip_claim(path, (long long)st.st_size, module);
    if (status == RVS_OK)
        status = check_gzip_stream(path, &size, module);
    if (status != RVS_OK)
        return status;
    if (uncompressed)
        *uncompressed = size;
    char why[400];
    if (rvs_fits_check_headers(path, why, sizeof why) == RVS_OK)
        return RVS_OK;
    rvs_log(RVS_LOG_ERROR, module, "%s: %s; %s", path, why, advice);
    return RVS_ERR_FORMAT;
}
