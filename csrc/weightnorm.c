/* weightnorm.c: w = g * v / ||v|| forward/backward (dim 0, 1 or all) and the sparse-DoRA row norms.
 * Memory-bound kernels: every slice is read once to accumulate its norm (double) and once more,
 * from cache where the slice fits, to write the output. Row loops are split among OpenMP threads;
 * every reduction has a fixed order, so results do not depend on the thread count. */
#include "weightnorm.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "common.h"

#if SFT_X86
#include <immintrin.h>
#endif

/* Floats per chunk of the flattened tensor for dim = all (partial sums per chunk, summed in order). */
#define WN_CHUNK 16384
/* Columns per block of the per-column reductions of dim = 1 (a block is one task). */
#define WN_COLBLOCK 512
/* Below this many multiply-adds a kernel runs on one thread: waking a team costs more than it saves
 * (and on a busy machine a spinning team can cost milliseconds). */
#define WN_PARALLEL_MIN (1 << 16)
/* Outputs of at least this many floats (16 MiB, beyond the caches) are written with streaming stores. */
#define WN_STREAM_MIN (1 << 22)

/* Threads for a kernel doing `work` multiply-adds. */
static int wn_threads(int64_t work) {
    return work < WN_PARALLEL_MIN ? 1 : sft_get_num_threads();
}

int64_t weightnorm_num_norms(int64_t R, int64_t C, int dim) {
    return dim == WN_DIM_ROWS ? R : dim == WN_DIM_COLS ? C : 1;
}

/* 1 when a double coefficient survives rounding to float32 (0, or a normal float in range). */
static inline int fits_f32(double a) {
    double x = fabs(a);
    return x == 0.0 || (x >= (double)FLT_MIN && x <= (double)FLT_MAX);
}

/* ---- vector primitives: portable C ---------------------------------------------------------- */

/* sum of x[j]^2 in double */
static double sumsq_portable(const float *x, int64_t n) {
    double s0 = 0.0, s1 = 0.0;
    int64_t j = 0;
    // two accumulators, pairs of elements
    for (; j + 2 <= n; j += 2) {
        s0 += (double)x[j] * x[j];
        s1 += (double)x[j + 1] * x[j + 1];
    }
    // tail
    for (; j < n; j++) s0 += (double)x[j] * x[j];
    return s0 + s1;
}

/* dot = sum a[j] x[j], ss = sum x[j]^2, both in double */
static void dot_sumsq_portable(const float *a, const float *x, int64_t n, double *dot, double *ss) {
    double d = 0.0, s = 0.0;
    // one pass over both rows
    for (int64_t j = 0; j < n; j++) {
        d += (double)a[j] * x[j];
        s += (double)x[j] * x[j];
    }
    *dot = d, *ss = s;
}

/* y = a * x */
static void scale_portable(float *y, const float *x, float a, int64_t n) {
    // elementwise
    for (int64_t j = 0; j < n; j++) y[j] = a * x[j];
}

/* y = a * x + b * z */
static void axpby_portable(float *y, float a, const float *x, float b, const float *z, int64_t n) {
    // elementwise
    for (int64_t j = 0; j < n; j++) y[j] = a * x[j] + b * z[j];
}

/* acc[j] += x[j]^2 (double accumulators, one per column) */
static void col_sumsq_portable(double *acc, const float *x, int64_t n) {
    // elementwise accumulate
    for (int64_t j = 0; j < n; j++) acc[j] += (double)x[j] * x[j];
}

/* dacc[j] += a[j] x[j], sacc[j] += x[j]^2 */
static void col_dot_sumsq_portable(double *dacc, double *sacc, const float *a, const float *x, int64_t n) {
    // elementwise accumulate
    for (int64_t j = 0; j < n; j++) {
        dacc[j] += (double)a[j] * x[j];
        sacc[j] += (double)x[j] * x[j];
    }
}

/* y = s (.) x  (per-column scales) */
static void vscale_portable(float *y, const float *x, const float *s, int64_t n) {
    // elementwise
    for (int64_t j = 0; j < n; j++) y[j] = s[j] * x[j];
}

/* y = a (.) x + b (.) z  (per-column coefficients) */
static void vaxpby_portable(float *y, const float *a, const float *x, const float *b, const float *z,
                            int64_t n) {
    // elementwise
    for (int64_t j = 0; j < n; j++) y[j] = a[j] * x[j] + b[j] * z[j];
}

/* t = sum_k b[k] * A[k, :]  (one row of B A; A (r, n)) */
static void row_ba_portable(float *t, const float *b, const float *A, int64_t r, int64_t n) {
    memset(t, 0, sizeof(float) * (size_t)n);
    // accumulate the r rows of A
    for (int64_t k = 0; k < r; k++) {
        const float *a = A + k * n;
        float bk = b[k];
        for (int64_t j = 0; j < n; j++) t[j] += bk * a[j];
    }
}

/* sum_j (w[j] + s * [m[j] != 0] * t[j])^2 in double */
static double masked_sumsq_portable(const float *w, const uint8_t *m, const float *t, float s, int64_t n) {
    double acc = 0.0;
    // one pass over the row of W' = W + s * (BA) (.) M
    for (int64_t j = 0; j < n; j++) {
        float wp = m[j] ? w[j] + s * t[j] : w[j];
        acc += (double)wp * wp;
    }
    return acc;
}

