/* synth/linelist.c: the line list of the spectrum generator. Reads the MOOG-format files of a
 * linemake directory (Placco et al. 2021, RNAAS 5, 92): moogatom*, moogcn*, mooghyd*, moogfeh*,
 * each "wavelength(air, A) species E_low(eV) log gf [damping] [D0]", converts air to vacuum
 * wavelengths (Morton 2000), weights molecular isotopologues by their terrestrial isotopic
 * fractions, and precomputes the van der Waals constant (Unsoeld). Without a directory a
 * built-in list of the strongest optical lines (values taken from the same linemake files) is
 * used, so the generator always runs. Hydrogen lines are not read: synth.c computes them. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "synth/synth_internal.h"

/* The strongest lines of FGKM spectra in 3500-10000 A (air wavelength, species code, E_low,
 * log gf), copied as numbers from linemake's moogatom files. */
static const double builtin_lines[][4] = {
    {3933.663, 20.1, 0.000, 0.134},  {3968.469, 20.1, 0.000, -0.166},
    {4030.753, 25.0, 0.000, -0.470}, {4033.062, 25.0, 0.000, -0.618},
    {4034.483, 25.0, 0.000, -0.811}, {4045.812, 26.0, 1.484, 0.280},
    {4077.709, 38.1, 0.000, 0.167},  {4215.519, 38.1, 0.000, -0.145},
    {4226.728, 20.0, 0.000, 0.243},  {4271.760, 26.0, 1.484, -0.164},
    {4325.762, 26.0, 1.607, -0.010}, {4351.906, 12.0, 4.343, -0.833},
    {4383.545, 26.0, 1.484, 0.200},  {4404.750, 26.0, 1.556, -0.142},
    {4415.122, 26.0, 1.607, -0.615}, {4554.029, 56.1, 0.000, 0.170},
    {4702.991, 12.0, 4.343, -0.666}, {4891.492, 26.0, 2.849, -0.140},
    {4920.502, 26.0, 2.830, 0.060},  {4957.596, 26.0, 2.806, 0.127},
    {5167.321, 12.0, 2.707, -1.030}, {5172.684, 12.0, 2.710, -0.402},
    {5183.604, 12.0, 2.715, -0.180}, {5206.037, 24.0, 0.941, 0.019},
    {5208.425, 24.0, 0.941, 0.158},  {5269.537, 26.0, 0.858, -1.321},
    {5328.039, 26.0, 0.914, -1.466}, {5371.489, 26.0, 0.957, -1.645},
    {5397.128, 26.0, 0.914, -1.993}, {5405.775, 26.0, 0.989, -1.844},
    {5429.696, 26.0, 0.957, -1.879}, {5446.916, 26.0, 0.989, -1.930},
    {5528.405, 12.0, 4.343, -0.620}, {5586.756, 26.0, 3.366, -0.210},
    {5615.644, 26.0, 3.329, -0.140}, {5889.951, 11.0, 0.000, 0.117},
    {5895.924, 11.0, 0.000, -0.184}, {6102.723, 20.0, 1.878, -0.890},
    {6122.217, 20.0, 1.884, -0.409}, {6141.713, 56.1, 0.703, -0.076},
    {6162.173, 20.0, 1.897, 0.100},  {6230.722, 26.0, 2.557, -1.281},
    {6252.555, 26.0, 2.402, -1.687}, {6439.075, 20.0, 2.524, 0.470},
    {6462.567, 20.0, 2.521, 0.310},  {6494.980, 26.0, 2.402, -1.273},
    {6496.897, 56.1, 0.604, -0.377}, {7148.150, 20.0, 2.707, 0.208},
    {7664.911, 19.0, 0.000, 0.130},  {7698.974, 19.0, 0.000, -0.170},
    {7771.944, 8.0, 9.139, 0.324},   {7774.166, 8.0, 9.139, 0.174},
    {7775.388, 8.0, 9.139, -0.046},  {8183.255, 11.0, 2.101, 0.230},
    {8194.824, 11.0, 2.103, 0.490},  {8327.056, 26.0, 2.196, -1.525},
    {8387.772, 26.0, 2.174, -1.493}, {8498.023, 20.1, 1.691, -1.312},
    {8542.091, 20.1, 1.699, -0.362}, {8662.141, 20.1, 1.691, -0.623},
    {8688.624, 26.0, 2.174, -1.212}, {8806.756, 12.0, 4.343, -0.137},
    {8824.220, 26.0, 2.196, -1.540}};
