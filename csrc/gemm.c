/* gemm.c: packed, blocked SGEMM in the BLIS style.
 * Loops (outer to inner): jc over NC columns -> pc over KC depth -> pack B block (shared)
 * -> ic over MC rows -> pack A block (per thread) -> jr over NR panels -> ir over MR rows
 * -> micro-kernel (MR x NR register tile, accumulate over kc). */
#include "gemm.h"

#include <string.h>

#include "common.h"

#if SFT_X86
#include <immintrin.h>
#endif

/* ---- packing ---------------------------------------------------------------------------- */

/* A block op(A)[i0 : i0+mc, k0 : k0+kc] -> micro-panels of MR rows, k-major:
 * dst[p*kc*MR + kk*MR + ii] = op(A)[i0+p*MR+ii][k0+kk], zero-padded past mc. */
static void pack_a(float *dst, const float *A, int64_t rsa, int64_t csa, int64_t i0, int64_t mc, int64_t k0,
                   int64_t kc) {
    // loop over micro-panels of MR rows
    for (int64_t p = 0; p < mc; p += GEMM_MR) {
        int64_t mr = SFT_MIN(GEMM_MR, mc - p);
        float *d = dst + p * kc;
        const float *a = A + (i0 + p) * rsa + k0 * csa;
        if (csa == 1) {
            // rows contiguous in k: read row by row, write strided by MR
            for (int64_t ii = 0; ii < mr; ii++) {
                const float *row = a + ii * rsa;
                for (int64_t kk = 0; kk < kc; kk++) d[kk * GEMM_MR + ii] = row[kk];
            }
        } else {
            // columns contiguous (or general strides): walk k outer
            for (int64_t kk = 0; kk < kc; kk++)
                for (int64_t ii = 0; ii < mr; ii++) d[kk * GEMM_MR + ii] = a[ii * rsa + kk * csa];
        }
        // zero the padding rows
        for (int64_t ii = mr; ii < GEMM_MR; ii++)
            for (int64_t kk = 0; kk < kc; kk++) d[kk * GEMM_MR + ii] = 0.0f;
    }
}

/* Strided op(B) source for the plain sgemm. */
typedef struct {
    const float *B;
    int64_t rsb, csb;
} strided_b;

static void pack_b_strided(float *dst, const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
    const strided_b *s = (const strided_b *)ctx;
    const float *b = s->B + k0 * s->rsb + j0 * s->csb;
    if (s->csb == 1) {
        // rows of op(B) contiguous: copy nc floats per k
        for (int64_t kk = 0; kk < kc; kk++) {
            const float *row = b + kk * s->rsb;
            float *d = dst + kk * GEMM_NR;
            for (int64_t jj = 0; jj < nc; jj++) d[jj] = row[jj];
            for (int64_t jj = nc; jj < GEMM_NR; jj++) d[jj] = 0.0f;
        }
    } else {
        // columns of op(B) contiguous (B transposed): read each column along k
        for (int64_t jj = 0; jj < nc; jj++) {
            const float *col = b + jj * s->csb;
            for (int64_t kk = 0; kk < kc; kk++) dst[kk * GEMM_NR + jj] = col[kk * s->rsb];
        }
        for (int64_t kk = 0; kk < kc; kk++)
            for (int64_t jj = nc; jj < GEMM_NR; jj++) dst[kk * GEMM_NR + jj] = 0.0f;
    }
}

/* ---- micro-kernels ----------------------------------------------------------------------- */

/* Writes the MR x NR tile acc into C (m x n valid): C = acc (first, beta 0), C = beta*C + acc
 * (first), or C += acc (later depth blocks). */
static inline void store_tile(float *C, int64_t ldc, const float *acc, int m, int n, int first, float beta) {
    // loop over valid rows, then columns
    for (int i = 0; i < m; i++) {
        float *c = C + i * ldc;
        const float *t = acc + i * GEMM_NR;
        if (!first)
            for (int j = 0; j < n; j++) c[j] += t[j];
        else if (beta == 0.0f)
            for (int j = 0; j < n; j++) c[j] = t[j];
        else
            for (int j = 0; j < n; j++) c[j] = beta * c[j] + t[j];
    }
}

