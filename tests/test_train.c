/* test_train.c: NN emulator training (src/train/train.c, src/train/pca.c, cl/train.cl).
 *
 *  1. A plain-C double reference of the training forward/backward pass (written here from the
 *     maths, not from src/train/train.c) against central finite differences, for tiny networks with
 *     and without BatchNorm, with the L1 loss and the others (--loss l2, l1l2): max |analytic -
 *     FD| / max |gradient| <= 1e-6 per tensor.
 *  2. The device gradients (fp32 network, rvs_acc column sums) against that reference on the
 *     same float weights: max |device - reference| / max |reference| <= 1e-4 per tensor, the
 *     loss to 1e-5 relative, BatchNorm running statistics to 1e-5; in the default context and
 *     with forced fp32 accumulation.
 *  3. Adam: two steps against the hand-computed torch update (bias corrections included).
 *  4. PCA of a rank-5 synthetic log-flux set reconstructs it to float precision (1e-5 of its
 *     range); the trainer's PCA initialisation reproduces it (loss0 < 1e-5).
 *  5. rvs_train_quantile (quickselect, numpy's linear interpolation) against a sort, on random
 *     values with ties, for several sizes and quantiles: equal.
 *  6. A toy training run: 200 spectra from a smooth analytic function of (teff, logg, feh,
 *     alpha), two arms of 200 px, each trained from its own grid; the validation loss must fall
 *     below a stated bound, and a second run with the same seed gives identical weights. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rvsfit.h"
#include "rvsfit/train.h"
#include "rvsfit/train_io.h"
#include "testutil.h"

#define TOL_FD 1e-6       /* reference vs finite differences, relative to max |grad| */
#define TOL_DEVICE 1e-4   /* fp32 device gradients vs double reference, same normalisation */
#define TOL_LOSS 1e-5     /* batch loss, relative */
#define TOL_PCA 1e-5      /* PCA reconstruction, relative to the data's range */
#define TOY_VAL_BOUND 0.05/* toy run: validation loss (mean |dlnF| / spread0) */

/* ------------------------------------------------------------------ reference */

struct ref_net {
    const struct rvs_train_layout *lay;
    size_t indim, nlayers, width, npc, npix;
    int bn;
    double eps;
    int loss;     /* enum rvs_train_loss */
    double delta; /* of RVS_TRAIN_LOSS_L1L2 */
};

static int test_loss = RVS_TRAIN_LOSS_L1; /* the loss of the trainers make_trainer makes */

static double sigmoid(double z) { return 1 / (1 + exp(-z)); }

/* Loss and (optionally) gradients of the flat parameters p (double, layout order) on a batch
 * x (B x indim), targets t (B x npix); d0, sd0, spread0 the normalisation. bn_mean/bn_var get
 * the batch mean and unbiased variance per BatchNorm layer (width each), when not NULL. */