/* t[j] = [m[j] != 0] * (w[j] + s * t[j])  (in place: the masked row of W') */
static void masked_row_portable(float *t, const float *w, const uint8_t *m, float s, int64_t n) {
    // elementwise
    for (int64_t j = 0; j < n; j++) t[j] = m[j] ? w[j] + s * t[j] : 0.0f;
}

/* sum_j x[j] y[j] (float accumulation in 8 lanes) */
static float dot_portable(const float *x, const float *y, int64_t n) {
    float acc[8] = {0};
    int64_t j = 0;
    // 8 interleaved partial sums
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += x[j + l] * y[j + l];
    // tail
    for (; j < n; j++) acc[0] += x[j] * y[j];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* y += a * x */
static void axpy_portable(float *y, float a, const float *x, int64_t n) {
    // elementwise
    for (int64_t j = 0; j < n; j++) y[j] += a * x[j];
}

/* One row's share of the DoRA row-norm backward:
 * db[k] += sa * <t, A[k, :]>,  pa[k, :] += sa * b[k] * t   for k < r  (A, pa (r, n)) */
static void rowgrad_portable(float *db, float *pa, const float *t, const float *A, const float *b, float sa,
                             int64_t r, int64_t n) {
    // one dot and one axpy per adapter row
    for (int64_t k = 0; k < r; k++) {
        db[k] += sa * dot_portable(t, A + k * n, n);
        axpy_portable(pa + k * n, sa * b[k], t, n);
    }
}

/* ---- vector primitives: AVX2/FMA ------------------------------------------------------------ */
#if SFT_X86

SFT_TARGET_AVX2 static inline double hsum_pd(__m256d v) {
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    lo = _mm_add_pd(lo, hi);
    return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

SFT_TARGET_AVX2 static inline float hsum_ps(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    return _mm_cvtss_f32(_mm_add_ss(lo, _mm_movehdup_ps(lo)));
}

SFT_TARGET_AVX2 static double sumsq_avx2(const float *x, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    __m256d a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
    int64_t j = 0;
    // 16 floats per step, widened to 4 double vectors
    for (; j + 16 <= n; j += 16) {
        __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(x + j));
        __m256d d1 = _mm256_cvtps_pd(_mm_loadu_ps(x + j + 4));
        __m256d d2 = _mm256_cvtps_pd(_mm_loadu_ps(x + j + 8));
        __m256d d3 = _mm256_cvtps_pd(_mm_loadu_ps(x + j + 12));
        a0 = _mm256_fmadd_pd(d0, d0, a0);
        a1 = _mm256_fmadd_pd(d1, d1, a1);
        a2 = _mm256_fmadd_pd(d2, d2, a2);
        a3 = _mm256_fmadd_pd(d3, d3, a3);
    }
    double s = hsum_pd(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    // tail
    for (; j < n; j++) s += (double)x[j] * x[j];
    return s;
}

SFT_TARGET_AVX2 static void dot_sumsq_avx2(const float *a, const float *x, int64_t n, double *dot,
                                           double *ss) {
    __m256d d0 = _mm256_setzero_pd(), d1 = _mm256_setzero_pd();
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t j = 0;
    // 8 floats of each row per step
    for (; j + 8 <= n; j += 8) {
        __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(x + j)), x1 = _mm256_cvtps_pd(_mm_loadu_ps(x + j + 4));
        __m256d g0 = _mm256_cvtps_pd(_mm_loadu_ps(a + j)), g1 = _mm256_cvtps_pd(_mm_loadu_ps(a + j + 4));
        d0 = _mm256_fmadd_pd(g0, x0, d0);
        d1 = _mm256_fmadd_pd(g1, x1, d1);
        s0 = _mm256_fmadd_pd(x0, x0, s0);
        s1 = _mm256_fmadd_pd(x1, x1, s1);
    }
    double d = hsum_pd(_mm256_add_pd(d0, d1)), s = hsum_pd(_mm256_add_pd(s0, s1));
    // tail
    for (; j < n; j++) {
        d += (double)a[j] * x[j];
        s += (double)x[j] * x[j];
    }
    *dot = d, *ss = s;
}

SFT_TARGET_AVX2 static void scale_avx2(float *y, const float *x, float a, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t j = 0;
    // 16 floats per step
    for (; j + 16 <= n; j += 16) {
        _mm256_storeu_ps(y + j, _mm256_mul_ps(va, _mm256_loadu_ps(x + j)));
        _mm256_storeu_ps(y + j + 8, _mm256_mul_ps(va, _mm256_loadu_ps(x + j + 8)));
    }
    // tail
    for (; j < n; j++) y[j] = a * x[j];
}

SFT_TARGET_AVX2 static void axpby_avx2(float *y, float a, const float *x, float b, const float *z,
                                       int64_t n) {
    __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    int64_t j = 0;
    // 8 floats per step
    for (; j + 8 <= n; j += 8) {
        __m256 t = _mm256_mul_ps(vb, _mm256_loadu_ps(z + j));
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j), t));
    }
    // tail
    for (; j < n; j++) y[j] = a * x[j] + b * z[j];
}

SFT_TARGET_AVX2 static void col_sumsq_avx2(double *acc, const float *x, int64_t n) {
    int64_t j = 0;
    // 4 columns per step
    for (; j + 4 <= n; j += 4) {
        __m256d d = _mm256_cvtps_pd(_mm_loadu_ps(x + j));
        _mm256_storeu_pd(acc + j, _mm256_fmadd_pd(d, d, _mm256_loadu_pd(acc + j)));
    }
    // tail
    for (; j < n; j++) acc[j] += (double)x[j] * x[j];
}

