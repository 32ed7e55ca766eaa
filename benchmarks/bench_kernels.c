/* bench_kernels.c: micro-benchmarks of every kernel family, from the same descriptions the
 * tests use (tests/routine.h). For each routine and each of its DESI-size cases: one warm-up
 * run (kernel builds, CLBlast tuning), then repeated runs for at least --min-time seconds;
 * prints time per run, evaluations/s, GFLOP/s and GB/s. Correctness is checked once per case
 * (--no-check skips it). Speed is measured here, never asserted by tests. */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "routine.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: bench_kernels [--device SPEC] [--fp32] [--routine NAME[,NAME...]]\n"
                 "                     [--min-time SECONDS] [--no-check]\n");
}

static int selected(const char *list, const char *name)
{
    if (!list)
        return 1;
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    rvs_openblas_reexec_if_generic(argv); /* vector kernels on new CPUs (src/device/gemm.c) */
    static const struct option options[] = {{"device", required_argument, NULL, 'd'},
                                            {"fp32", no_argument, NULL, 'f'},
                                            {"routine", required_argument, NULL, 'r'},
                                            {"min-time", required_argument, NULL, 't'},
                                            {"no-check", no_argument, NULL, 'n'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    struct rvs_context_options copt;
    rvs_context_options_init(&copt);
    const char *routines = NULL;
    double min_time = 1.0;
    int check = 1, opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'd': copt.device_spec = optarg; break;
        case 'f': copt.force_fp32 = 1; break;
        case 'r': routines = optarg; break;
        case 't': min_time = atof(optarg); break;
        case 'n': check = 0; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    struct rvs_context *ctx = NULL;
    int status = rvs_context_create(&copt, &ctx);
    if (status != RVS_OK) {
        fprintf(stderr, "bench_kernels: no device: %s\n", rvs_strerror(status));
        return 3;
    }
    printf("# device: %s (%s), driver %s; %s; GEMM through %s\n", ctx->caps.device_name,
           ctx->caps.platform_name, ctx->caps.driver_version,
           ctx->use_fp64 ? "fp64" : "compensated fp32", rvs_gemm_backend_name(ctx->gemm_backend));
    printf("# %-18s %-34s %10s %12s %9s %9s %11s\n", "routine", "case", "ms/run", "evals/s",
           "GFLOP/s", "GB/s", "error");
    int failures = 0;
    for (size_t r = 0; rvs_routines[r]; r++) {
        const struct rvs_routine *rt = rvs_routines[r];
        if (!selected(routines, rt->name))
            continue;
        for (const struct rvs_routine_args *c = rt->bench_cases; c->batch; c++) {
            struct rvs_routine_args args = *c;
            args.real_size = rvs_context_real_size(ctx);
            char label[64];
            snprintf(label, sizeof label, "b=%zu n=%zu m=%zu k=%zu p=%g", args.batch, args.n,
                     args.m, args.k, args.param);
            void *state = NULL;
            status = rt->setup(ctx, &args, &state);
            if (status == RVS_OK)
                status = rt->run(ctx, state); /* warm-up */
            double err = -1;
            if (status == RVS_OK && check) {
                status = rt->reference(ctx, state);
                if (status == RVS_OK)
                    err = rt->max_error(state);
            }
            int runs = 0;
            double t0 = now(), t = 0;
            while (status == RVS_OK && (t < min_time || runs < 3)) {
                status = rt->run(ctx, state);
                runs++;
                t = now() - t0;
            }
            if (state)
                rt->destroy(state);
            if (status != RVS_OK) {
                printf("  %-18s %-34s FAILED: %s\n", rt->name, label, rvs_strerror(status));
                failures++;
                continue;
            }
            double per = t / runs;
            printf("  %-18s %-34s %10.3f %12.4g %9.2f %9.2f %11.3e\n", rt->name, label,
                   1e3 * per, rt->evaluations(&args) / per, rt->flops(&args) / per * 1e-9,
                   rt->bytes(&args) / per * 1e-9, err);
            fflush(stdout);
        }
    }
    rvs_context_destroy(&ctx);
    return failures ? 1 : 0;
}
