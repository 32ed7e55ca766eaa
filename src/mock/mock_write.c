/* mock_write.c: the files of rvsfit-cl-mock (doc/mock.md): the DESI healpix coadd (PRIMARY,
 * FIBERMAP, EXP_FIBERMAP, {B,R,Z}_{WAVELENGTH,FLUX,IVAR,MASK,RESOLUTION}, SCORES; layout and
 * units of desidatamodel's coadd files), the truth table, and optionally a redrock file
 * (REDSHIFTS). Every file is written to a temporary name beside its destination, with
 * CHECKSUM/DATASUM in every HDU, and renamed. Nothing here depends on the time except the
 * checksum cards' comments, so the same seed gives the same bytes. */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/internal.h"
#include "mock/mock.h"
#include "base/files.h"

#define MOD "mock"

static const char arm_upper[RVS_DESI_NARMS] = {'B', 'R', 'Z'};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int fits_fail(int fst, const char *path, const char *what)
{
    char text[FLEN_STATUS] = "", msg[FLEN_ERRMSG];
    fits_get_errstatus(fst, text);
    rvs_log(RVS_LOG_ERROR, MOD, "%s: %s: %s (cfitsio status %d)", path, what, text, fst);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cfitsio: %s", path, msg);
    return RVS_ERR_IO;
}

#define FITS_TRY(path, what)                                                                       \
    do {                                                                                           \
        if (fst != 0) {                                                                            \
            status = fits_fail(fst, (path), (what));                                               \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

char *rvs_mock_companion_path(const char *out_path, const char *kind)
{
    const char *slash = strrchr(out_path, '/');
    size_t dir_len = slash ? (size_t)(slash - out_path) + 1 : 0;
    const char *base = out_path + dir_len;
    /* coadd-X.fits -> <kind>-X.fits (DESI's naming); any other name gets the prefix */
    if (strncmp(base, "coadd-", 6) == 0)
        base += 6;
    size_t len = strlen(out_path) + strlen(kind) + 2;
    char *p = rvs_malloc(len);
    if (p)
        snprintf(p, len, "%.*s%s-%s", (int)dir_len, out_path, kind, base);
    return p;
}

/* One table column: name, TFORM, unit, cfitsio type and the data (char ** for strings). */
struct col {
    const char *name, *form, *unit;
    int type;
    const void *data;
};

static int write_table(fitsfile *f, const char *path, const char *extname, size_t nrows,
                       const struct col *cols, int ncols)
{
    int status = RVS_OK, fst = 0;
    char *ttype[64], *tform[64], *tunit[64];
    for (int c = 0; c < ncols; c++) {
        ttype[c] = (char *)cols[c].name;
        tform[c] = (char *)cols[c].form;
        tunit[c] = (char *)(cols[c].unit ? cols[c].unit : "");
    }
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)nrows, ncols, ttype, tform, tunit, extname, &fst);
    FITS_TRY(path, extname);
    for (int c = 0; c < ncols && nrows > 0; c++) {
        long repeat = 1;
        int tc = 0;
        long width = 0;
        fits_get_coltype(f, c + 1, &tc, &repeat, &width, &fst);
        LONGLONG nelem = (LONGLONG)nrows * (cols[c].type == TSTRING ? 1 : repeat);
        fits_write_col(f, cols[c].type, c + 1, 1, 1, nelem, (void *)cols[c].data, &fst);
        FITS_TRY(path, cols[c].name);
    }
cleanup:
    return status;
}

static int finish_hdu(fitsfile *f, const char *path, const char *what)
{
    int status = RVS_OK, fst = 0;
    fits_write_chksum(f, &fst);
    FITS_TRY(path, what);
cleanup:
    return status;
}

static int open_tmp(const char *final_path, char **tmp, fitsfile **f)
{
    int status = RVS_OK, fst = 0;
    RVS_TRY(rvs_file_reserve_tmp(final_path, tmp));
    unlink(*tmp);
    fits_create_diskfile(f, *tmp, &fst);
    FITS_TRY(*tmp, "create the file");
cleanup:
    return status;
}