SFT_TARGET_AVX2 static void col_dot_sumsq_avx2(double *dacc, double *sacc, const float *a, const float *x,
                                               int64_t n) {
    int64_t j = 0;
    // 4 columns per step
    for (; j + 4 <= n; j += 4) {
        __m256d d = _mm256_cvtps_pd(_mm_loadu_ps(x + j)), g = _mm256_cvtps_pd(_mm_loadu_ps(a + j));
        _mm256_storeu_pd(dacc + j, _mm256_fmadd_pd(g, d, _mm256_loadu_pd(dacc + j)));
        _mm256_storeu_pd(sacc + j, _mm256_fmadd_pd(d, d, _mm256_loadu_pd(sacc + j)));
    }
    // tail
    for (; j < n; j++) {
        dacc[j] += (double)a[j] * x[j];
        sacc[j] += (double)x[j] * x[j];
    }
}

SFT_TARGET_AVX2 static void vscale_avx2(float *y, const float *x, const float *s, int64_t n) {
    int64_t j = 0;
    // 8 floats per step
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), _mm256_loadu_ps(x + j)));
    // tail
    for (; j < n; j++) y[j] = s[j] * x[j];
}

SFT_TARGET_AVX2 static void vaxpby_avx2(float *y, const float *a, const float *x, const float *b,
                                        const float *z, int64_t n) {
    int64_t j = 0;
    // 8 floats per step
    for (; j + 8 <= n; j += 8) {
        __m256 t = _mm256_mul_ps(_mm256_loadu_ps(b + j), _mm256_loadu_ps(z + j));
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(x + j), t));
    }
    // tail
    for (; j < n; j++) y[j] = a[j] * x[j] + b[j] * z[j];
}

SFT_TARGET_AVX2 static void row_ba_avx2(float *t, const float *b, const float *A, int64_t r, int64_t n) {
    int64_t j = 0;
    // 16 columns at a time, all r rows of A accumulated in registers
    for (; j + 16 <= n; j += 16) {
        __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
        for (int64_t k = 0; k < r; k++) {
            __m256 bk = _mm256_set1_ps(b[k]);
            t0 = _mm256_fmadd_ps(bk, _mm256_loadu_ps(A + k * n + j), t0);
            t1 = _mm256_fmadd_ps(bk, _mm256_loadu_ps(A + k * n + j + 8), t1);
        }
        _mm256_storeu_ps(t + j, t0);
        _mm256_storeu_ps(t + j + 8, t1);
    }
    // tail columns
    for (; j < n; j++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < r; k++) acc += b[k] * A[k * n + j];
        t[j] = acc;
    }
}

/* all-ones lanes where m[j..j+8) != 0, zero lanes elsewhere */
SFT_TARGET_AVX2 static inline __m256 mask8(const uint8_t *m) {
    __m256i mi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)m));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(mi, _mm256_setzero_si256()));
}

SFT_TARGET_AVX2 static double masked_sumsq_avx2(const float *w, const uint8_t *m, const float *t, float s,
                                                int64_t n) {
    __m256 vs = _mm256_set1_ps(s);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t j = 0;
    // 8 columns per step: W' = W + (s * mask) * t, squared in double
    for (; j + 8 <= n; j += 8) {
        __m256 sm = _mm256_and_ps(mask8(m + j), vs);
        __m256 wp = _mm256_fmadd_ps(sm, _mm256_loadu_ps(t + j), _mm256_loadu_ps(w + j));
        __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(wp)),
                d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(wp, 1));
        a0 = _mm256_fmadd_pd(d0, d0, a0);
        a1 = _mm256_fmadd_pd(d1, d1, a1);
    }
    double acc = hsum_pd(_mm256_add_pd(a0, a1));
    // tail
    for (; j < n; j++) {
        float wp = m[j] ? w[j] + s * t[j] : w[j];
        acc += (double)wp * wp;
    }
    return acc;
}

SFT_TARGET_AVX2 static void masked_row_avx2(float *t, const float *w, const uint8_t *m, float s, int64_t n) {
    __m256 vs = _mm256_set1_ps(s);
    int64_t j = 0;
    // 8 columns per step: mask * (W + s * t)
    for (; j + 8 <= n; j += 8) {
        __m256 wp = _mm256_fmadd_ps(vs, _mm256_loadu_ps(t + j), _mm256_loadu_ps(w + j));
        _mm256_storeu_ps(t + j, _mm256_and_ps(mask8(m + j), wp));
    }
    // tail
    for (; j < n; j++) t[j] = m[j] ? w[j] + s * t[j] : 0.0f;
}

SFT_TARGET_AVX2 static float dot_avx2(const float *x, const float *y, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    // 16 floats per step
    for (; j + 16 <= n; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(y + j + 8), a1);
    }
    float acc = hsum_ps(_mm256_add_ps(a0, a1));
    // tail
    for (; j < n; j++) acc += x[j] * y[j];
    return acc;
}

SFT_TARGET_AVX2 static void axpy_avx2(float *y, float a, const float *x, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t j = 0;
    // 8 floats per step
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
    // tail
    for (; j < n; j++) y[j] += a * x[j];
}