static double ref_loss_grad(const struct ref_net *n, const double *p, const double *x,
                            const double *t, size_t B, const double *d0, const double *sd0,
                            double spread0, double *g, double *bn_mean, double *bn_var)
{
    const struct rvs_train_layout *L = n->lay;
    size_t nlin = L->nlin, npix = n->npix, W = n->width;
    double *z[RVS_NN_MAX_LINEAR], *a[RVS_NN_MAX_LINEAR], *h[RVS_NN_MAX_LINEAR];
    double *mean[RVS_NN_MAX_LINEAR] = {0}, *inv[RVS_NN_MAX_LINEAR] = {0};
    for (size_t l = 0; l < nlin; l++) {
        size_t out = L->lin_out[l];
        z[l] = calloc(B * out, sizeof(double));
        a[l] = calloc(B * out, sizeof(double));
        h[l] = calloc(B * out, sizeof(double));
        mean[l] = calloc(out, sizeof(double));
        inv[l] = calloc(out, sizeof(double));
    }
    double *y = calloc(B * npix, sizeof(double));
    for (size_t l = 0; l < nlin; l++) {
        size_t in = L->lin_in[l], out = L->lin_out[l];
        const double *hin = l == 0 ? x : h[l - 1];
        for (size_t e = 0; e < B; e++)
            for (size_t o = 0; o < out; o++) {
                double s = p[L->lin_b[l] + o];
                for (size_t i = 0; i < in; i++)
                    s += hin[e * in + i] * p[L->lin_w[l] + o * in + i];
                z[l][e * out + o] = s;
                a[l][e * out + o] = s * sigmoid(s);
            }
        int has_bn = n->bn && l >= 1 && l <= n->nlayers;
        for (size_t o = 0; o < out; o++) {
            if (!has_bn) {
                for (size_t e = 0; e < B; e++)
                    h[l][e * out + o] = a[l][e * out + o];
                continue;
            }
            double m = 0, v = 0;
            for (size_t e = 0; e < B; e++)
                m += a[l][e * out + o];
            m /= (double)B;
            for (size_t e = 0; e < B; e++)
                v += (a[l][e * out + o] - m) * (a[l][e * out + o] - m);
            v /= (double)B;
            mean[l][o] = m;
            inv[l][o] = 1 / sqrt(v + n->eps);
            if (bn_mean) {
                bn_mean[l * W + o] = m;
                bn_var[l * W + o] = v * (double)B / (double)(B - 1);
            }
            for (size_t e = 0; e < B; e++)
                h[l][e * out + o] = p[L->bn_w[l] + o] * (a[l][e * out + o] - m) * inv[l][o] +
                                    p[L->bn_b[l] + o];
        }
    }
    const double *hl = h[nlin - 1];
    int l2 = n->loss == RVS_TRAIN_LOSS_L2, l1l2 = n->loss == RVS_TRAIN_LOSS_L1L2;
    double loss = 0, scale = 1 / ((l2 ? spread0 * spread0 : spread0) * (double)B * (double)npix);
    for (size_t e = 0; e < B; e++)
        for (size_t j = 0; j < npix; j++) {
            double s = p[L->pc_b + j];
            for (size_t c = 0; c < n->npc; c++)
                s += hl[e * n->npc + c] * p[L->pc_w + j * n->npc + c];
            double r = s * sd0[j] + d0[j] - t[e * npix + j];
            double sg = r > 0 ? 1 : r < 0 ? -1 : 0;
            loss += l2 ? r * r : l1l2 ? fabs(r) + r * r / (2 * n->delta) : fabs(r);
            y[e * npix + j] = (l2 ? 2 * r : l1l2 ? sg + r / n->delta : sg) * sd0[j] * scale;
        }
    loss *= scale;
    if (g) {
        memset(g, 0, L->total * sizeof *g);
        size_t maxw = W > n->npc ? W : n->npc;
        double *dh = calloc(B * maxw, sizeof(double)), *dn = calloc(B * maxw, sizeof(double));
        for (size_t e = 0; e < B; e++)
            for (size_t j = 0; j < npix; j++) {
                double dy = y[e * npix + j];
                g[L->pc_b + j] += dy;
                for (size_t c = 0; c < n->npc; c++) {
                    g[L->pc_w + j * n->npc + c] += dy * hl[e * n->npc + c];
                    dh[e * n->npc + c] += dy * p[L->pc_w + j * n->npc + c];
                }
            }
        for (size_t l = nlin; l-- > 0;) {
            size_t in = L->lin_in[l], out = L->lin_out[l];
            int has_bn = n->bn && l >= 1 && l <= n->nlayers;
            if (has_bn)
                for (size_t o = 0; o < out; o++) {
                    double sg = 0, sgx = 0;
                    for (size_t e = 0; e < B; e++) {
                        double xh = (a[l][e * out + o] - mean[l][o]) * inv[l][o];
                        sg += dh[e * out + o];
                        sgx += dh[e * out + o] * xh;
                    }
                    g[L->bn_w[l] + o] = sgx;
                    g[L->bn_b[l] + o] = sg;
                    double gam = p[L->bn_w[l] + o];
                    for (size_t e = 0; e < B; e++) {
                        double xh = (a[l][e * out + o] - mean[l][o]) * inv[l][o];
                        dh[e * out + o] = gam * inv[l][o] / (double)B *
                                          ((double)B * dh[e * out + o] - sg - xh * sgx);
                    }
                }
            for (size_t e = 0; e < B; e++)
                for (size_t o = 0; o < out; o++) {
                    double zz = z[l][e * out + o], s = sigmoid(zz);
                    dh[e * out + o] *= s * (1 + zz * (1 - s));
                }
            const double *hin = l == 0 ? x : h[l - 1];
            memset(dn, 0, B * maxw * sizeof(double));
            for (size_t e = 0; e < B; e++)
                for (size_t o = 0; o < out; o++) {
                    double d = dh[e * out + o];
                    g[L->lin_b[l] + o] += d;
                    for (size_t i = 0; i < in; i++) {
                        g[L->lin_w[l] + o * in + i] += d * hin[e * in + i];
                        if (l > 0)
                            dn[e * in + i] += d * p[L->lin_w[l] + o * in + i];
                    }
                }
            double *tmp = dh;
            dh = dn;
            dn = tmp;
        }
        free(dh);
        free(dn);
    }
    for (size_t l = 0; l < nlin; l++) {
        free(z[l]);
        free(a[l]);
        free(h[l]);
        free(mean[l]);
        free(inv[l]);
    }
    free(y);
    return loss;
}