static int close_commit(fitsfile **f, char **tmp, const char *final_path)
{
    int status = RVS_OK, fst = 0;
    fits_close_file(*f, &fst);
    *f = NULL;
    FITS_TRY(*tmp, "finish writing the file");
    RVS_TRY(rvs_file_commit(*tmp, final_path));
    free(*tmp);
    *tmp = NULL;
cleanup:
    return status;
}

static void abandon(fitsfile **f, char **tmp)
{
    if (*f) {
        int fst = 0;
        fits_close_file(*f, &fst);
        fits_clear_errmsg();
        *f = NULL;
    }
    if (*tmp) {
        unlink(*tmp);
        free(*tmp);
        *tmp = NULL;
    }
}

/* MOCKLSFM: 'total' (the spectra's LSF is R) or 'on-top' (R on top of the templates' own LSF;
 * also with --lsf-scale 0, where R is the identity). */
static const char *lsf_mode(const struct rvs_mock *m)
{
    return m->opt.lsf_scale > 0 && !m->opt.lsf_on_top ? "total" : "on-top";
}
static const char lsf_mode_comment[] = "LSF: 'total' = R; 'on-top' = R x template LSF";

static const char *continuum_name(const struct rvs_mock *m)
{
    return m->opt.continuum == RVS_MOCK_CONTINUUM_LEGENDRE ? "legendre" : "realistic";
}

static int write_primary(fitsfile *f, const char *path, const struct rvs_mock *m,
                         const char *command_line)
{
    int status = RVS_OK, fst = 0, yes = 1;
    long hpx = m->opt.healpix, nside = m->opt.nside;
    unsigned long long seed = (unsigned long long)m->opt.seed;
    double lsf = m->opt.lsf_scale;
    fits_create_img(f, BYTE_IMG, 0, NULL, &fst);
    fits_write_key(f, TSTRING, "SPGRP", "healpix", "spectral grouping", &fst);
    fits_write_key(f, TLONG, "SPGRPVAL", &hpx, "healpix pixel", &fst);
    fits_write_key(f, TLONG, "HPXPIXEL", &hpx, "healpix pixel (nominal for a mock)", &fst);
    fits_write_key(f, TLONG, "HPXNSIDE", &nside, "healpix nside", &fst);
    fits_write_key(f, TLOGICAL, "HPXNEST", &yes, "nested healpix numbering", &fst);
    fits_write_key(f, TSTRING, "SURVEY", (void *)m->opt.survey, "survey", &fst);
    fits_write_key(f, TSTRING, "PROGRAM", (void *)m->opt.program, "program", &fst);
    fits_write_key(f, TLOGICAL, "MOCK", &yes, "made by rvsfit-cl-mock, not observed", &fst);
    fits_write_key(f, TSTRING, "MOCKVER", PACKAGE_VERSION, "rvsfit-cl-mock version", &fst);
    fits_write_key(f, TULONGLONG, "MOCKSEED", &seed, "random seed", &fst);
    fits_write_key(f, TDOUBLE, "MOCKLSF", &lsf, "LSF FWHM scale (0: identity RESOLUTION)", &fst);
    fits_write_key(f, TSTRING, "MOCKLSFM", (void *)lsf_mode(m), lsf_mode_comment, &fst);
    fits_write_key(f, TSTRING, "MOCKCONT", (void *)continuum_name(m), "continuum model", &fst);
    fits_write_key(f, TSTRING, "MOCKTREV", (void *)m->setups_rev, "template library revision",
                   &fst);
    if (command_line && command_line[0])
        fits_write_key_longstr(f, "MOCKCMD", command_line, NULL, &fst);
    FITS_TRY(path, "primary keywords");
    RVS_TRY(finish_hdu(f, path, "PRIMARY"));
cleanup:
    return status;
}