/* rowgrad with four adapter rows per sweep over t: t is loaded once for 4 dots and 4 axpys. */
SFT_TARGET_AVX2 static void rowgrad_avx2(float *db, float *pa, const float *t, const float *A, const float *b,
                                         float sa, int64_t r, int64_t n) {
    int64_t k = 0;
    // groups of four adapter rows
    for (; k + 4 <= r; k += 4) {
        const float *a0 = A + k * n, *a1 = a0 + n, *a2 = a1 + n, *a3 = a2 + n;
        float *p0 = pa + k * n, *p1 = p0 + n, *p2 = p1 + n, *p3 = p2 + n;
        __m256 c0 = _mm256_set1_ps(sa * b[k]), c1 = _mm256_set1_ps(sa * b[k + 1]);
        __m256 c2 = _mm256_set1_ps(sa * b[k + 2]), c3 = _mm256_set1_ps(sa * b[k + 3]);
        __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps(), d2 = _mm256_setzero_ps(),
               d3 = _mm256_setzero_ps();
        int64_t j = 0;
        // 8 columns per step: 4 dot accumulators, 4 partial-row updates
        for (; j + 8 <= n; j += 8) {
            __m256 tj = _mm256_loadu_ps(t + j);
            d0 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(a0 + j), d0);
            d1 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(a1 + j), d1);
            d2 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(a2 + j), d2);
            d3 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(a3 + j), d3);
            _mm256_storeu_ps(p0 + j, _mm256_fmadd_ps(c0, tj, _mm256_loadu_ps(p0 + j)));
            _mm256_storeu_ps(p1 + j, _mm256_fmadd_ps(c1, tj, _mm256_loadu_ps(p1 + j)));
            _mm256_storeu_ps(p2 + j, _mm256_fmadd_ps(c2, tj, _mm256_loadu_ps(p2 + j)));
            _mm256_storeu_ps(p3 + j, _mm256_fmadd_ps(c3, tj, _mm256_loadu_ps(p3 + j)));
        }
        float e0 = hsum_ps(d0), e1 = hsum_ps(d1), e2 = hsum_ps(d2), e3 = hsum_ps(d3);
        // tail columns
        for (; j < n; j++) {
            e0 += t[j] * a0[j], e1 += t[j] * a1[j], e2 += t[j] * a2[j], e3 += t[j] * a3[j];
            p0[j] += sa * b[k] * t[j], p1[j] += sa * b[k + 1] * t[j];
            p2[j] += sa * b[k + 2] * t[j], p3[j] += sa * b[k + 3] * t[j];
        }
        db[k] += sa * e0, db[k + 1] += sa * e1, db[k + 2] += sa * e2, db[k + 3] += sa * e3;
    }
    // remaining adapter rows one at a time
    for (; k < r; k++) {
        db[k] += sa * dot_avx2(t, A + k * n, n);
        axpy_avx2(pa + k * n, sa * b[k], t, n);
    }
}

#endif

#if SFT_X86
/* Streaming (non-temporal) stores for outputs much larger than the caches: the output lines are not
 * read before being written (no read-for-ownership), saving a third of the write traffic. The head is
 * peeled to a 32-byte boundary; sfence orders the stores before the kernel returns. */
#define NT_HEAD(y, j, n, expr) \
    for (; (j) < (n) && ((uintptr_t)((y) + (j)) & 31); (j)++) (y)[j] = (expr)

SFT_TARGET_AVX2 static void scale_nt_avx2(float *y, const float *x, float a, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t j = 0;
    // scalar head to an aligned y
    NT_HEAD(y, j, n, a * x[j]);
    // 8 floats per step, streamed
    for (; j + 8 <= n; j += 8) _mm256_stream_ps(y + j, _mm256_mul_ps(va, _mm256_loadu_ps(x + j)));
    // tail
    for (; j < n; j++) y[j] = a * x[j];
    _mm_sfence();
}

SFT_TARGET_AVX2 static void axpby_nt_avx2(float *y, float a, const float *x, float b, const float *z,
                                          int64_t n) {
    __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    int64_t j = 0;
    // scalar head to an aligned y
    NT_HEAD(y, j, n, a * x[j] + b * z[j]);
    // 8 floats per step, streamed
    for (; j + 8 <= n; j += 8) {
        __m256 t = _mm256_mul_ps(vb, _mm256_loadu_ps(z + j));
        _mm256_stream_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j), t));
    }
    // tail
    for (; j < n; j++) y[j] = a * x[j] + b * z[j];
    _mm_sfence();
}

SFT_TARGET_AVX2 static void vscale_nt_avx2(float *y, const float *x, const float *s, int64_t n) {
    int64_t j = 0;
    // scalar head to an aligned y
    NT_HEAD(y, j, n, s[j] * x[j]);
    // 8 floats per step, streamed
    for (; j + 8 <= n; j += 8)
        _mm256_stream_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), _mm256_loadu_ps(x + j)));
    // tail
    for (; j < n; j++) y[j] = s[j] * x[j];
    _mm_sfence();
}

SFT_TARGET_AVX2 static void vaxpby_nt_avx2(float *y, const float *a, const float *x, const float *b,
                                           const float *z, int64_t n) {
    int64_t j = 0;
    // scalar head to an aligned y
    NT_HEAD(y, j, n, a[j] * x[j] + b[j] * z[j]);
    // 8 floats per step, streamed
    for (; j + 8 <= n; j += 8) {
        __m256 t = _mm256_mul_ps(_mm256_loadu_ps(b + j), _mm256_loadu_ps(z + j));
        _mm256_stream_ps(y + j, _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(x + j), t));
    }
    // tail
    for (; j < n; j++) y[j] = a[j] * x[j] + b[j] * z[j];
    _mm_sfence();
}
#endif

