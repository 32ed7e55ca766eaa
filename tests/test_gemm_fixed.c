/* test_gemm_fixed.c: the host GEMM of CPU devices (src/device/gemm_fixed.c) keeps its promise. Every
 * element is the fused multiply-add chain in ascending k, so the test demands bit equality
 * (tolerance 0) with
 *   - a scalar reference written here (fmaf/fma, k ascending) for float and double, both
 *     transposes, alpha/beta, padded leading dimensions and sizes around the register blocks;
 *   - the same row placed anywhere in calls of 1 to 700 rows, among other rows (the property the
 *     fitter needs: a target's models do not depend on its batch-mates).
 * It also reports, without asserting (a library's choice), whether OpenBLAS gives the same row
 * the same bits at every position: on Debian 12's 0.3.21 it does not. */
#include <config.h>

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "base/internal.h"
#include "testutil.h"

static float ref_f32(const float *a, size_t lda, const float *b, size_t ldb, int tb, size_t i,
                     size_t j, size_t k)
{
    float acc = 0;
    for (size_t l = 0; l < k; l++)
        acc = fmaf(a[i * lda + l], tb ? b[j * ldb + l] : b[l * ldb + j], acc);
    return acc;
}

static double ref_f64(const double *a, size_t lda, const double *b, size_t ldb, int tb,
                      size_t i, size_t j, size_t k)
{
    double acc = 0;
    for (size_t l = 0; l < k; l++)
        acc = fma(a[i * lda + l], tb ? b[j * ldb + l] : b[l * ldb + j], acc);
    return acc;
}

/* C = alpha op(A) op(B) + beta C against the scalar chain, bit for bit */
static void check_shape(int is_double, size_t m, size_t n, size_t k, int ta, int tb,
                        double alpha, double beta)
{
    size_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
    size_t arows = ta ? k : m, brows = tb ? n : k;
    double *a = malloc(arows * lda * sizeof *a), *b = malloc(brows * ldb * sizeof *b);
    double *c = malloc(m * ldc * sizeof *c), *c0 = malloc(m * ldc * sizeof *c0);
    float *af = malloc(arows * lda * sizeof *af), *bf = malloc(brows * ldb * sizeof *bf);
    float *cf = malloc(m * ldc * sizeof *cf);
    /* op(A) as a plain m x k matrix for the reference */
    double *ap = malloc(m * (k ? k : 1) * sizeof *ap);
    float *apf = malloc(m * (k ? k : 1) * sizeof *apf);
    for (size_t i = 0; i < arows * lda; i++)
        af[i] = (float)(a[i] = (float)test_uniform(-1, 1));
    for (size_t i = 0; i < brows * ldb; i++)
        bf[i] = (float)(b[i] = (float)test_uniform(-1, 1));
    for (size_t i = 0; i < m * ldc; i++)
        cf[i] = (float)(c[i] = c0[i] = (float)test_uniform(-1, 1));
    for (size_t i = 0; i < m; i++)
        for (size_t l = 0; l < k; l++) {
            ap[i * k + l] = ta ? a[l * lda + i] : a[i * lda + l];
            apf[i * k + l] = ta ? af[l * lda + i] : af[i * lda + l];
        }
    int st = is_double ? rvs_gemm_fixed_order(1, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,
                                              ldc)
                       : rvs_gemm_fixed_order(0, ta, tb, m, n, k, alpha, af, lda, bf, ldb, beta,
                                              cf, ldc);
    CHECK(st == RVS_OK, "rvs_gemm_fixed_order: %s", rvs_strerror(st));
    size_t bad = 0;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < ldc; j++) {
            if (j >= n) { /* padding of C's rows untouched */
                bad += is_double ? c[i * ldc + j] != c0[i * ldc + j]
                                 : cf[i * ldc + j] != (float)c0[i * ldc + j];
                continue;
            }
            if (is_double) {
                double s = ref_f64(ap, k, b, ldb, tb, i, j, k);
                double want = beta == 0 ? alpha * s : fma(beta, c0[i * ldc + j], alpha * s);
                bad += memcmp(&want, &c[i * ldc + j], sizeof want) != 0;
            } else {
                float s = ref_f32(apf, k, bf, ldb, tb, i, j, k);
                float want = beta == 0 ? (float)alpha * s
                                       : fmaf((float)beta, (float)c0[i * ldc + j], (float)alpha * s);
                bad += memcmp(&want, &cf[i * ldc + j], sizeof want) != 0;
            }
        }
    }
    CHECK(bad == 0, "%s m=%zu n=%zu k=%zu ta=%d tb=%d alpha=%g beta=%g: %zu elements differ "
          "from the fma chain", is_double ? "f64" : "f32", m, n, k, ta, tb, alpha, beta, bad);
    free(a), free(b), free(c), free(c0), free(af), free(bf), free(cf), free(ap), free(apf);
}