static char *string_block(size_t n, size_t width, char ***ptrs)
{
    char *block = rvs_calloc(n ? n : 1, width + 1);
    *ptrs = rvs_calloc(n ? n : 1, sizeof **ptrs);
    if (!block || !*ptrs) {
        free(block);
        free(*ptrs);
        *ptrs = NULL;
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        (*ptrs)[i] = block + i * (width + 1);
    return block;
}

static int write_fibermap(fitsfile *f, const char *path, const struct rvs_mock *m)
{
    int status = RVS_OK;
    size_t n = m->n;
    int64_t *tid = rvs_malloc(n * 8), *refid = rvs_malloc(n * 8), *desi = rvs_malloc(n * 8),
            *mws = rvs_malloc(n * 8), *zero64 = rvs_calloc(n, 8);
    int32_t *status_col = rvs_calloc(n, 4), *brickid = rvs_malloc(n * 4),
            *objid = rvs_malloc(n * 4);
    int16_t *numexp = rvs_malloc(n * 2);
    double *ra = rvs_malloc(n * 8), *dec = rvs_malloc(n * 8);
    float *pmra = rvs_malloc(n * 4), *pmdec = rvs_malloc(n * 4), *plx = rvs_malloc(n * 4),
          *epoch = rvs_malloc(n * 4), *gmag = rvs_malloc(n * 4), *flux_r = rvs_malloc(n * 4),
          *exptime = rvs_malloc(n * 4);
    char **objtype = NULL, **refcat = NULL, **photsys = NULL, **brickname = NULL,
         **morph = NULL;
    char *b1 = string_block(n, 3, &objtype), *b2 = string_block(n, 2, &refcat),
         *b3 = string_block(n, 1, &photsys), *b4 = string_block(n, 8, &brickname),
         *b5 = string_block(n, 4, &morph);
    if (!tid || !refid || !desi || !mws || !zero64 || !status_col || !brickid || !objid ||
        !numexp || !ra || !dec || !pmra || !pmdec || !plx || !epoch || !gmag || !flux_r ||
        !exptime || !b1 || !b2 || !b3 || !b4 || !b5) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t t = 0; t < n; t++) {
        const struct rvs_mock_target *g = &m->t[t];
        tid[t] = g->targetid;
        refid[t] = g->ref_id;
        desi[t] = (int64_t)1 << 61;          /* desi_mask MWS_ANY */
        mws[t] = 1 | ((int64_t)1 << 5);      /* mws_mask MWS_BROAD | MWS_BROAD_SOUTH */
        brickid[t] = 330000 + (int32_t)(t % 1000);
        objid[t] = (int32_t)t;
        numexp[t] = (int16_t)g->nexp;
        ra[t] = g->ra;
        dec[t] = g->dec;
        /* deterministic, plausible astrometry and photometry derived from the target */
        pmra[t] = (float)(5 * sin((double)t + 1));
        pmdec[t] = (float)(-3 * cos((double)t + 2));
        plx[t] = 0.5f + 0.1f * (float)(t % 7);
        epoch[t] = 2015.5f;
        flux_r[t] = (float)(g->flux_level * 4); /* nanomaggies-ish, monotone in the level */
        gmag[t] = (float)(22.5 - 2.5 * log10(g->flux_level * 4));
        exptime[t] = (float)(g->nexp * 600);
        snprintf(objtype[t], 4, "TGT");
        snprintf(refcat[t], 3, "G2");
        snprintf(photsys[t], 2, "S");
        snprintf(brickname[t], 9, "1500p%03d", (int)(t % 1000));
        snprintf(morph[t], 5, "PSF");
    }
    const struct col cols[] = {
        {"TARGETID", "K", NULL, TLONGLONG, tid},
        {"COADD_FIBERSTATUS", "J", NULL, TINT, status_col},
        {"TARGET_RA", "D", "deg", TDOUBLE, ra},
        {"TARGET_DEC", "D", "deg", TDOUBLE, dec},
        {"PMRA", "E", "mas yr-1", TFLOAT, pmra},
        {"PMDEC", "E", "mas yr-1", TFLOAT, pmdec},
        {"REF_EPOCH", "E", "yr", TFLOAT, epoch},
        {"OBJTYPE", "3A", NULL, TSTRING, objtype},
        {"BRICKNAME", "8A", NULL, TSTRING, brickname},
        {"BRICKID", "J", NULL, TINT, brickid},
        {"BRICK_OBJID", "J", NULL, TINT, objid},
        {"MORPHTYPE", "4A", NULL, TSTRING, morph},
        {"FLUX_R", "E", "nanomaggy", TFLOAT, flux_r},
        {"REF_ID", "K", NULL, TLONGLONG, refid},
        {"REF_CAT", "2A", NULL, TSTRING, refcat},
        {"GAIA_PHOT_G_MEAN_MAG", "E", "mag", TFLOAT, gmag},
        {"PARALLAX", "E", "mas", TFLOAT, plx},
        {"PHOTSYS", "1A", NULL, TSTRING, photsys},
        {"DESI_TARGET", "K", NULL, TLONGLONG, desi},
        {"BGS_TARGET", "K", NULL, TLONGLONG, zero64},
        {"MWS_TARGET", "K", NULL, TLONGLONG, mws},
        {"SCND_TARGET", "K", NULL, TLONGLONG, zero64},
        {"COADD_NUMEXP", "I", NULL, TSHORT, numexp},
        {"COADD_EXPTIME", "E", "s", TFLOAT, exptime},
    };
    RVS_TRY(write_table(f, path, "FIBERMAP", n, cols, (int)(sizeof cols / sizeof cols[0])));
    RVS_TRY(finish_hdu(f, path, "FIBERMAP"));
cleanup:
    free(tid), free(refid), free(desi), free(mws), free(zero64), free(status_col);
    free(brickid), free(objid), free(numexp), free(ra), free(dec), free(pmra), free(pmdec);
    free(plx), free(epoch), free(gmag), free(flux_r), free(exptime);
    free(b1), free(b2), free(b3), free(b4), free(b5);
    free(objtype), free(refcat), free(photsys), free(brickname), free(morph);
    return status;
}