enum { N_BUILTIN = sizeof builtin_lines / sizeof builtin_lines[0] };

/* Terrestrial isotopic abundances (IUPAC; Berglund & Wieser 2011) of the isotopes that occur in
 * linemake's molecular lists: {Z, A, fraction}. */
static const double isotopes[][3] = {
    {1, 1, 0.999885}, {1, 2, 0.000115}, {6, 12, 0.9893},  {6, 13, 0.0107},  {7, 14, 0.99636},
    {7, 15, 0.00364}, {8, 16, 0.99757}, {8, 17, 0.00038}, {8, 18, 0.00205}, {12, 24, 0.7899},
    {12, 25, 0.1000}, {12, 26, 0.1101}, {14, 28, 0.92223}, {14, 29, 0.04685}, {14, 30, 0.03092},
    {22, 46, 0.0825}, {22, 47, 0.0744}, {22, 48, 0.7372}, {22, 49, 0.0541}, {22, 50, 0.0518},
    {26, 54, 0.05845}, {26, 56, 0.91754}, {26, 57, 0.02119}, {26, 58, 0.00282}};

static double isotope_fraction(int z, int a)
{
    for (size_t i = 0; i < sizeof isotopes / sizeof isotopes[0]; i++)
        if ((int)isotopes[i][0] == z && (int)isotopes[i][1] == a)
            return isotopes[i][2];
    return -1.0;
}

static int molecule_of(int za, int zb)
{
    int lo = za < zb ? za : zb, hi = za < zb ? zb : za;
    for (int m = 0; m < RVS_SYNTH_NMOL; m++) {
        int z1, z2;
        rvs_synth_molecule_atoms(m, &z1, &z2);
        int l2 = z1 < z2 ? z1 : z2, h2 = z1 < z2 ? z2 : z1;
        if (l2 == lo && h2 == hi)
            return m;
    }
    return -1;
}

int rvs_synth_parse_moog_line(const char *text, double *lambda_air, double *code, double *ep,
                              double *loggf, double *damping)
{
    const char *p = text;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '\n' || *p == '\r' || *p == '#')
        return 0;
    double v[4];
    char *end;
    for (int i = 0; i < 4; i++) {
        errno = 0;
        v[i] = strtod(p, &end);
        if (end == p || errno)
            return -1;
        p = end;
    }
    *lambda_air = v[0];
    *code = v[1];
    *ep = v[2];
    *loggf = v[3];
    /* the damping field is column 41-50 of MOOG's fixed format; column 51-60 is D0 */
    *damping = 0.0;
    if (strlen(text) > 41) {
        char field[11];
        memcpy(field, text + 40, 10);
        field[10] = '\0';
        char *fe;
        double d = strtod(field, &fe);
        if (fe != field)
            *damping = d;
    }
    if (!(v[0] > 0) || !isfinite(v[3]))
        return -1;
    return 1;
}