/* The primitives of one SIMD path. */
typedef struct {
    double (*sumsq)(const float *, int64_t);
    void (*dot_sumsq)(const float *, const float *, int64_t, double *, double *);
    void (*scale)(float *, const float *, float, int64_t);
    void (*axpby)(float *, float, const float *, float, const float *, int64_t);
    void (*col_sumsq)(double *, const float *, int64_t);
    void (*col_dot_sumsq)(double *, double *, const float *, const float *, int64_t);
    void (*vscale)(float *, const float *, const float *, int64_t);
    void (*vaxpby)(float *, const float *, const float *, const float *, const float *, int64_t);
    void (*row_ba)(float *, const float *, const float *, int64_t, int64_t);
    double (*masked_sumsq)(const float *, const uint8_t *, const float *, float, int64_t);
    void (*masked_row)(float *, const float *, const uint8_t *, float, int64_t);
    float (*dot)(const float *, const float *, int64_t);
    void (*axpy)(float *, float, const float *, int64_t);
    void (*rowgrad)(float *, float *, const float *, const float *, const float *, float, int64_t, int64_t);
    /* the four output writers again, with streaming stores (portable: the same functions) */
    void (*scale_nt)(float *, const float *, float, int64_t);
    void (*axpby_nt)(float *, float, const float *, float, const float *, int64_t);
    void (*vscale_nt)(float *, const float *, const float *, int64_t);
    void (*vaxpby_nt)(float *, const float *, const float *, const float *, const float *, int64_t);
} wn_ops;

static const wn_ops ops_portable = {
    .sumsq = sumsq_portable,
    .dot_sumsq = dot_sumsq_portable,
    .scale = scale_portable,
    .axpby = axpby_portable,
    .col_sumsq = col_sumsq_portable,
    .col_dot_sumsq = col_dot_sumsq_portable,
    .vscale = vscale_portable,
    .vaxpby = vaxpby_portable,
    .row_ba = row_ba_portable,
    .masked_sumsq = masked_sumsq_portable,
    .masked_row = masked_row_portable,
    .dot = dot_portable,
    .axpy = axpy_portable,
    .rowgrad = rowgrad_portable,
    .scale_nt = scale_portable,
    .axpby_nt = axpby_portable,
    .vscale_nt = vscale_portable,
    .vaxpby_nt = vaxpby_portable,
};
#if SFT_X86
static const wn_ops ops_avx2 = {
    .sumsq = sumsq_avx2,
    .dot_sumsq = dot_sumsq_avx2,
    .scale = scale_avx2,
    .axpby = axpby_avx2,
    .col_sumsq = col_sumsq_avx2,
    .col_dot_sumsq = col_dot_sumsq_avx2,
    .vscale = vscale_avx2,
    .vaxpby = vaxpby_avx2,
    .row_ba = row_ba_avx2,
    .masked_sumsq = masked_sumsq_avx2,
    .masked_row = masked_row_avx2,
    .dot = dot_avx2,
    .axpy = axpy_avx2,
    .rowgrad = rowgrad_avx2,
    .scale_nt = scale_nt_avx2,
    .axpby_nt = axpby_nt_avx2,
    .vscale_nt = vscale_nt_avx2,
    .vaxpby_nt = vaxpby_nt_avx2,
};
#endif

static const wn_ops *select_ops(void) {
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) return &ops_avx2;
#endif
    return &ops_portable;
}

/* Coefficient rows in double for the rare slices whose float32 coefficient would overflow/underflow. */
static void scale_f64(float *y, const float *x, double a, int64_t n) {
    // elementwise in double
    for (int64_t j = 0; j < n; j++) y[j] = (float)(a * x[j]);
}
static void axpby_f64(float *y, double a, const float *x, double b, const float *z, int64_t n) {
    // elementwise in double
    for (int64_t j = 0; j < n; j++) y[j] = (float)(a * x[j] + b * z[j]);
}

/* Forward and backward coefficients of one slice from its sums (zero norm -> all 0). */
static inline double fwd_coef(double ss, double g) {
    double nrm = sqrt(ss);
    return nrm > 0.0 ? g / nrm : 0.0;
}
/* a = g / n, b = -g * grad_g / n^2 with grad_g = dot / n. */
static inline void bwd_coef(double ss, double dot, double g, double *a, double *b, double *gg) {
    double nrm = sqrt(ss);
    if (nrm > 0.0) {
        *gg = dot / nrm;
        *a = g / nrm;
        *b = -(*a) * (*gg) / nrm;
    } else {
        *gg = 0.0, *a = 0.0, *b = 0.0;
    }
}

/* Sums of squares (and optionally dots with a) of every column of v, by blocks of columns. */
static void col_sums(double *sacc, double *dacc, const float *a, const float *v, int64_t R, int64_t C,
                     const wn_ops *op, int nthreads) {
    int64_t nblocks = (C + WN_COLBLOCK - 1) / WN_COLBLOCK;
    // one task per block of columns: each block sweeps all rows in order
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t bl = 0; bl < nblocks; bl++) {
        int64_t j0 = bl * WN_COLBLOCK, nc = SFT_MIN(WN_COLBLOCK, C - j0);
        memset(sacc + j0, 0, sizeof(double) * (size_t)nc);
        if (dacc != NULL) memset(dacc + j0, 0, sizeof(double) * (size_t)nc);
        for (int64_t i = 0; i < R; i++) {
            if (dacc != NULL)
                op->col_dot_sumsq(dacc + j0, sacc + j0, a + i * C + j0, v + i * C + j0, nc);
            else
                op->col_sumsq(sacc + j0, v + i * C + j0, nc);
        }
    }
}