static int write_exp_fibermap(fitsfile *f, const char *path, const struct rvs_mock *m)
{
    int status = RVS_OK;
    size_t nrows = 0;
    for (size_t t = 0; t < m->n; t++)
        nrows += (size_t)m->t[t].nexp;
    int64_t *tid = rvs_malloc(nrows * 8);
    int32_t *night = rvs_malloc(nrows * 4), *expid = rvs_malloc(nrows * 4),
            *tile = rvs_malloc(nrows * 4), *fiber = rvs_malloc(nrows * 4),
            *fstat = rvs_calloc(nrows ? nrows : 1, 4);
    int16_t *petal = rvs_malloc(nrows * 2);
    double *mjd = rvs_malloc(nrows * 8), *exptime = rvs_malloc(nrows * 8);
    if (!tid || !night || !expid || !tile || !fiber || !fstat || !petal || !mjd || !exptime) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    size_t k = 0;
    for (size_t t = 0; t < m->n; t++) {
        const struct rvs_mock_target *g = &m->t[t];
        int32_t f0 = (int32_t)((t * 37) % 5000);
        for (int e = 0; e < g->nexp; e++, k++) {
            tid[k] = g->targetid;
            expid[k] = 100000 + 10 * (int32_t)(t % 7) + e; /* a few shared exposures */
            night[k] = 20230101 + e;
            tile[k] = 20000 + e;
            fiber[k] = (f0 + 500 * e) % 5000;
            petal[k] = (int16_t)(fiber[k] / 500);
            mjd[k] = 59945.2 + e + 0.01 * (double)(t % 7);
            exptime[k] = 600;
        }
    }
    const struct col cols[] = {
        {"TARGETID", "K", NULL, TLONGLONG, tid},  {"NIGHT", "J", NULL, TINT, night},
        {"EXPID", "J", NULL, TINT, expid},        {"MJD", "D", NULL, TDOUBLE, mjd},
        {"TILEID", "J", NULL, TINT, tile},        {"EXPTIME", "D", "s", TDOUBLE, exptime},
        {"PETAL_LOC", "I", NULL, TSHORT, petal},  {"FIBER", "J", NULL, TINT, fiber},
        {"FIBERSTATUS", "J", NULL, TINT, fstat},
    };
    RVS_TRY(write_table(f, path, "EXP_FIBERMAP", nrows, cols, (int)(sizeof cols / sizeof cols[0])));
    RVS_TRY(finish_hdu(f, path, "EXP_FIBERMAP"));
cleanup:
    free(tid), free(night), free(expid), free(tile), free(fiber), free(fstat), free(petal);
    free(mjd), free(exptime);
    return status;
}