/* Portable micro-kernel: acc (MR, NR) = a (kc, MR)^T-packed @ b (kc, NR)-packed. */
static void ukernel_portable(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int m, int n,
                             int first, float beta) {
    float acc[GEMM_MR * GEMM_NR];
    memset(acc, 0, sizeof acc);
    // accumulate rank-1 updates over the depth
    for (int64_t k = 0; k < kc; k++) {
        const float *ak = a + k * GEMM_MR;
        const float *bk = b + k * GEMM_NR;
        for (int i = 0; i < GEMM_MR; i++) {
            float ai = ak[i];
            for (int j = 0; j < GEMM_NR; j++) acc[i * GEMM_NR + j] += ai * bk[j];
        }
    }
    store_tile(C, ldc, acc, m, n, first, beta);
}

#if SFT_X86
/* AVX2/FMA micro-kernel: 12 ymm accumulators hold the 6 x 16 tile. */
SFT_TARGET_AVX2 static void ukernel_avx2(int64_t kc, const float *a, const float *b, float *C, int64_t ldc,
                                         int m, int n, int first, float beta) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    // accumulate rank-1 updates over the depth
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b);
        __m256 b1 = _mm256_load_ps(b + 8);
        __m256 ai;
        ai = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(ai, b0, c00);
        c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(ai, b0, c10);
        c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(ai, b0, c20);
        c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(ai, b0, c30);
        c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(ai, b0, c40);
        c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(ai, b0, c50);
        c51 = _mm256_fmadd_ps(ai, b1, c51);
        a += GEMM_MR;
        b += GEMM_NR;
    }
    if (m == GEMM_MR && n == GEMM_NR) {
        // full tile: update C in registers
        __m256 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
        __m256 vb = _mm256_set1_ps(beta);
        for (int i = 0; i < GEMM_MR; i++) {
            float *c = C + i * ldc;
            __m256 lo = acc[2 * i], hi = acc[2 * i + 1];
            if (!first) {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(c));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(c + 8));
            } else if (beta != 0.0f) {
                lo = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), lo);
                hi = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), hi);
            }
            _mm256_storeu_ps(c, lo);
            _mm256_storeu_ps(c + 8, hi);
        }
    } else {
        // edge tile: spill to a buffer, copy the valid part
        float acc[GEMM_MR * GEMM_NR] __attribute__((aligned(32)));
        _mm256_store_ps(acc + 0, c00), _mm256_store_ps(acc + 8, c01);
        _mm256_store_ps(acc + 16, c10), _mm256_store_ps(acc + 24, c11);
        _mm256_store_ps(acc + 32, c20), _mm256_store_ps(acc + 40, c21);
        _mm256_store_ps(acc + 48, c30), _mm256_store_ps(acc + 56, c31);
        _mm256_store_ps(acc + 64, c40), _mm256_store_ps(acc + 72, c41);
        _mm256_store_ps(acc + 80, c50), _mm256_store_ps(acc + 88, c51);
        store_tile(C, ldc, acc, m, n, first, beta);
    }
}
#endif

typedef void (*ukernel_fn)(int64_t, const float *, const float *, float *, int64_t, int, int, int, float);

static ukernel_fn select_ukernel(void) {
#if SFT_X86
    if (sft_simd_path == SFT_SIMD_AVX2) return ukernel_avx2;
#endif
    return ukernel_portable;
}

/* ---- driver ------------------------------------------------------------------------------ */

int64_t sgemm_scratch_bytes(int nthreads) {
    return (int64_t)sizeof(float) * ((int64_t)GEMM_KC * GEMM_NC + (int64_t)nthreads * GEMM_MC * GEMM_KC);
}