/* Converts one parsed entry into a line; returns 0 when the species is not one we model. */
static int make_line(const char *code_text, double lambda_air, double code, double ep,
                     double loggf, struct rvs_synth_line *line)
{
    memset(line, 0, sizeof *line);
    line->lambda = rvs_synth_air_to_vacuum(lambda_air);
    line->ep = (float)ep;
    line->gamma_rad = (float)(2.223e15 / (line->lambda * line->lambda));
    if (code < 100.0) {
        int z = (int)floor(code + 1e-6);
        int ion = (int)lround((code - z) * 10.0);
        if (z < 2 || z > RVS_SYNTH_MAX_Z || ion < 0 || ion > 1)
            return 0; /* hydrogen is computed separately; higher stages are negligible here */
        double chi = rvs_synth_ionization_energy[z][ion];
        line->z = (int16_t)z;
        line->ion = (int8_t)ion;
        line->loggf = (float)loggf;
        line->mass = (float)rvs_synth_atomic_mass(z);
        /* Unsoeld's C6 (Gray 2005, eq. 11.31) with the hydrogenic scaling (ion+1)^2 for ions;
         * upper levels above the limit are held 0.5 eV below it */
        double eup = ep + RVS_HC_EV_A / lambda_air;
        double dl = chi - ep, du = chi - eup;
        if (dl < 1.0)
            dl = 1.0;
        if (du < 0.5)
            du = 0.5;
        double c6 = 0.3e-30 * (ion + 1) * (ion + 1) * (1.0 / (du * du) - 1.0 / (dl * dl));
        line->log_c6 = c6 > 0 ? (float)log10(c6) : -33.0f;
        return 1;
    }
    int ncode = (int)floor(code + 1e-6);
    int za = ncode / 100, zb = ncode % 100;
    int mol = molecule_of(za, zb);
    if (mol < 0)
        return 0;
    double frac = 1.0;
    const char *dot = code_text ? strchr(code_text, '.') : NULL;
    if (dot) {
        /* "607.01214": stage digit, then the mass numbers of the atoms in the code's order */
        const char *d = dot + 1;
        size_t nd = strspn(d, "0123456789");
        if (nd >= 5) {
            int a1 = (d[1] - '0') * 10 + (d[2] - '0');
            int a2 = (d[3] - '0') * 10 + (d[4] - '0');
            if (a1 > 0 && a2 > 0) {
                double f1 = isotope_fraction(za, a1), f2 = isotope_fraction(zb, a2);
                if (f1 < 0 || f2 < 0)
                    return 0;
                frac = f1 * f2;
            }
        }
    }
    line->z = (int16_t)(-1 - mol);
    line->ion = 0;
    line->loggf = (float)(loggf + log10(frac));
    line->mass = (float)(rvs_synth_atomic_mass(za) + rvs_synth_atomic_mass(zb));
    line->log_c6 = 0.0f;
    return 1;
}

static int cmp_line(const void *a, const void *b)
{
    double la = ((const struct rvs_synth_line *)a)->lambda;
    double lb = ((const struct rvs_synth_line *)b)->lambda;
    return la < lb ? -1 : la > lb ? 1 : 0;
}

static int push_line(struct rvs_synth_linelist *list, size_t *cap, const struct rvs_synth_line *l)
{
    if (list->count == *cap) {
        size_t ncap = *cap ? 2 * *cap : 65536;
        struct rvs_synth_line *n = realloc(list->lines, ncap * sizeof *n);
        if (!n) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "out of memory reading the line list");
            return RVS_ERR_NOMEM;
        }
        list->lines = n;
        *cap = ncap;
    }
    list->lines[list->count++] = *l;
    return RVS_OK;
}

struct moog_file {
    char name[64];
    int family; /* index into families[] */
    long start; /* the number in the name: the file's nominal first wavelength */
};

static const char *const families[] = {"moogatom", "moogcn", "mooghyd", "moogfeh"};
enum { N_FAMILIES = sizeof families / sizeof families[0] };

static int cmp_file(const void *a, const void *b)
{
    const struct moog_file *fa = a, *fb = b;
    if (fa->family != fb->family)
        return fa->family - fb->family;
    return fa->start < fb->start ? -1 : fa->start > fb->start;
}

/* Reads one file, keeping lines with air wavelength in [lo, hi) and vacuum inside [lmin, lmax]. */
static int read_moog_file(const char *path, double lo, double hi, double lmin, double lmax,
                          struct rvs_synth_linelist *list, size_t *cap)
{
    int status = RVS_OK;
    char buf[512];
    long lineno = 0, bad = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "cannot open line list %s: %s", path, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    while (fgets(buf, sizeof buf, f)) {
        lineno++;
        double lair, code, ep, loggf, damp;
        int r = rvs_synth_parse_moog_line(buf, &lair, &code, &ep, &loggf, &damp);
        if (r == 0)
            continue;
        if (r < 0) {
            if (lineno > 1 && bad++ < 3)
                rvs_log(RVS_LOG_WARNING, "mkgrid", "%s:%ld: not a MOOG line, skipped", path,
                        lineno);
            continue;
        }
        if (lair < lo || lair >= hi)
            continue;
        double lvac = rvs_synth_air_to_vacuum(lair);
        if (lvac < lmin || lvac > lmax)
            continue;
        /* the species code's own text, for the isotope digits */
        char codetext[32] = "";
        {
            const char *p = buf;
            while (*p == ' ')
                p++;
            p += strcspn(p, " \t");
            while (*p == ' ' || *p == '\t')
                p++;
            size_t n = strcspn(p, " \t\r\n");
            if (n >= sizeof codetext)
                n = sizeof codetext - 1;
            memcpy(codetext, p, n);
            codetext[n] = '\0';
        }
        struct rvs_synth_line line;
        if (!make_line(codetext, lair, code, ep, loggf, &line))
            continue;
        RVS_TRY(push_line(list, cap, &line));
    }
    if (ferror(f)) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "error reading line list %s", path);
        status = RVS_ERR_IO;
    }
