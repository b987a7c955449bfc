/* svd_adapt/linalg.c: the few dense decompositions adaptation needs, on LAPACKE.
 *
 * Every routine works on a private copy (LAPACK overwrites its input), maps LAPACK's info to
 * a negative errno (info < 0 is a bug: -EINVAL; info > 0 no convergence: SVD_ENOCONV, and the
 * caller skips that adaptation), and frees everything on every path. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "svd_adapt/svd_internal.h"

static int svd__info(lapack_int info)
{
    return info == 0 ? 0 : info < 0 ? -EINVAL : SVD_ENOCONV;
}

/* sgesdd on a copy of a (m x n): jobz 'N' singular values only (u, vt NULL), 'S' the thin
 * factors too (u: m x r, vt: r x n, r = min(m, n)). */
static int svd__sgesdd(char jobz, const float *a, size_t m, size_t n, float *u, float *s, float *vt)
{
    const size_t r = m < n ? m : n, ldu = jobz == 'N' ? m : r;
    float *c = malloc(m * n * sizeof(float) + 1);
    if (!c) return -ENOMEM;
    memcpy(c, a, m * n * sizeof(float));
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, jobz, (lapack_int)m, (lapack_int)n, c,
                                     (lapack_int)n, s, u, (lapack_int)ldu, vt, (lapack_int)n);
    free(c);
    return svd__info(info);
}

int svd__svals(const float *a, size_t m, size_t n, float *s)
{
    return svd__sgesdd('N', a, m, n, NULL, s, NULL);
}

int svd__svd(const float *a, size_t m, size_t n, float *u, float *s, float *vt)
{
    return svd__sgesdd('S', a, m, n, u, s, vt);
}

/* The Gram matrix h^T h / N in double (m x m, full). */
static double *svd__gram(const float *h, size_t N, size_t m)
{
    float *g = calloc(m * m + 1, sizeof(float));
    double *d = malloc((m * m + 1) * sizeof(double));
    if (!g || !d) {
        free(g);
        free(d);
        return NULL;
    }
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)m, (int)N, 1.0f / (float)N, h, (int)m,
                0.0f, g, (int)m);
    for (size_t i = 0; i < m; i++)
        for (size_t j = i; j < m; j++) d[i * m + j] = d[j * m + i] = g[i * m + j];
    free(g);
    return d;
}

/* The eigenvalues (ascending, *w: m) of the Gram matrix h^T h by dsyevd, and with jobz 'V'
 * its eigenvectors (the columns of *g: m x m). 0 with both malloc'ed (the caller frees them),
 * or -ENOMEM / LAPACK's failure with nothing left allocated. */
static int svd__gram_dsyevd(const float *h, size_t N, size_t m, char jobz, double **g, double **w)
{
    *g = svd__gram(h, N, m);
    *w = malloc(m * sizeof(double));
    int rc = *g && *w ? svd__info(LAPACKE_dsyevd(LAPACK_ROW_MAJOR, jobz, 'U', (lapack_int)m, *g,
                                                 (lapack_int)m, *w))
                      : -ENOMEM;
    if (rc < 0) {
        free(*g);
        free(*w);
    }
    return rc;
}

int svd__gram_svals(const float *h, size_t N, size_t m, float *s)
{
    double *g, *w;
    int rc = m ? svd__gram_dsyevd(h, N, m, 'N', &g, &w) : 1;
    if (rc) return rc < 0 ? rc : 0;
    const size_t r = m < N ? m : N;
    for (size_t i = 0; i < r; i++) {
        double e = w[m - 1 - i]; // ascending from LAPACK
        s[i] = e > 0.0 ? (float)sqrt(e) : 0.0f;
    }
    free(g);
    free(w);
    return 0;
}

