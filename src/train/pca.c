/* train/pca.c: principal components of the training log-flux for the PCA initialisation of
 * the emulator's last layer (rvspecfit nn/train_interpolator.py, main with --pca_init, which
 * uses sklearn's PCA). No LAPACK: randomized subspace iteration (Halko, Martinsson & Tropp
 * 2011, algorithm 4.4) on the centred data X (count x npix), with the products X Q and X^T T
 * done by OpenBLAS dgemm over chunks of rows converted to double, so memory stays at a few
 * chunks; the small projected matrix (X Q)^T (X Q) is diagonalised by cyclic Jacobi rotations.
 * When the centred data have rank <= k the subspace holds them exactly after the first
 * product, so the components reproduce the data to rounding. */
#include <config.h>

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/train.h"

enum { CHUNK_ROWS = 256, POWER_ITERATIONS = 6 };

static uint64_t pca_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* a roughly normal number (sum of 4 uniforms, centred): only the direction matters */
static double pca_normal(uint64_t *s)
{
    double t = 0;
    for (int i = 0; i < 4; i++)
        t += (double)(pca_rng(s) >> 11) * 0x1.0p-53;
    return t - 2.0;
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Orthonormalises the kw rows (length n) of q by modified Gram-Schmidt, twice ("twice is
 * enough", Giraud et al. 2005). A row that vanishes against the previous ones (the data have
 * lower rank) is replaced by a random direction. */
static void orthonormalise(double *q, size_t kw, size_t n, uint64_t *seed)
{
    for (size_t i = 0; i < kw; i++) {
        double *qi = q + i * n;
        for (int attempt = 0; attempt < 4; attempt++) {
            double before = sqrt(dot(qi, qi, n));
            for (int pass = 0; pass < 2; pass++)
                for (size_t j = 0; j < i; j++) {
                    const double *qj = q + j * n;
                    double c = dot(qi, qj, n);
                    for (size_t t = 0; t < n; t++)
                        qi[t] -= c * qj[t];
                }
            double after = sqrt(dot(qi, qi, n));
            if (after > 1e-10 * before && after > 0) {
                for (size_t t = 0; t < n; t++)
                    qi[t] /= after;
                break;
            }
            for (size_t t = 0; t < n; t++)
                qi[t] = pca_normal(seed);
        }
    }
}

/* Eigen-decomposition of the symmetric n x n matrix a (destroyed) by cyclic Jacobi rotations:
 * eigenvalues in w, eigenvectors as the columns of v (row-major n x n). */
static void jacobi_eigen(double *a, size_t n, double *w, double *v)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            v[i * n + j] = i == j ? 1.0 : 0.0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (size_t i = 0; i < n; i++) {
            diag += a[i * n + i] * a[i * n + i];
            for (size_t j = i + 1; j < n; j++)
                off += a[i * n + j] * a[i * n + j];
        }
        if (off <= 1e-30 * diag || off == 0)
            break;
        for (size_t p = 0; p < n; p++)
            for (size_t q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (fabs(apq) < 1e-300)
                    continue;
                /* the rotation angle that zeroes a[p][q]: tan(2 phi) = 2 apq / (aqq - app) */
                double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (size_t k = 0; k < n; k++) {
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (size_t k = 0; k < n; k++) {
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (size_t k = 0; k < n; k++) {
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (size_t i = 0; i < n; i++)
        w[i] = a[i * n + i];
}

/* Centred rows [r0, r0 + cs) of the selection, in double. */
static void load_chunk(const float *data, size_t ld, const size_t *rows, size_t r0, size_t cs,
                       size_t npix, const double *mean, double *out)
{
    for (size_t i = 0; i < cs; i++) {
        const float *src = data + rows[r0 + i] * ld;
        for (size_t j = 0; j < npix; j++)
            out[i * npix + j] = (double)src[j] - mean[j];
    }
}

int rvs_train_pca(const float *data, size_t ld, const size_t *rows, size_t count, size_t npix,
                  size_t k, uint64_t seed, double *components, double *mean_out)
{
    int status = RVS_OK;
    double *mean = NULL, *q = NULL, *y = NULL, *chunk = NULL, *t = NULL, *c = NULL, *w = NULL,
           *v = NULL;
    size_t *order = NULL;
    if (!data || !rows || !components || k == 0 || k > count || k > npix || ld < npix) {
        rvs_log(RVS_LOG_ERROR, "train", "PCA of %zu rows x %zu px into %zu components: need "
                "1 <= k <= min(rows, pixels)", count, npix, k);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    /* a few extra directions make the leading k converge faster (Halko et al. sec. 4.2) */
    size_t kw = k + (k / 5 > 10 ? k / 5 : 10);
    if (kw > npix)
        kw = npix;
    if (kw > count)
        kw = count;
    if ((size_t)(blasint)npix != npix || (size_t)(blasint)kw != kw) {
        rvs_log(RVS_LOG_ERROR, "train", "PCA sizes exceed OpenBLAS's integer range");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    mean = rvs_calloc(npix, sizeof *mean);
    q = rvs_malloc(kw * npix * sizeof *q);
    y = rvs_malloc(kw * npix * sizeof *y);
    chunk = rvs_malloc((size_t)CHUNK_ROWS * npix * sizeof *chunk);
    t = rvs_malloc((size_t)CHUNK_ROWS * kw * sizeof *t);
    c = rvs_malloc(kw * kw * sizeof *c);
    w = rvs_malloc(kw * sizeof *w);
    v = rvs_malloc(kw * kw * sizeof *v);
    order = rvs_malloc(kw * sizeof *order);
    if (!mean || !q || !y || !chunk || !t || !c || !w || !v || !order) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < npix; j++)
            mean[j] += data[rows[i] * ld + j];
    for (size_t j = 0; j < npix; j++)
        mean[j] /= (double)count;

    /* q: kw orthonormal rows of length npix (the basis vectors, transposed) */
    uint64_t s = seed;
    for (size_t i = 0; i < kw * npix; i++)
        q[i] = pca_normal(&s);
    orthonormalise(q, kw, npix, &s);
    for (int it = 0; it <= POWER_ITERATIONS; it++) {
        /* y = (X^T X q^T)^T = sum over chunks of (Xc q^T)^T Xc */
        memset(y, 0, kw * npix * sizeof *y);
        memset(c, 0, kw * kw * sizeof *c);
        for (size_t r0 = 0; r0 < count; r0 += CHUNK_ROWS) {
            size_t cs = count - r0 < CHUNK_ROWS ? count - r0 : CHUNK_ROWS;
            load_chunk(data, ld, rows, r0, cs, npix, mean, chunk);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)cs, (blasint)kw,
                        (blasint)npix, 1.0, chunk, (blasint)npix, q, (blasint)npix, 0.0, t,
                        (blasint)kw);
            if (it < POWER_ITERATIONS)
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)kw, (blasint)npix,
                            (blasint)cs, 1.0, t, (blasint)kw, chunk, (blasint)npix, 1.0, y,
                            (blasint)npix);
            else /* last pass: the projected Gram matrix (X q^T)^T (X q^T) */
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)kw, (blasint)kw,
                            (blasint)cs, 1.0, t, (blasint)kw, t, (blasint)kw, 1.0, c,
                            (blasint)kw);
        }
        if (it < POWER_ITERATIONS) {
            double *tmp = q;
            q = y;
            y = tmp;
            orthonormalise(q, kw, npix, &s);
        }
    }
    jacobi_eigen(c, kw, w, v);
    /* eigenvalues in decreasing order (stable: ties keep their index order) */
    for (size_t i = 0; i < kw; i++)
        order[i] = i;
    for (size_t i = 1; i < kw; i++) {
        size_t o = order[i], j = i;
        while (j > 0 && w[order[j - 1]] < w[o]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = o;
    }
    /* component i = sum_m v[m][order[i]] q_m, sign fixed by its largest |entry| */
    for (size_t i = 0; i < k; i++) {
        double *out = components + i * npix;
        memset(out, 0, npix * sizeof *out);
        for (size_t m = 0; m < kw; m++) {
            double f = v[m * kw + order[i]];
            const double *qm = q + m * npix;
            for (size_t j = 0; j < npix; j++)
                out[j] += f * qm[j];
        }
        size_t jmax = 0;
        double norm = 0;
        for (size_t j = 0; j < npix; j++) {
            norm += out[j] * out[j];
            if (fabs(out[j]) > fabs(out[jmax]))
                jmax = j;
        }
        /* rvspecfit normalises the components to unit length */
        double f = (out[jmax] < 0 ? -1.0 : 1.0) / sqrt(norm);
        for (size_t j = 0; j < npix; j++)
            out[j] *= f;
    }
    if (mean_out)
        memcpy(mean_out, mean, npix * sizeof *mean);
cleanup:
    free(mean);
    free(q);
    free(y);
    free(chunk);
    free(t);
    free(c);
    free(w);
    free(v);
    free(order);
    return status;
}
