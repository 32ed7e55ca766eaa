/* bench_io.c: host-side cost of the DESI input stage on real files: open (headers, FIBERMAP,
 * SCORES), target selection, then spectra read + preparation in batches, reported per 1000
 * targets, without and with --resolution-matrix.
 *
 *   benchmarks/bench_io [--batch N] [--repeat N] [--arms b,r,z] FILE...
 *
 * Every row passing the default selection is prepared; small files are walked --repeat times so
 * the times are measurable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rvsfit.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int bench_file(const char *path, unsigned arms, size_t batch, int repeat)
{
    int status = RVS_OK;
    double t_open = 0, t_select = 0, t_read[2] = {0, 0}, t_prep[2] = {0, 0};
    size_t ntargets = 0;
    struct rvs_desi_spectra sp;
    struct rvs_prepared pr;
    rvs_desi_spectra_init(&sp);
    rvs_prepared_init(&pr);
    for (int r = 0; r < repeat && status == RVS_OK; r++) {
        struct rvs_desi_file *f = NULL;
        struct rvs_selection sel;
        memset(&sel, 0, sizeof sel);
        double t0 = now();
        status = rvs_desi_open(path, arms, &f);
        double t1 = now();
        t_open += t1 - t0;
        if (status != RVS_OK)
            break;
        struct rvs_select_options so;
        rvs_select_options_init(&so);
        status = rvs_select_targets(f, &so, &sel);
        t_select += now() - t1;
        const double *w[3] = {rvs_desi_wavelength(f, 0), rvs_desi_wavelength(f, 1),
                              rvs_desi_wavelength(f, 2)};
        for (int with_res = 0; with_res < 2 && status == RVS_OK; with_res++) {
            struct rvs_prepare_options po;
            rvs_prepare_options_init(&po);
            po.use_resolution = with_res && rvs_desi_ndiag(f, 0) + rvs_desi_ndiag(f, 1) +
                                                rvs_desi_ndiag(f, 2) > 0;
            if (with_res && !po.use_resolution)
                break;
            for (size_t start = 0; start < sel.nselected && status == RVS_OK; start += batch) {
                size_t m = sel.nselected - start < batch ? sel.nselected - start : batch;
                double a = now();
                status = rvs_desi_read_spectra(f, sel.rows + start, m,
                                               with_res ? RVS_DESI_READ_RESOLUTION : 0, &sp);
                double b = now();
                if (status == RVS_OK)
                    status = rvs_prepare_batch(&sp, w, &po, &pr);
                t_read[with_res] += b - a;
                t_prep[with_res] += now() - b;
            }
        }
        ntargets += sel.nselected;
        rvs_selection_free(&sel);
        rvs_desi_close(&f);
    }
    if (status != RVS_OK) {
        fprintf(stderr, "bench_io: %s: %s\n", path, rvs_strerror(status));
        goto cleanup;
    }
    double k = ntargets ? 1000.0 / (double)ntargets : 0;
    printf("%s: %zu targets (%d passes)\n", path, ntargets, repeat);
    printf("  per 1000 targets: open %.3f s, select %.3f s, read %.3f s, prepare %.3f s, "
           "total %.3f s\n",
           t_open * k, t_select * k, t_read[0] * k, t_prep[0] * k,
           (t_open + t_select + t_read[0] + t_prep[0]) * k);
    if (t_read[1] > 0)
        printf("  with --resolution-matrix: read %.3f s, prepare %.3f s, total %.3f s\n",
               t_read[1] * k, t_prep[1] * k, (t_open + t_select + t_read[1] + t_prep[1]) * k);
cleanup:
    rvs_desi_spectra_free(&sp);
    rvs_prepared_free(&pr);
    return status;
}

int main(int argc, char **argv)
{
    size_t batch = 256;
    int repeat = 1;
    unsigned arms = RVS_DESI_ARMS_ALL;
    int failures = 0, nfiles = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = (size_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (strcmp(argv[i], "--arms") == 0 && i + 1 < argc) {
            if (rvs_desi_parse_arms(argv[++i], &arms) != RVS_OK)
                return 2;
        } else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: bench_io [--batch N] [--repeat N] [--arms b,r,z] FILE...\n");
            return 0;
        } else {
            nfiles++;
            failures += bench_file(argv[i], arms, batch ? batch : 256, repeat > 0 ? repeat : 1) != 0;
        }
    }
    if (!nfiles) {
        fprintf(stderr, "usage: bench_io [--batch N] [--repeat N] [--arms b,r,z] FILE...\n");
        return 2;
    }
    return failures ? 1 : 0;
}