/* Names and extents of the tensors of a layout, for per-tensor reports. */
struct tensor {
    char name[32];
    size_t off, len;
};
static size_t list_tensors(const struct ref_net *n, struct tensor *t)
{
    const struct rvs_train_layout *L = n->lay;
    size_t k = 0;
    for (size_t l = 0; l < L->nlin; l++) {
        snprintf(t[k].name, sizeof t[k].name, "lin_%zu.weight", l);
        t[k].off = L->lin_w[l], t[k].len = L->lin_in[l] * L->lin_out[l], k++;
        snprintf(t[k].name, sizeof t[k].name, "lin_%zu.bias", l);
        t[k].off = L->lin_b[l], t[k].len = L->lin_out[l], k++;
        if (n->bn && l >= 1 && l <= n->nlayers) {
            snprintf(t[k].name, sizeof t[k].name, "bn_%zu.weight", l);
            t[k].off = L->bn_w[l], t[k].len = n->width, k++;
            snprintf(t[k].name, sizeof t[k].name, "bn_%zu.bias", l);
            t[k].off = L->bn_b[l], t[k].len = n->width, k++;
        }
    }
    snprintf(t[k].name, sizeof t[k].name, "pc_layer.weight");
    t[k].off = L->pc_w, t[k].len = n->npix * n->npc, k++;
    snprintf(t[k].name, sizeof t[k].name, "pc_layer.bias");
    t[k].off = L->pc_b, t[k].len = n->npix, k++;
    return k;
}

/* ------------------------------------------------------------------ a random problem */

struct problem {
    size_t nspec, indim, npix;
    float *inputs, *logflux;
    size_t *rows;
};

static void problem_make(struct problem *pb, size_t nspec, size_t indim, size_t npix)
{
    pb->nspec = nspec, pb->indim = indim, pb->npix = npix;
    pb->inputs = malloc(nspec * indim * sizeof(float));
    pb->logflux = malloc(nspec * npix * sizeof(float));
    pb->rows = malloc(nspec * sizeof(size_t));
    for (size_t i = 0; i < nspec * indim; i++)
        pb->inputs[i] = (float)test_uniform(-1.5, 1.5);
    for (size_t i = 0; i < nspec; i++) {
        pb->rows[i] = i;
        for (size_t j = 0; j < npix; j++)
            pb->logflux[i * npix + j] =
                (float)(0.3 * sin(0.05 * (double)j + pb->inputs[i * indim]) +
                        test_uniform(-0.2, 0.2) - 0.1 * (double)(j % 7));
    }
}

static void problem_free(struct problem *pb)
{
    free(pb->inputs);
    free(pb->logflux);
    free(pb->rows);
}

static struct rvs_trainer *make_trainer(struct rvs_context *ctx, struct problem *pb,
                                        size_t nlayers, size_t width, size_t npc, int bn,
                                        size_t ntrain, uint64_t seed)
{
    struct rvs_train_config cfg;
    rvs_train_config_init(&cfg);
    cfg.nlayers = nlayers, cfg.width = width, cfg.npc = npc, cfg.with_batchnorm = bn;
    cfg.batch = 16, cfg.seed = seed, cfg.loss = test_loss;
    struct rvs_trainer *tr = NULL;
    int st = rvs_trainer_create(ctx, &cfg, pb->indim, pb->npix, &tr);
    CHECK(st == RVS_OK, "rvs_trainer_create: %s", rvs_strerror(st));
    if (!tr)
        return NULL;
    st = rvs_trainer_set_data(tr, pb->nspec, pb->inputs, pb->logflux, pb->rows, ntrain,
                              pb->rows + ntrain, pb->nspec - ntrain);
    CHECK(st == RVS_OK, "rvs_trainer_set_data: %s", rvs_strerror(st));
    st = rvs_trainer_init_weights(tr);
    CHECK(st == RVS_OK, "rvs_trainer_init_weights: %s", rvs_strerror(st));
    return tr;
}