/* Sum of squares (and optionally dot with a) over the flattened tensor, by fixed chunks summed in order. */
static int all_sums(double *ss, double *dot, const float *a, const float *v, int64_t n, const wn_ops *op,
                    int nthreads) {
    int64_t nchunks = (n + WN_CHUNK - 1) / WN_CHUNK;
    double *part = (double *)sft_scratch_alloc(sizeof(double) * 2 * (size_t)SFT_MAX(nchunks, 1));
    if (part == NULL) return -1;
    // partial sums per chunk
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t j0 = c * WN_CHUNK, nc = SFT_MIN(WN_CHUNK, n - j0);
        if (dot != NULL)
            op->dot_sumsq(a + j0, v + j0, nc, &part[2 * c], &part[2 * c + 1]);
        else
            part[2 * c + 1] = op->sumsq(v + j0, nc);
    }
    // chunks summed in order
    double s = 0.0, d = 0.0;
    for (int64_t c = 0; c < nchunks; c++) {
        s += part[2 * c + 1];
        if (dot != NULL) d += part[2 * c];
    }
    *ss = s;
    if (dot != NULL) *dot = d;
    sft_scratch_free(part);
    return 0;
}

/* ---- weight norm: norms -------------------------------------------------------------------- */

int weightnorm_norms(float *norms, const float *v, int64_t R, int64_t C, int dim) {
    const wn_ops *op = select_ops();
    int nthreads = wn_threads(R * C);
    if (dim == WN_DIM_ROWS) {
        // one norm per row
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t i = 0; i < R; i++) norms[i] = (float)sqrt(op->sumsq(v + i * C, C));
        return 0;
    }
    if (dim == WN_DIM_COLS) {
        double *ss = (double *)sft_scratch_alloc(sizeof(double) * (size_t)SFT_MAX(C, 1));
        if (ss == NULL) return -1;
        col_sums(ss, NULL, NULL, v, R, C, op, nthreads);
        // one norm per column
        for (int64_t j = 0; j < C; j++) norms[j] = (float)sqrt(ss[j]);
        sft_scratch_free(ss);
        return 0;
    }
    double ss;
    if (all_sums(&ss, NULL, NULL, v, R * C, op, nthreads) != 0) return -1;
    norms[0] = (float)sqrt(ss);
    return 0;
}

/* ---- weight norm: forward ------------------------------------------------------------------- */

/* Naive reference: plain loops, double accumulation and double arithmetic. */
void weightnorm_forward_naive(float *w, const float *v, const float *g, int64_t R, int64_t C, int dim) {
    int64_t K = weightnorm_num_norms(R, C, dim);
    // one slice k at a time
    for (int64_t k = 0; k < K; k++) {
        double ss = 0.0;
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) {
                int in = dim == WN_DIM_ROWS ? i == k : dim == WN_DIM_COLS ? j == k : 1;
                if (in) ss += (double)v[i * C + j] * v[i * C + j];
            }
        double a = fwd_coef(ss, g[k]);
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) {
                int in = dim == WN_DIM_ROWS ? i == k : dim == WN_DIM_COLS ? j == k : 1;
                if (in) w[i * C + j] = (float)(a * v[i * C + j]);
            }
    }
}

int weightnorm_forward(float *w, const float *v, const float *g, int64_t R, int64_t C, int dim) {
    const wn_ops *op = select_ops();
    int nthreads = wn_threads(R * C), stream = R * C >= WN_STREAM_MIN;
    void (*scale)(float *, const float *, float, int64_t) = stream ? op->scale_nt : op->scale;
    void (*vscale)(float *, const float *, const float *, int64_t) = stream ? op->vscale_nt : op->vscale;
    if (dim == WN_DIM_ROWS) {
        // each row: norm in double, then scale (the row is read again from cache)
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t i = 0; i < R; i++) {
            double a = fwd_coef(op->sumsq(v + i * C, C), g[i]);
            if (fits_f32(a))
                scale(w + i * C, v + i * C, (float)a, C);
            else
                scale_f64(w + i * C, v + i * C, a, C);
        }
        return 0;
    }
    if (dim == WN_DIM_COLS) {
        double *ss = (double *)sft_scratch_alloc(sizeof(double) * (size_t)SFT_MAX(C, 1));
        float *a32 = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(C, 1));
        if (ss == NULL || a32 == NULL) {
            sft_scratch_free(ss);
            sft_scratch_free(a32);
            return -1;
        }
        col_sums(ss, NULL, NULL, v, R, C, op, nthreads);
        // per-column coefficients; ss[] is reused to hold them in double
        int all_fit = 1;
        for (int64_t j = 0; j < C; j++) {
            ss[j] = fwd_coef(ss[j], g[j]);
            a32[j] = (float)ss[j];
            all_fit &= fits_f32(ss[j]);
        }
        // scale every row by the column coefficients
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t i = 0; i < R; i++) {
            if (all_fit) {
                vscale(w + i * C, v + i * C, a32, C);
            } else {
                for (int64_t j = 0; j < C; j++) w[i * C + j] = (float)(ss[j] * v[i * C + j]);
            }
        }
        sft_scratch_free(ss);
        sft_scratch_free(a32);
        return 0;
    }
    // dim = all: one norm, then one scale over the flattened tensor, by chunks
    double ss;
    int64_t n = R * C, nchunks = (n + WN_CHUNK - 1) / WN_CHUNK;
    if (all_sums(&ss, NULL, NULL, v, n, op, nthreads) != 0) return -1;
    double a = fwd_coef(ss, g[0]);
    int fit = fits_f32(a);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t j0 = c * WN_CHUNK, nc = SFT_MIN(WN_CHUNK, n - j0);
        if (fit)
            scale(w + j0, v + j0, (float)a, nc);
        else
            scale_f64(w + j0, v + j0, a, nc);
    }
    return 0;
}