int svd__gram_eig(const float *h, size_t N, size_t m, float *ev, float *vt)
{
    double *g, *w;
    int rc = m ? svd__gram_dsyevd(h, N, m, 'V', &g, &w) : 1;
    if (rc) return rc < 0 ? rc : 0;
    for (size_t i = 0; i < m; i++) {
        const size_t c = m - 1 - i; // column c of g is the eigenvector of w[c]
        ev[i] = (float)w[c];
        for (size_t j = 0; j < m; j++) vt[i * m + j] = (float)g[j * m + c];
    }
    free(g);
    free(w);
    return 0;
}

int svd__pivot_order(const float *h, size_t N, size_t m, int *order)
{
    float *c = malloc(N * m * sizeof(float) + 1);
    float *tau = malloc((m + 1) * sizeof(float));
    lapack_int *jp = calloc(m + 1, sizeof(lapack_int));
    int rc = -ENOMEM;
    if (c && tau && jp) {
        memcpy(c, h, N * m * sizeof(float));
        lapack_int info = LAPACKE_sgeqp3(LAPACK_ROW_MAJOR, (lapack_int)N, (lapack_int)m, c,
                                         (lapack_int)m, jp, tau);
        rc = svd__info(info);
        for (size_t j = 0; rc == 0 && j < m; j++) order[j] = (int)jp[j] - 1;
    }
    free(c);
    free(tau);
    free(jp);
    return rc;
}

int svd__lstsq(const float *a, const float *b, size_t N, size_t k, size_t d, float *t)
{
    double *g = malloc(k * k * sizeof(double) + 8), *r = malloc(k * d * sizeof(double) + 8);
    double *g2 = malloc(k * k * sizeof(double) + 8);
    int rc = -ENOMEM;
    if (!g || !r || !g2) goto out;
    // G = A^T A (k x k), R = A^T B (k x d), accumulated in double.
    memset(g, 0, k * k * sizeof(double));
    memset(r, 0, k * d * sizeof(double));
    for (size_t i = 0; i < N; i++) {
        const float *ai = a + i * k, *bi = b + i * d;
        for (size_t p = 0; p < k; p++) {
            double ap = ai[p];
            for (size_t q = p; q < k; q++) g[p * k + q] += ap * ai[q];
            for (size_t q = 0; q < d; q++) r[p * d + q] += ap * bi[q];
        }
    }
    double tr = 0.0;
    for (size_t p = 0; p < k; p++) {
        for (size_t q = 0; q < p; q++) g[p * k + q] = g[q * k + p];
        tr += g[p * k + p];
    }
    // Ridge: start tiny relative to the mean diagonal; grow it while ill-conditioned.
    double lam = 1e-6 * (tr > 0 ? tr / (double)k : 1.0);
    for (int attempt = 0; attempt < 8; attempt++, lam *= 100.0) {
        memcpy(g2, g, k * k * sizeof(double));
        for (size_t p = 0; p < k; p++) g2[p * k + p] += lam;
        double anorm = 0.0;
        for (size_t p = 0; p < k; p++) {
            double s = 0.0;
            for (size_t q = 0; q < k; q++) s += fabs(g2[p * k + q]);
            anorm = s > anorm ? s : anorm;
        }
        lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)k, g2, (lapack_int)k);
        if (info != 0) continue;
        double rcond = 0.0;
        LAPACKE_dpocon(LAPACK_ROW_MAJOR, 'U', (lapack_int)k, g2, (lapack_int)k, anorm, &rcond);
        if (rcond < 1e-10) continue;
        double *x = malloc(k * d * sizeof(double) + 8);
        if (!x) goto out;
        memcpy(x, r, k * d * sizeof(double));
        info = LAPACKE_dpotrs(LAPACK_ROW_MAJOR, 'U', (lapack_int)k, (lapack_int)d, g2,
                              (lapack_int)k, x, (lapack_int)d);
        if (info == 0)
            for (size_t i = 0; i < k * d; i++) t[i] = (float)x[i];
        free(x);
        rc = svd__info(info);
        goto out;
    }
    rc = SVD_ENOCONV;
out:
    free(g);
    free(r);
    free(g2);
    return rc;
}