/* The batch's inputs/targets and the normalisation in double, for the reference. */
static void batch_double(struct rvs_trainer *tr, const struct problem *pb, const size_t *rows,
                         size_t B, double *x, double *t, double *d0, double *sd0, double *spread0)
{
    const float *fd0, *fsd0;
    rvs_trainer_normalisation(tr, &fd0, &fsd0, spread0);
    for (size_t j = 0; j < pb->npix; j++)
        d0[j] = fd0[j], sd0[j] = fsd0[j];
    for (size_t e = 0; e < B; e++) {
        for (size_t i = 0; i < pb->indim; i++)
            x[e * pb->indim + i] = pb->inputs[rows[e] * pb->indim + i];
        for (size_t j = 0; j < pb->npix; j++)
            t[e * pb->npix + j] = pb->logflux[rows[e] * pb->npix + j];
    }
}

/* ------------------------------------------------------------------ 1 + 2: gradients */

static void test_gradients(struct rvs_context *ctx, const char *label, size_t indim,
                           size_t nlayers, size_t width, size_t npc, size_t npix, size_t B,
                           int bn, int do_fd)
{
    struct problem pb;
    problem_make(&pb, B + 7, indim, npix);
    struct rvs_trainer *tr = make_trainer(ctx, &pb, nlayers, width, npc, bn, B + 7, 11);
    if (!tr) {
        problem_free(&pb);
        return;
    }
    const struct rvs_train_layout *L = rvs_trainer_layout(tr);
    struct ref_net n = {L, indim, nlayers, width, npc, npix, bn, 1e-5, test_loss, 0.02};
    size_t P = L->total;
    float *pf = malloc(P * sizeof(float)), *gf = malloc(P * sizeof(float));
    double *p = malloc(P * sizeof(double)), *g = malloc(P * sizeof(double));
    double *x = malloc(B * indim * sizeof(double)), *t = malloc(B * npix * sizeof(double));
    double *d0 = malloc(npix * sizeof(double)), *sd0 = malloc(npix * sizeof(double));
    double *bm = calloc((nlayers + 2) * width, sizeof(double));
    double *bv = calloc((nlayers + 2) * width, sizeof(double));
    double spread0;
    /* the batch: rows 3 .. 3 + B (not the first rows, to exercise the gather) */
    size_t *rows = pb.rows + 3;
    batch_double(tr, &pb, rows, B, x, t, d0, sd0, &spread0);
    CHECK(rvs_trainer_params_read(tr, pf) == RVS_OK, "params_read");
    /* random BatchNorm affine parameters, so gamma != 1 and beta != 0 are covered */
    if (bn)
        for (size_t l = 1; l <= nlayers; l++)
            for (size_t o = 0; o < width; o++) {
                pf[L->bn_w[l] + o] = (float)test_uniform(0.5, 1.5);
                pf[L->bn_b[l] + o] = (float)test_uniform(-0.3, 0.3);
            }
    CHECK(rvs_trainer_params_write(tr, pf) == RVS_OK, "params_write");
    for (size_t i = 0; i < P; i++)
        p[i] = pf[i];
    double ref = ref_loss_grad(&n, p, x, t, B, d0, sd0, spread0, g, bm, bv);
    struct tensor tens[4 * RVS_NN_MAX_LINEAR + 2];
    size_t nt = list_tensors(&n, tens);

    if (do_fd) {
        /* 1: the reference against central differences in double */
        double *gp = malloc(P * sizeof(double));
        double worst = 0;
        for (size_t k = 0; k < nt; k++) {
            double gmax = 0, dmax = 0;
            for (size_t i = 0; i < tens[k].len; i++) {
                size_t q = tens[k].off + i;
                double keep = p[q], hh = 1e-6 * (1 + fabs(keep));
                p[q] = keep + hh;
                double lp = ref_loss_grad(&n, p, x, t, B, d0, sd0, spread0, NULL, NULL, NULL);
                p[q] = keep - hh;
                double lm = ref_loss_grad(&n, p, x, t, B, d0, sd0, spread0, NULL, NULL, NULL);
                p[q] = keep;
                double fd = (lp - lm) / (2 * hh);
                gmax = fmax(gmax, fabs(g[q]));
                dmax = fmax(dmax, fabs(fd - g[q]));
            }
            double rel = gmax > 0 ? dmax / gmax : dmax;
            worst = fmax(worst, rel);
            CHECK(rel <= TOL_FD, "%s: reference %s vs finite differences: %.3g > %.1g", label,
                  tens[k].name, rel, TOL_FD);
        }
        printf("%-28s reference vs central differences: max rel %.3g (tol %.0e)\n", label,
               worst, TOL_FD);
        free(gp);
    }

    /* 2: the device against the reference */
    double dloss = NAN;
    int st = rvs_trainer_gradient(tr, rows, B, &dloss);
    CHECK(st == RVS_OK, "rvs_trainer_gradient: %s", rvs_strerror(st));
    CHECK(rvs_trainer_grads_read(tr, gf) == RVS_OK, "grads_read");
    double worst = 0;
    for (size_t k = 0; k < nt; k++) {
        double gmax = 0, dmax = 0;
        for (size_t i = 0; i < tens[k].len; i++) {
            size_t q = tens[k].off + i;
            gmax = fmax(gmax, fabs(g[q]));
            dmax = fmax(dmax, fabs((double)gf[q] - g[q]));
        }
        double rel = gmax > 0 ? dmax / gmax : dmax;
        worst = fmax(worst, rel);
        CHECK(rel <= TOL_DEVICE, "%s: device %s gradient: max rel %.3g > %.1g", label,
              tens[k].name, rel, TOL_DEVICE);
    }
    CHECK(test_near(dloss, ref, 0, TOL_LOSS), "%s: device loss %.9g, reference %.9g", label,
          dloss, ref);
    double rs_err = 0;
    if (bn) {
        float *rm = malloc(width * sizeof(float)), *rv = malloc(width * sizeof(float));
        for (size_t l = 1; l <= nlayers; l++) {
            CHECK(rvs_trainer_running_read(tr, l, rm, rv) == RVS_OK, "running_read");
            for (size_t o = 0; o < width; o++) {
                /* torch: running = 0.9 running + 0.1 batch, from mean 0 / var 1 */
                double em = 0.1 * bm[l * width + o], ev = 0.9 + 0.1 * bv[l * width + o];
                rs_err = fmax(rs_err, fabs(rm[o] - em) / (1e-3 + fabs(em)));
                rs_err = fmax(rs_err, fabs(rv[o] - ev) / ev);
            }
        }
        CHECK(rs_err <= 1e-5, "%s: BatchNorm running statistics off by %.3g", label, rs_err);
        free(rm);
        free(rv);
    }
    printf("%-28s device vs reference: gradients max rel %.3g (tol %.0e), loss rel %.3g, "
           "running stats %.3g\n",
           label, worst, TOL_DEVICE, fabs(dloss - ref) / ref, rs_err);

    /* 3: Adam, two steps, against the torch update computed here in double */
    if (do_fd) {
        float *p0 = malloc(P * sizeof(float)), *p1 = malloc(P * sizeof(float));
        double *m = calloc(P, sizeof(double)), *v = calloc(P, sizeof(double));
        double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, aerr = 0;
        CHECK(rvs_trainer_params_read(tr, p0) == RVS_OK, "params_read");
        for (int step = 1; step <= 2; step++) {
            if (step == 2) {
                CHECK(rvs_trainer_gradient(tr, rows, B, NULL) == RVS_OK, "gradient");
                CHECK(rvs_trainer_grads_read(tr, gf) == RVS_OK, "grads_read");
            }
            CHECK(rvs_trainer_adam_step(tr) == RVS_OK, "adam_step");
            CHECK(rvs_trainer_params_read(tr, p1) == RVS_OK, "params_read");
            for (size_t q = 0; q < P; q++) {
                m[q] = b1 * m[q] + (1 - b1) * gf[q];
                v[q] = b2 * v[q] + (1 - b2) * (double)gf[q] * gf[q];
                double mh = m[q] / (1 - pow(b1, step)), vh = v[q] / (1 - pow(b2, step));
                double want = p0[q] - lr * mh / (sqrt(vh) + eps);
                /* float rounding of p (2 ulp) plus 1e-4 of the step */
                double tol = 2.5e-7 * fabs(want) + 1e-4 * lr;
                aerr = fmax(aerr, fabs(p1[q] - want) / tol);
                p0[q] = p1[q]; /* the next step starts from the device's rounded value */
            }
        }
        CHECK(aerr <= 1, "%s: Adam update off by %.3g x its tolerance", label, aerr);
        printf("%-28s Adam (2 steps) vs hand-computed torch update: worst %.3g of tolerance\n",
               label, aerr);
        free(p0);
        free(p1);
        free(m);
        free(v);
    }
    rvs_trainer_destroy(&tr);
    free(pf);
    free(gf);
    free(p);
    free(g);
    free(x);
    free(t);
    free(d0);
    free(sd0);
    free(bm);
    free(bv);
    problem_free(&pb);
}