/* One row's result at every position of calls of many sizes, among random rows. Returns the
 * number of placements whose result differs from the row computed alone. */
static size_t placements_differing(int use_openblas, size_t n, size_t k, int tb)
{
    static const size_t sizes[] = {1, 2, 5, 6, 7, 12, 13, 31, 64, 97, 300, 700};
    size_t maxm = 700;
    float *a = malloc(maxm * k * sizeof *a), *b = malloc(n * k * sizeof *b);
    float *row = malloc(k * sizeof *row), *c = malloc(maxm * n * sizeof *c);
    float *alone = malloc(n * sizeof *alone);
    for (size_t i = 0; i < n * k; i++)
        b[i] = (float)test_uniform(-1, 1);
    for (size_t l = 0; l < k; l++)
        row[l] = (float)test_uniform(-1, 1);
    size_t ldb = tb ? k : n, differing = 0;
    if (use_openblas)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, 1, (int)n,
                    (int)k, 1.0f, row, (int)k, b, (int)ldb, 0.0f, alone, (int)n);
    else
        CHECK(rvs_gemm_fixed_order(0, 0, tb, 1, n, k, 1.0, row, k, b, ldb, 0.0, alone, n) ==
                  RVS_OK,
              "GEMM of one row");
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t m = sizes[s];
        for (size_t i = 0; i < m * k; i++)
            a[i] = (float)test_uniform(-1, 1);
        /* the row at the first, last and a middle position */
        size_t pos[3] = {0, m - 1, m / 2};
        for (int p = 0; p < 3; p++) {
            memcpy(a + pos[p] * k, row, k * sizeof *row);
            if (use_openblas)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m,
                            (int)n, (int)k, 1.0f, a, (int)k, b, (int)ldb, 0.0f, c, (int)n);
            else
                CHECK(rvs_gemm_fixed_order(0, 0, tb, m, n, k, 1.0, a, k, b, ldb, 0.0, c, n) ==
                          RVS_OK,
                      "GEMM of %zu rows", m);
            differing += memcmp(c + pos[p] * n, alone, n * sizeof *alone) != 0;
        }
    }
    free(a), free(b), free(row), free(c), free(alone);
    return differing;
}

int main(void)
{
    static const size_t ms[] = {1, 5, 6, 7, 13, 50};
    static const size_t ns[] = {1, 7, 8, 9, 16, 17, 33};
    static const size_t ks[] = {1, 3, 64, 201};
    for (int dbl = 0; dbl < 2; dbl++)
        for (size_t x = 0; x < 6; x++)
            for (size_t y = 0; y < 7; y++)
                for (size_t z = 0; z < 4; z++)
                    for (int t = 0; t < 4; t++)
                        check_shape(dbl, ms[x], ns[y], ks[z], t & 1, t >> 1,
                                    (x + y) % 2 ? 0.75 : 1.0, (y + z) % 3 ? 0.0 : -0.5);
    /* large enough for the threads to split the rows */
    check_shape(0, 301, 200, 512, 0, 1, 1.0, 0.0);
    check_shape(1, 257, 20, 1500, 0, 0, 1.0, 0.0);

    /* the engine's shapes: hidden layer (512 x 512, B transposed) and the PCA layer */
    size_t d1 = placements_differing(0, 512, 512, 1), d2 = placements_differing(0, 621, 200, 1);
    size_t d3 = placements_differing(0, 40, 256, 0);
    CHECK(d1 == 0 && d2 == 0 && d3 == 0,
          "fixed-order GEMM: a row's result changed with its place in the matrix (%zu, %zu, %zu "
          "of 36 placements)", d1, d2, d3);
    size_t o1 = placements_differing(1, 512, 512, 1), o2 = placements_differing(1, 621, 200, 1);
    printf("for comparison, OpenBLAS (%s): %zu and %zu of 36 placements give a row other bits\n",
           openblas_get_corename(), o1, o2);
    return test_finish("test_gemm_fixed");
}