static int write_image(fitsfile *f, const char *path, const char *name, int bitpix, int datatype,
                       int naxis, const long *naxes, const void *data, const char *bunit)
{
    int status = RVS_OK, fst = 0;
    LONGLONG n = 1;
    for (int i = 0; i < naxis; i++)
        n *= naxes[i];
    fits_create_img(f, bitpix, naxis, (long *)naxes, &fst);
    fits_write_key(f, TSTRING, "EXTNAME", (void *)name, "extension name", &fst);
    if (bunit)
        fits_write_key(f, TSTRING, "BUNIT", (void *)bunit, NULL, &fst);
    FITS_TRY(path, name);
    if (n > 0)
        fits_write_img(f, datatype, 1, n, (void *)data, &fst);
    FITS_TRY(path, name);
    RVS_TRY(finish_hdu(f, path, name));
cleanup:
    return status;
}

static int write_scores(fitsfile *f, const char *path, const struct rvs_mock *m)
{
    int status = RVS_OK;
    size_t n = m->n;
    int64_t *tid = rvs_malloc(n * 8);
    float *sn[RVS_DESI_NARMS], *medflux[RVS_DESI_NARMS];
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        sn[a] = rvs_malloc(n * 4);
        medflux[a] = rvs_malloc(n * 4);
    }
    float *work = rvs_malloc(m->nwave[2] * 4 + m->nwave[0] * 4 + m->nwave[1] * 4);
    char names[2 * RVS_DESI_NARMS][32];
    struct col cols[1 + 2 * RVS_DESI_NARMS];
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (!sn[a] || !medflux[a])
            status = RVS_ERR_NOMEM;
    if (!tid || !work || status) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    cols[0] = (struct col){"TARGETID", "K", NULL, TLONGLONG, tid};
    for (size_t t = 0; t < n; t++)
        tid[t] = m->t[t].targetid;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        size_t nw = m->nwave[a];
        for (size_t t = 0; t < n; t++) {
            sn[a][t] = (float)m->t[t].sn[a];
            /* median flux over all pixels (desispec's MEDIAN_COADD_FLUX_X) */
            memcpy(work, m->flux[a] + t * nw, nw * 4);
            qsort(work, nw, sizeof *work, cmp_float);
            size_t h = nw / 2;
            medflux[a][t] = nw % 2 ? work[h] : (work[h - 1] + work[h]) / 2.0f;
        }
        snprintf(names[2 * a], sizeof names[0], "MEDIAN_COADD_FLUX_%c", arm_upper[a]);
        snprintf(names[2 * a + 1], sizeof names[0], "MEDIAN_COADD_SNR_%c", arm_upper[a]);
        cols[1 + 2 * a] = (struct col){names[2 * a], "E", NULL, TFLOAT, medflux[a]};
        cols[2 + 2 * a] = (struct col){names[2 * a + 1], "E", NULL, TFLOAT, sn[a]};
    }
    RVS_TRY(write_table(f, path, "SCORES", n, cols, 1 + 2 * RVS_DESI_NARMS));
    RVS_TRY(finish_hdu(f, path, "SCORES"));
cleanup:
    free(tid);
    free(work);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(sn[a]);
        free(medflux[a]);
    }
    return status;
}