/* ------------------------------------------------------------------ 4: PCA */

static void test_pca(struct rvs_context *ctx)
{
    enum { N = 60, NPIX = 150, RANK = 5, K = 8 };
    float *data = malloc(N * NPIX * sizeof(float));
    double *comp = malloc(K * NPIX * sizeof(double)), mean[NPIX];
    double basis[RANK][NPIX], lo = INFINITY, hi = -INFINITY;
    size_t rows[N];
    for (int r = 0; r < RANK; r++)
        for (int j = 0; j < NPIX; j++)
            basis[r][j] = test_uniform(-1, 1);
    for (int i = 0; i < N; i++) {
        rows[i] = (size_t)i;
        double c[RANK];
        for (int r = 0; r < RANK; r++)
            c[r] = test_uniform(-1, 1) * pow(0.3, r); /* decaying variances */
        for (int j = 0; j < NPIX; j++) {
            double v = -0.5 + 0.01 * j;
            for (int r = 0; r < RANK; r++)
                v += c[r] * basis[r][j];
            data[i * NPIX + j] = (float)v;
            lo = fmin(lo, v), hi = fmax(hi, v);
        }
    }
    for (int k = RANK; k <= K; k += K - RANK) {
        int st = rvs_train_pca(data, NPIX, rows, N, NPIX, (size_t)k, 7, comp, mean);
        CHECK(st == RVS_OK, "rvs_train_pca: %s", rvs_strerror(st));
        double orth = 0, rec = 0;
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++) {
                double s = 0;
                for (int j = 0; j < NPIX; j++)
                    s += comp[a * NPIX + j] * comp[b * NPIX + j];
                orth = fmax(orth, fabs(s - (a == b)));
            }
        for (int i = 0; i < N; i++) {
            double c[K];
            for (int a = 0; a < k; a++) {
                c[a] = 0;
                for (int j = 0; j < NPIX; j++)
                    c[a] += comp[a * NPIX + j] * (data[i * NPIX + j] - mean[j]);
            }
            for (int j = 0; j < NPIX; j++) {
                double r = mean[j];
                for (int a = 0; a < k; a++)
                    r += c[a] * comp[a * NPIX + j];
                rec = fmax(rec, fabs(r - data[i * NPIX + j]));
            }
        }
        rec /= hi - lo;
        CHECK(orth <= 1e-10, "PCA k=%d: components not orthonormal (%.3g)", k, orth);
        CHECK(rec <= TOL_PCA, "PCA k=%d of rank-%d data: reconstruction error %.3g > %.0e", k,
              RANK, rec, TOL_PCA);
        printf("PCA k=%d of rank-%d data (%dx%d): orthonormality %.3g, reconstruction %.3g of "
               "range (tol %.0e)\n", k, RANK, N, NPIX, orth, rec, TOL_PCA);
    }
    /* the trainer's initialisation reconstructs the same data */
    struct problem pb = {N, 4, NPIX, NULL, data, rows};
    float inputs[N * 4];
    for (int i = 0; i < N * 4; i++)
        inputs[i] = (float)test_uniform(-1, 1);
    pb.inputs = inputs;
    struct rvs_trainer *tr = make_trainer(ctx, &pb, 1, 8, RANK, 0, N, 3);
    if (tr) {
        double loss0 = NAN;
        int st = rvs_trainer_pca_init(tr, &loss0);
        CHECK(st == RVS_OK && loss0 < TOL_PCA, "trainer PCA init: loss0 %.3g (status %s)", loss0,
              rvs_strerror(st));
        printf("trainer PCA initialisation (npc = rank = %d): loss0 %.3g\n", RANK, loss0);
        rvs_trainer_destroy(&tr);
    }
    free(data);
    free(comp);
}