/* One mc x nc block of C from a packed A block (mc x kc) and packed B panels [p_lo, p_hi). */
static void macro_kernel(ukernel_fn uk, float *C, int64_t ldc, const float *pa, const float *pb, int64_t mc,
                         int64_t nc, int64_t kc, int64_t p_lo, int64_t p_hi, int first, float beta) {
    // loop over B micro-panels (columns), then A micro-panels (rows)
    for (int64_t p = p_lo; p < p_hi; p++) {
        int64_t j = p * GEMM_NR;
        int n = (int)SFT_MIN(GEMM_NR, nc - j);
        for (int64_t i = 0; i < mc; i += GEMM_MR) {
            int m = (int)SFT_MIN(GEMM_MR, mc - i);
            uk(kc, pa + i * kc, pb + p * kc * GEMM_NR, C + i * ldc + j, ldc, m, n, first, beta);
        }
    }
}

int sgemm_packb(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, gemm_pack_b_fn pack_b,
                const void *ctx, int64_t M, int64_t N, int64_t K, float beta) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        // empty depth: C = beta * C
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return 0;
    }
    int nthreads = sft_get_num_threads();
    float *pb = (float *)sft_scratch_alloc(sizeof(float) * GEMM_KC * GEMM_NC);
    float *pa_all = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * GEMM_MC * GEMM_KC);
    if (pb == NULL || pa_all == NULL) {
        sft_scratch_free(pb);
        sft_scratch_free(pa_all);
        return -1;
    }
    ukernel_fn uk = select_ukernel();
    int64_t n_ic = (M + GEMM_MC - 1) / GEMM_MC;

#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num();
        int nth = omp_get_num_threads();
#else
        int tid = 0, nth = 1;
#endif
        float *pa = pa_all + (int64_t)tid * GEMM_MC * GEMM_KC;
        // loop over column blocks of C
        for (int64_t jc = 0; jc < N; jc += GEMM_NC) {
            int64_t nc = SFT_MIN(GEMM_NC, N - jc);
            int64_t n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
            // loop over depth blocks
            for (int64_t pc = 0; pc < K; pc += GEMM_KC) {
                int64_t kc = SFT_MIN(GEMM_KC, K - pc);
                int first = pc == 0;
                // pack the B block, panels shared out among threads
#pragma omp for schedule(static)
                for (int64_t p = 0; p < n_panels; p++) {
                    int64_t j = p * GEMM_NR;
                    pack_b(pb + p * kc * GEMM_NR, ctx, pc, kc, jc + j, SFT_MIN(GEMM_NR, nc - j));
                }
                if (n_ic >= nth) {
                    // enough row blocks: each thread packs its own A blocks and sweeps all panels
#pragma omp for schedule(static)
                    for (int64_t ib = 0; ib < n_ic; ib++) {
                        int64_t ic = ib * GEMM_MC;
                        int64_t mc = SFT_MIN(GEMM_MC, M - ic);
                        pack_a(pa, A, rsa, csa, ic, mc, pc, kc);
                        macro_kernel(uk, C + ic * ldc + jc, ldc, pa, pb, mc, nc, kc, 0, n_panels, first,
                                     beta);
                    }
                } else {
                    // few rows: every thread packs the (small) A block, panels are shared out
                    for (int64_t ic = 0; ic < M; ic += GEMM_MC) {
                        int64_t mc = SFT_MIN(GEMM_MC, M - ic);
                        pack_a(pa, A, rsa, csa, ic, mc, pc, kc);
                        int64_t per = (n_panels + nth - 1) / nth;
                        int64_t lo = SFT_MIN(n_panels, tid * per), hi = SFT_MIN(n_panels, lo + per);
                        macro_kernel(uk, C + ic * ldc + jc, ldc, pa, pb, mc, nc, kc, lo, hi, first, beta);
                    }
#pragma omp barrier
                }
            }
        }
    }
    sft_scratch_free(pa_all);
    sft_scratch_free(pb);
    return 0;
}

int sgemm(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
          int64_t csb, int64_t M, int64_t N, int64_t K, float beta) {
    strided_b s = {B, rsb, csb};
    return sgemm_packb(C, ldc, A, rsa, csa, pack_b_strided, &s, M, N, K, beta);
}

void sgemm_naive(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
                 int64_t csb, int64_t M, int64_t N, int64_t K, float beta) {
    // one dot product per output element
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++) acc += A[i * rsa + k * csa] * B[k * rsb + j * csb];
            C[i * ldc + j] = (beta == 0.0f ? 0.0f : beta * C[i * ldc + j]) + acc;
        }
}