static int write_coadd(const struct rvs_mock *m, const char *path, const char *command_line)
{
    int status = RVS_OK;
    fitsfile *f = NULL;
    char *tmp = NULL;
    RVS_TRY(open_tmp(path, &tmp, &f));
    RVS_TRY(write_primary(f, tmp, m, command_line));
    RVS_TRY(write_fibermap(f, tmp, m));
    RVS_TRY(write_exp_fibermap(f, tmp, m));
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        char name[32];
        long nw = (long)m->nwave[a], n = (long)m->n;
        long ax1[1] = {nw}, ax2[2] = {nw, n}, ax3[3] = {nw, RVS_MOCK_NDIAG, n};
        snprintf(name, sizeof name, "%c_WAVELENGTH", arm_upper[a]);
        RVS_TRY(write_image(f, tmp, name, DOUBLE_IMG, TDOUBLE, 1, ax1, m->wave[a], "Angstrom"));
        snprintf(name, sizeof name, "%c_FLUX", arm_upper[a]);
        RVS_TRY(write_image(f, tmp, name, FLOAT_IMG, TFLOAT, 2, ax2, m->flux[a],
                            "10**-17 erg/(s cm2 Angstrom)"));
        snprintf(name, sizeof name, "%c_IVAR", arm_upper[a]);
        RVS_TRY(write_image(f, tmp, name, FLOAT_IMG, TFLOAT, 2, ax2, m->ivar[a],
                            "10**+34 (s2 cm4 Angstrom2) / erg2"));
        snprintf(name, sizeof name, "%c_MASK", arm_upper[a]);
        RVS_TRY(write_image(f, tmp, name, LONG_IMG, TINT, 2, ax2, m->mask[a], NULL));
        snprintf(name, sizeof name, "%c_RESOLUTION", arm_upper[a]);
        RVS_TRY(write_image(f, tmp, name, FLOAT_IMG, TFLOAT, 3, ax3, m->resolution[a], NULL));
    }
    RVS_TRY(write_scores(f, tmp, m));
    RVS_TRY(close_commit(&f, &tmp, path));
cleanup:
    abandon(&f, &tmp);
    return status;
}