/* ---- weight norm: backward ------------------------------------------------------------------ */

/* Naive reference: plain loops, double accumulation and double arithmetic. */
void weightnorm_backward_naive(float *grad_v, float *grad_g, const float *grad_w, const float *v,
                               const float *g, int64_t R, int64_t C, int dim) {
    int64_t K = weightnorm_num_norms(R, C, dim);
    // one slice k at a time
    for (int64_t k = 0; k < K; k++) {
        double ss = 0.0, dot = 0.0;
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) {
                int in = dim == WN_DIM_ROWS ? i == k : dim == WN_DIM_COLS ? j == k : 1;
                if (in) {
                    ss += (double)v[i * C + j] * v[i * C + j];
                    dot += (double)grad_w[i * C + j] * v[i * C + j];
                }
            }
        double a, b, gg;
        bwd_coef(ss, dot, g[k], &a, &b, &gg);
        grad_g[k] = (float)gg;
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) {
                int in = dim == WN_DIM_ROWS ? i == k : dim == WN_DIM_COLS ? j == k : 1;
                if (in) grad_v[i * C + j] = (float)(a * grad_w[i * C + j] + b * v[i * C + j]);
            }
    }
}

int weightnorm_backward(float *grad_v, float *grad_g, const float *grad_w, const float *v, const float *g,
                        int64_t R, int64_t C, int dim) {
    const wn_ops *op = select_ops();
    int nthreads = wn_threads(R * C), stream = R * C >= WN_STREAM_MIN;
    void (*axpby)(float *, float, const float *, float, const float *, int64_t) =
        stream ? op->axpby_nt : op->axpby;
    void (*vaxpby)(float *, const float *, const float *, const float *, const float *, int64_t) =
        stream ? op->vaxpby_nt : op->vaxpby;
    if (dim == WN_DIM_ROWS) {
        // each row: <grad_w, v> and ||v||^2 in one pass, then grad_v (rows read again from cache)
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t i = 0; i < R; i++) {
            double dot, ss, a, b, gg;
            op->dot_sumsq(grad_w + i * C, v + i * C, C, &dot, &ss);
            bwd_coef(ss, dot, g[i], &a, &b, &gg);
            grad_g[i] = (float)gg;
            if (fits_f32(a) && fits_f32(b))
                axpby(grad_v + i * C, (float)a, grad_w + i * C, (float)b, v + i * C, C);
            else
                axpby_f64(grad_v + i * C, a, grad_w + i * C, b, v + i * C, C);
        }
        return 0;
    }
    if (dim == WN_DIM_COLS) {
        double *ss = (double *)sft_scratch_alloc(sizeof(double) * 2 * (size_t)SFT_MAX(C, 1));
        float *c32 = (float *)sft_scratch_alloc(sizeof(float) * 2 * (size_t)SFT_MAX(C, 1));
        if (ss == NULL || c32 == NULL) {
            sft_scratch_free(ss);
            sft_scratch_free(c32);
            return -1;
        }
        double *dot = ss + C;
        col_sums(ss, dot, grad_w, v, R, C, op, nthreads);
        // per-column coefficients, kept in double (ss <- a, dot <- b) and in float
        int all_fit = 1;
        float *a32 = c32, *b32 = c32 + C;
        for (int64_t j = 0; j < C; j++) {
            double a, b, gg;
            bwd_coef(ss[j], dot[j], g[j], &a, &b, &gg);
            grad_g[j] = (float)gg;
            ss[j] = a, dot[j] = b;
            a32[j] = (float)a, b32[j] = (float)b;
            all_fit &= fits_f32(a) && fits_f32(b);
        }
        // grad_v row by row
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t i = 0; i < R; i++) {
            if (all_fit) {
                vaxpby(grad_v + i * C, a32, grad_w + i * C, b32, v + i * C, C);
            } else {
                for (int64_t j = 0; j < C; j++)
                    grad_v[i * C + j] = (float)(ss[j] * grad_w[i * C + j] + dot[j] * v[i * C + j]);
            }
        }
        sft_scratch_free(ss);
        sft_scratch_free(c32);
        return 0;
    }
    // dim = all: one dot and one norm, then grad_v over the flattened tensor, by chunks
    double ss, dot, a, b, gg;
    int64_t n = R * C, nchunks = (n + WN_CHUNK - 1) / WN_CHUNK;
    if (all_sums(&ss, &dot, grad_w, v, n, op, nthreads) != 0) return -1;
    bwd_coef(ss, dot, g[0], &a, &b, &gg);
    grad_g[0] = (float)gg;
    int fit = fits_f32(a) && fits_f32(b);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t j0 = c * WN_CHUNK, nc = SFT_MIN(WN_CHUNK, n - j0);
        if (fit)
            axpby(grad_v + j0, (float)a, grad_w + j0, (float)b, v + j0, nc);
        else
            axpby_f64(grad_v + j0, a, grad_w + j0, b, v + j0, nc);
    }
    return 0;
}

/* ---- sparse DoRA: row norms of W' = W + s (BA) (.) M and their backward --------------------- */