/* ------------------------------------------------------------------ 5: toy training */

/* A smooth "spectrum": continuum slope from teff, three absorption lines whose depths depend
 * on teff, feh, alpha and whose widths depend on logg. x in [0, 1) across the arm. */
static double toy_logflux(const double th[4], double x, int arm)
{
    double t = th[0] / 5500, lg = th[1], feh = th[2], al = th[3];
    double cont = -0.3 * (t - 1) * (x - 0.5);
    double w = 0.01 + 0.004 * (lg - 3);
    double c[3] = {0.2, 0.5, 0.8};
    double d[3] = {0.4 * exp(0.8 * feh) / t, 0.25 * exp(0.6 * (feh + al)) / (t * t),
                   0.15 * (1 + 0.3 * al) * t};
    double v = cont;
    for (int k = 0; k < 3; k++) {
        double cc = c[k] + 0.05 * arm;
        v -= d[k] * exp(-(x - cc) * (x - cc) / (2 * w * w));
    }
    return v;
}

static int toy_run(struct rvs_context *ctx, int arm, uint64_t seed, float **weights,
                   size_t *nweights, double *val_loss, double *med)
{
    enum { N = 200, NPIX = 200, NVAL = 20 };
    int st;
    float *inputs = malloc(N * 4 * sizeof(float)), *lf = malloc(N * NPIX * sizeof(float));
    size_t rows[N];
    uint64_t keep = test_rng_state;
    test_rng_state = 0x1234567ULL + (uint64_t)arm;
    for (int i = 0; i < N; i++) {
        double th[4] = {test_uniform(4000, 7000), test_uniform(1, 5), test_uniform(-2, 0.5),
                        test_uniform(-0.2, 0.6)};
        /* mapped inputs: log10 teff standardised roughly as the Mapper would */
        double mp[4] = {(log10(th[0]) - 3.74) / 0.07, (th[1] - 3) / 1.15, (th[2] + 0.75) / 0.72,
                        (th[3] - 0.2) / 0.23};
        for (int p = 0; p < 4; p++)
            inputs[i * 4 + p] = (float)mp[p];
        for (int j = 0; j < NPIX; j++)
            lf[i * NPIX + j] = (float)toy_logflux(th, (double)j / NPIX, arm);
        rows[i] = (size_t)i;
    }
    test_rng_state = keep;
    struct rvs_train_config cfg;
    rvs_train_config_init(&cfg);
    cfg.nlayers = 2, cfg.width = 32, cfg.npc = 12, cfg.batch = 30, cfg.seed = seed;
    cfg.max_epochs = 300, cfg.lr = 3e-3, cfg.pca_init = 1, cfg.stop_patience = 0;
    struct rvs_trainer *tr = NULL;
    st = rvs_trainer_create(ctx, &cfg, 4, NPIX, &tr);
    if (st == RVS_OK)
        st = rvs_trainer_set_data(tr, N, inputs, lf, rows, N - NVAL, rows + N - NVAL, NVAL);
    if (st == RVS_OK)
        st = rvs_trainer_init_weights(tr);
    if (st == RVS_OK)
        st = rvs_trainer_pca_init(tr, NULL);
    double tl = NAN;
    size_t epochs = 0;
    if (st == RVS_OK)
        st = rvs_trainer_fit(tr, NULL, NULL, &tl, val_loss, &epochs);
    *nweights = tr ? rvs_trainer_layout(tr)->total : 0;
    *weights = malloc(*nweights * sizeof(float));
    if (st == RVS_OK)
        st = rvs_trainer_params_read(tr, *weights);
    /* the emulation error of the held-out spectra */
    float *pred = malloc(NVAL * NPIX * sizeof(float));
    double *err = malloc(NVAL * NPIX * sizeof(double));
    if (st == RVS_OK)
        st = rvs_trainer_evaluate(tr, rows + N - NVAL, NVAL, NULL, pred);
    if (st == RVS_OK) {
        for (int i = 0; i < NVAL * NPIX; i++)
            err[i] = fabs(expm1((double)pred[i] - lf[(N - NVAL) * NPIX + i]));
        /* median by sorting (small) */
        for (int i = 1; i < NVAL * NPIX; i++)
            for (int j = i; j > 0 && err[j - 1] > err[j]; j--) {
                double tmp = err[j];
                err[j] = err[j - 1];
                err[j - 1] = tmp;
            }
        *med = err[NVAL * NPIX / 2];
        printf("toy arm %d seed %llu: %zu epochs, train loss %.4f, validation loss %.4f, "
               "held-out |dflux|/flux median %.3g%%, 99th %.3g%%\n", arm,
               (unsigned long long)seed, epochs, tl, *val_loss, 100 * *med,
               100 * err[NVAL * NPIX * 99 / 100]);
    }
    rvs_trainer_destroy(&tr);
    free(inputs);
    free(lf);
    free(pred);
    free(err);
    return st;
}