static int write_truth(const struct rvs_mock *m, const char *path, const char *coadd_path)
{
    int status = RVS_OK, fst = 0;
    fitsfile *f = NULL;
    char *tmp = NULL;
    size_t n = m->n;
    int64_t *tid = rvs_malloc(n * 8);
    enum { NV = 12 };
    double *v[NV];
    int32_t *cosf = rvs_malloc(n * 3 * 4), *cosu = rvs_malloc(n * 3 * 4);
    double *sn = rvs_malloc(n * 3 * 8), *cont = rvs_malloc(n * 9 * 8),
           *outside = rvs_malloc(n * 3 * 8), *contmiss = rvs_malloc(n * 3 * 8);
    for (int k = 0; k < NV; k++)
        v[k] = rvs_malloc(n * 8);
    for (int k = 0; k < NV; k++)
        if (!v[k])
            status = RVS_ERR_NOMEM;
    if (!tid || !cosf || !cosu || !sn || !cont || !outside || !contmiss || status) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t t = 0; t < n; t++) {
        const struct rvs_mock_target *g = &m->t[t];
        tid[t] = g->targetid;
        double vals[NV] = {g->theta[0], g->theta[1], g->theta[2], g->theta[3], g->vrad,
                           g->vsini,    g->snr,      g->flux_level, g->flux_scale,
                           g->lsf_factor, g->vrad / RVS_SPEED_OF_LIGHT_KMS, g->ebv};
        for (int k = 0; k < NV; k++)
            v[k][t] = vals[k];
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            sn[t * 3 + a] = g->sn[a];
            cosf[t * 3 + a] = g->ncosmic_flagged[a];
            cosu[t * 3 + a] = g->ncosmic_unflagged[a];
            outside[t * 3 + a] = g->outside[a];
            contmiss[t * 3 + a] = g->contmiss[a];
            for (int k = 0; k < 3; k++)
                cont[t * 9 + a * 3 + k] = g->cont[a][k];
        }
    }
    const struct col cols[] = {
        {"TARGETID", "K", NULL, TLONGLONG, tid},
        {"TEFF", "D", "K", TDOUBLE, v[0]},
        {"LOGG", "D", "dex", TDOUBLE, v[1]},
        {"FEH", "D", "dex", TDOUBLE, v[2]},
        {"ALPHAFE", "D", "dex", TDOUBLE, v[3]},
        {"VRAD", "D", "km s-1", TDOUBLE, v[4]},
        {"VSINI", "D", "km s-1", TDOUBLE, v[5]},
        {"SNR", "D", NULL, TDOUBLE, v[6]},
        {"SN", "3D", NULL, TDOUBLE, sn},
        {"FLUXLEVEL", "D", "1e-17 erg s-1 cm-2 Angstrom-1", TDOUBLE, v[7]},
        {"FLUXSCALE", "D", NULL, TDOUBLE, v[8]},
        {"CONT", "9D", NULL, TDOUBLE, cont},
        {"EBV", "D", "mag", TDOUBLE, v[11]},
        {"CONTMISS", "3D", NULL, TDOUBLE, contmiss},
        {"LSFFAC", "D", NULL, TDOUBLE, v[9]},
        {"NCOSMIC_FLAGGED", "3J", NULL, TINT, cosf},
        {"NCOSMIC_UNFLAGGED", "3J", NULL, TINT, cosu},
        {"OUTSIDE", "3D", NULL, TDOUBLE, outside},
        {"Z", "D", NULL, TDOUBLE, v[10]},
    };
    RVS_TRY(open_tmp(path, &tmp, &f));
    {
        unsigned long long seed = (unsigned long long)m->opt.seed;
        double lsf = m->opt.lsf_scale;
        const char *base = strrchr(coadd_path, '/');
        fits_create_img(f, BYTE_IMG, 0, NULL, &fst);
        fits_write_key(f, TSTRING, "MOCKVER", PACKAGE_VERSION, "rvsfit-cl-mock version", &fst);
        fits_write_key(f, TULONGLONG, "MOCKSEED", &seed, "random seed", &fst);
        double cscale = m->opt.continuum_scale;
        fits_write_key(f, TDOUBLE, "MOCKLSF", &lsf, "LSF FWHM scale", &fst);
        fits_write_key(f, TSTRING, "MOCKLSFM", (void *)lsf_mode(m), lsf_mode_comment, &fst);
        fits_write_key(f, TSTRING, "MOCKCONT", (void *)continuum_name(m), "continuum model",
                       &fst);
        fits_write_key(f, TDOUBLE, "MOCKCSC", &cscale, "continuum scale", &fst);
        fits_write_key(f, TSTRING, "COADD", (void *)(base ? base + 1 : coadd_path),
                       "the mock coadd these rows describe", &fst);
        fits_write_key_longstr(f, "LIBRARY", m->opt.library_dir, NULL, &fst);
        fits_write_key(f, TSTRING, "TMPLREV", (void *)m->setups_rev, "template revision", &fst);
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            char k0[16], k1[16];
            snprintf(k0, sizeof k0, "LSFFWL_%c", arm_upper[a]);
            snprintf(k1, sizeof k1, "LSFFWH_%c", arm_upper[a]);
            fits_write_key(f, TDOUBLE, k0, (void *)&m->lsf_fwhm[a][0],
                           "[Angstrom] LSF FWHM at the blue end", &fst);
            fits_write_key(f, TDOUBLE, k1, (void *)&m->lsf_fwhm[a][1],
                           "[Angstrom] LSF FWHM at the red end", &fst);
            snprintf(k0, sizeof k0, "LIBLSF_%c", arm_upper[a]);
            fits_write_key(f, TSTRING, k0, (void *)m->lib_lsf[a], "the library's own LSF", &fst);
        }
        FITS_TRY(tmp, "truth primary keywords");
        RVS_TRY(finish_hdu(f, tmp, "PRIMARY"));
    }
    RVS_TRY(write_table(f, tmp, "TRUTH", n, cols, (int)(sizeof cols / sizeof cols[0])));
    RVS_TRY(finish_hdu(f, tmp, "TRUTH"));
    RVS_TRY(close_commit(&f, &tmp, path));