/* 1 when b[0..r) are all zero (B's row is still at its init: W' row = W row). */
static inline int all_zero(const float *b, int64_t r) {
    for (int64_t k = 0; k < r; k++)
        if (b[k] != 0.0f) return 0;
    return 1;
}

void dora_rownorm_forward_naive(float *n, const float *W, const uint8_t *M, const float *A, const float *B,
                                float s, int64_t out, int64_t in, int64_t r) {
    // each row: sum over columns of (W + s * M * (BA))^2 in double
    for (int64_t i = 0; i < out; i++) {
        double ss = 0.0;
        for (int64_t j = 0; j < in; j++) {
            double ba = 0.0;
            for (int64_t k = 0; k < r; k++) ba += (double)B[i * r + k] * A[k * in + j];
            double wp = W[i * in + j] + (M[i * in + j] && s != 0.0f ? (double)s * ba : 0.0);
            ss += wp * wp;
        }
        n[i] = (float)sqrt(ss);
    }
}

int dora_rownorm_forward(float *n, const float *W, const uint8_t *M, const float *A, const float *B, float s,
                         int64_t out, int64_t in, int64_t r) {
    if (out <= 0) return 0;
    if (in <= 0) {
        memset(n, 0, sizeof(float) * (size_t)out);
        return 0;
    }
    const wn_ops *op = select_ops();
    int nthreads = wn_threads(out * in * (r + 1));
    float *tmp = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * (size_t)SFT_MAX(in, 1));
    if (tmp == NULL) return -1;
#pragma omp parallel num_threads(nthreads)
    {
        float *t = tmp + (int64_t)sft_thread_num() * in;
        // each row: t = B_i A, then ||W_i + s * t (.) M_i|| in double
#pragma omp for schedule(static)
        for (int64_t i = 0; i < out; i++) {
            const float *wi = W + i * in;
            if (s == 0.0f || all_zero(B + i * r, r)) { /* scale 0: the adapter is off, W' = W */
                n[i] = (float)sqrt(op->sumsq(wi, in));
            } else {
                op->row_ba(t, B + i * r, A, r, in);
                n[i] = (float)sqrt(op->masked_sumsq(wi, M + i * in, t, s, in));
            }
        }
    }
    sft_scratch_free(tmp);
    return 0;
}

void dora_rownorm_backward_naive(float *dA, float *dB, const float *grad_n, const float *n, const float *W,
                                 const uint8_t *M, const float *A, const float *B, float s, int64_t out,
                                 int64_t in, int64_t r) {
    if (s == 0.0f) return; /* the adapter is off: its gradients are exactly 0 */
    // each row i, column j: g_ij = alpha_i * M_ij * W'_ij pushed into dB[i, :] and dA[:, j]
    for (int64_t i = 0; i < out; i++) {
        double alpha = n[i] > 0.0f ? (double)grad_n[i] / n[i] : 0.0;
        for (int64_t j = 0; j < in; j++) {
            if (!M[i * in + j]) continue;
            double ba = 0.0;
            for (int64_t k = 0; k < r; k++) ba += (double)B[i * r + k] * A[k * in + j];
            double gij = s * alpha * (W[i * in + j] + (double)s * ba);
            for (int64_t k = 0; k < r; k++) {
                dB[i * r + k] += (float)(gij * A[k * in + j]);
                dA[k * in + j] += (float)(gij * B[i * r + k]);
            }
        }
    }
}

int dora_rownorm_backward(float *dA, float *dB, const float *grad_n, const float *n, const float *W,
                          const uint8_t *M, const float *A, const float *B, float s, int64_t out, int64_t in,
                          int64_t r) {
    // dA, dB arrive zeroed; scale 0 turns the adapter off (gradients exactly 0)
    if (out <= 0 || in <= 0 || r <= 0 || s == 0.0f) return 0;
    const wn_ops *op = select_ops();
    int nthreads = wn_threads(out * in * (r + 1));
    size_t rin = (size_t)r * (size_t)in;
    float *tmp = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * (size_t)SFT_MAX(in, 1));
    float *part = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * SFT_MAX(rin, 1));
    if (tmp == NULL || part == NULL) {
        sft_scratch_free(tmp);
        sft_scratch_free(part);
        return -1;
    }
    int used = 1;
#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num();
#pragma omp single
        used = sft_team_size();
        float *t = tmp + (int64_t)tid * in, *pa = part + (size_t)tid * rin;
        memset(pa, 0, sizeof(float) * rin);
        // each row: the masked row of W', then its share of dB (own row) and dA (thread partial)
#pragma omp for schedule(static)
        for (int64_t i = 0; i < out; i++) {
            float alpha = n[i] > 0.0f ? grad_n[i] / n[i] : 0.0f;
            if (alpha == 0.0f) continue;
            const float *bi = B + i * r;
            if (all_zero(bi, r))
                memset(t, 0, sizeof(float) * (size_t)in);
            else
                op->row_ba(t, bi, A, r, in);
            op->masked_row(t, W + i * in, M + i * in, s, in);
            op->rowgrad(dB + i * r, pa, t, A, bi, s * alpha, r, in);
        }
        // dA += the thread partials, summed in thread order (rows of dA split among threads)
#pragma omp for schedule(static)
        for (int64_t k = 0; k < r; k++) {
            for (int p = 0; p < used; p++) op->axpy(dA + k * in, 1.0f, part + (size_t)p * rin + k * in, in);
        }
    }
    sft_scratch_free(tmp);
    sft_scratch_free(part);
    return 0;
}