static void test_toy(struct rvs_context *ctx)
{
    for (int arm = 0; arm < 2; arm++) {
        float *w1 = NULL, *w2 = NULL;
        size_t n1 = 0, n2 = 0;
        double v1 = NAN, v2 = NAN, m1 = NAN, m2 = NAN;
        int st = toy_run(ctx, arm, 42, &w1, &n1, &v1, &m1);
        CHECK(st == RVS_OK, "toy run arm %d: %s", arm, rvs_strerror(st));
        CHECK(v1 < TOY_VAL_BOUND, "toy arm %d: validation loss %.4g >= %.2g", arm, v1,
              TOY_VAL_BOUND);
        if (arm == 0) {
            st = toy_run(ctx, arm, 42, &w2, &n2, &v2, &m2);
            CHECK(st == RVS_OK, "toy rerun: %s", rvs_strerror(st));
            CHECK(n1 == n2 && memcmp(w1, w2, n1 * sizeof(float)) == 0 && v1 == v2,
                  "toy run with the same seed is not reproducible (val %.9g vs %.9g)", v1, v2);
            printf("toy arm 0 rerun with the same seed: weights %s\n",
                   n1 == n2 && memcmp(w1, w2, n1 * sizeof(float)) == 0 ? "identical"
                                                                        : "DIFFERENT");
        }
        free(w1);
        free(w2);
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static void test_quantile(void)
{
    static const size_t sizes[] = {1, 2, 3, 10, 101, 1000, 4097};
    static const double qs[] = {0.0, 0.01, 0.5, 0.99, 1.0};
    size_t worst_bad = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        float *v = malloc(n * sizeof *v), *w = malloc(n * sizeof *w);
        for (size_t i = 0; i < n; i++) /* ties: a few distinct values among many */
            v[i] = (float)(i % 3 == 0 ? floor(test_uniform(0, 5)) : test_uniform(-1, 1));
        memcpy(w, v, n * sizeof *w);
        qsort(w, n, sizeof *w, cmp_float);
        for (size_t j = 0; j < sizeof qs / sizeof qs[0]; j++) {
            float *c = malloc(n * sizeof *c);
            memcpy(c, v, n * sizeof *c);
            double pos = qs[j] * (double)(n - 1);
            size_t i = (size_t)pos;
            double want = i + 1 < n ? w[i] + (pos - (double)i) * ((double)w[i + 1] - w[i]) : w[i];
            double got = rvs_train_quantile(c, n, qs[j]);
            CHECK(fabs(got - want) <= 1e-12 * (1 + fabs(want)),
                  "quantile %.2f of %zu values: %.9g, sorted %.9g", qs[j], n, got, want);
            worst_bad += fabs(got - want) > 1e-12 * (1 + fabs(want));
            free(c);
        }
        free(v);
        free(w);
    }
    CHECK(isnan(rvs_train_quantile(NULL, 0, 0.5)), "quantile of nothing is NaN");
    printf("rvs_train_quantile vs sort: %zu mismatches\n", worst_bad);
}

int main(void)
{
    test_quantile();
    struct rvs_context *ctx = test_context(1);
    test_gradients(ctx, "tiny, no BatchNorm", 3, 2, 5, 3, 7, 6, 0, 1);
    test_gradients(ctx, "tiny, BatchNorm", 3, 2, 5, 3, 7, 6, 1, 1);
    test_gradients(ctx, "tiny, no hidden layer", 2, 0, 4, 2, 5, 3, 0, 1);
    test_gradients(ctx, "4x32x32x16 -> 301 px, BN", 4, 2, 32, 16, 301, 50, 1, 0);
    test_gradients(ctx, "4x64x16 -> 1000 px", 4, 1, 64, 16, 1000, 37, 0, 0);
    test_loss = RVS_TRAIN_LOSS_L2;
    test_gradients(ctx, "L2: tiny, BatchNorm", 3, 2, 5, 3, 7, 6, 1, 1);
    test_gradients(ctx, "L2: 4x64x16 -> 1000 px", 4, 1, 64, 16, 1000, 37, 0, 0);
    test_loss = RVS_TRAIN_LOSS_L1L2;
    test_gradients(ctx, "L1L2: tiny, BatchNorm", 3, 2, 5, 3, 7, 6, 1, 1);
    test_gradients(ctx, "L1L2: 4x64x16 -> 1000 px", 4, 1, 64, 16, 1000, 37, 0, 0);
    test_loss = RVS_TRAIN_LOSS_L1;
    test_pca(ctx);
    test_toy(ctx);
    rvs_context_destroy(&ctx);

    /* forced fp32 accumulation: the gradients again */
    setenv("RVSFIT_CL_FP32", "1", 1);
    ctx = test_context(1);
    printf("-- forced fp32 accumulation\n");
    test_gradients(ctx, "fp32: tiny, BatchNorm", 3, 2, 5, 3, 7, 6, 1, 0);
    test_gradients(ctx, "fp32: 4x32x32x16 -> 301, BN", 4, 2, 32, 16, 301, 50, 1, 0);
    rvs_context_destroy(&ctx);
    return test_finish("test_train");
}