cleanup:
    if (f)
        fclose(f);
    return status;
}

int rvs_synth_linelist_load(const char *dir, double lmin, double lmax,
                            struct rvs_synth_linelist *list)
{
    int status = RVS_OK;
    size_t cap = 0, nfiles = 0;
    struct moog_file *files = NULL;
    DIR *d = NULL;
    memset(list, 0, sizeof *list);
    if (!dir || !*dir) {
        for (int i = 0; i < N_BUILTIN; i++) {
            struct rvs_synth_line line;
            char code[16];
            snprintf(code, sizeof code, "%.1f", builtin_lines[i][1]);
            if (!make_line(code, builtin_lines[i][0], builtin_lines[i][1], builtin_lines[i][2],
                           builtin_lines[i][3], &line))
                continue;
            if (line.lambda < lmin || line.lambda > lmax)
                continue;
            RVS_TRY(push_line(list, &cap, &line));
        }
        list->from_files = 0;
        goto sort;
    }
    d = opendir(dir);
    if (!d) {
        rvs_log(RVS_LOG_ERROR, "mkgrid",
                "cannot open line-list directory %s: %s (give a linemake directory with "
                "moogatom* files, or none for the built-in list)",
                dir, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    size_t fcap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        for (int fam = 0; fam < N_FAMILIES; fam++) {
            size_t pl = strlen(families[fam]);
            if (strncmp(e->d_name, families[fam], pl) != 0)
                continue;
            const char *num = e->d_name + pl;
            if (strlen(num) != 5 || strspn(num, "0123456789") != 5 ||
                strlen(e->d_name) >= sizeof files[0].name)
                continue;
            if (nfiles == fcap) {
                fcap = fcap ? 2 * fcap : 32;
                struct moog_file *nf = realloc(files, fcap * sizeof *nf);
                if (!nf) {
                    status = RVS_ERR_NOMEM;
                    goto cleanup;
                }
                files = nf;
            }
            memcpy(files[nfiles].name, e->d_name, strlen(e->d_name) + 1);
            files[nfiles].family = fam;
            files[nfiles].start = strtol(num, NULL, 10);
            nfiles++;
        }
    }
    if (nfiles == 0) {
        rvs_log(RVS_LOG_ERROR, "mkgrid",
                "%s holds no linemake MOOG files (moogatom*, moogcn*, mooghyd*, moogfeh*)", dir);
        status = RVS_ERR_IO;
        goto cleanup;
    }
    qsort(files, nfiles, sizeof *files, cmp_file);
    for (size_t i = 0; i < nfiles; i++) {
        /* neighbouring files overlap by ~20 A: each keeps [its number, the next one's) */
        double lo = -1e30, hi = 1e30;
        if (i > 0 && files[i - 1].family == files[i].family)
            lo = (double)files[i].start;
        if (i + 1 < nfiles && files[i + 1].family == files[i].family)
            hi = (double)files[i + 1].start;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, files[i].name);
        RVS_TRY(read_moog_file(path, lo, hi, lmin, lmax, list, &cap));
    }
    list->from_files = 1;
sort:
    qsort(list->lines, list->count, sizeof *list->lines, cmp_line);
cleanup:
    if (d)
        closedir(d);
    free(files);
    if (status != RVS_OK)
        rvs_synth_linelist_free(list);
    return status;
}

void rvs_synth_linelist_free(struct rvs_synth_linelist *list)
{
    if (!list)
        return;
    free(list->lines);
    list->lines = NULL;
    list->count = 0;
}