cleanup:
    abandon(&f, &tmp);
    free(tid), free(cosf), free(cosu), free(sn), free(cont), free(outside), free(contmiss);
    for (int k = 0; k < NV; k++)
        free(v[k]);
    return status;
}

static int write_redrock(const struct rvs_mock *m, const char *path)
{
    int status = RVS_OK, fst = 0;
    fitsfile *f = NULL;
    char *tmp = NULL;
    size_t n = m->n;
    int64_t *tid = rvs_malloc(n * 8), *zwarn = rvs_calloc(n, 8);
    double *z = rvs_malloc(n * 8), *zerr = rvs_malloc(n * 8);
    char **spectype = NULL, **subtype = NULL;
    char *b1 = string_block(n, 6, &spectype), *b2 = string_block(n, 20, &subtype);
    if (!tid || !zwarn || !z || !zerr || !b1 || !b2) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t t = 0; t < n; t++) {
        const struct rvs_mock_target *g = &m->t[t];
        tid[t] = g->targetid;
        z[t] = g->vrad / RVS_SPEED_OF_LIGHT_KMS;
        zerr[t] = 5.0 / RVS_SPEED_OF_LIGHT_KMS;
        snprintf(spectype[t], 7, "STAR");
        /* redrock's stellar subtypes are spectral classes; a coarse one from teff */
        double teff = g->theta[0];
        snprintf(subtype[t], 21, "%s",
                 teff < 3900 ? "M" : teff < 5300 ? "K" : teff < 6000 ? "G" : teff < 7500 ? "F"
                                                                        : "A");
    }
    const struct col cols[] = {
        {"TARGETID", "K", NULL, TLONGLONG, tid}, {"Z", "D", NULL, TDOUBLE, z},
        {"ZERR", "D", NULL, TDOUBLE, zerr},      {"ZWARN", "K", NULL, TLONGLONG, zwarn},
        {"SPECTYPE", "6A", NULL, TSTRING, spectype},
        {"SUBTYPE", "20A", NULL, TSTRING, subtype},
    };
    RVS_TRY(open_tmp(path, &tmp, &f));
    fits_create_img(f, BYTE_IMG, 0, NULL, &fst);
    {
        int yes = 1;
        fits_write_key(f, TLOGICAL, "MOCK", &yes, "made by rvsfit-cl-mock", &fst);
    }
    FITS_TRY(tmp, "redrock primary");
    RVS_TRY(finish_hdu(f, tmp, "PRIMARY"));
    RVS_TRY(write_table(f, tmp, "REDSHIFTS", n, cols, (int)(sizeof cols / sizeof cols[0])));
    RVS_TRY(finish_hdu(f, tmp, "REDSHIFTS"));
    RVS_TRY(close_commit(&f, &tmp, path));
cleanup:
    abandon(&f, &tmp);
    free(tid), free(zwarn), free(z), free(zerr), free(b1), free(b2), free(spectype), free(subtype);
    return status;
}

int rvs_mock_write(const struct rvs_mock *mock, const char *out_path, int redrock,
                   const char *command_line)
{
    int status = RVS_OK;
    char *truth = rvs_mock_companion_path(out_path, "truth");
    char *rr = redrock ? rvs_mock_companion_path(out_path, "redrock") : NULL;
    if (!truth || (redrock && !rr)) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(rvs_file_mkdirs_for(out_path));
    RVS_TRY(write_coadd(mock, out_path, command_line));
    RVS_TRY(write_truth(mock, truth, out_path));
    if (rr)
        RVS_TRY(write_redrock(mock, rr));
cleanup:
    free(truth);
    free(rr);
    return status;
}
