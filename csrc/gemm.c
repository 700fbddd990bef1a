/* gemm.c: packed, blocked SGEMM in the BLIS style.
 *
 * Two drivers share the micro-kernels:
 * - many rows (M > MC): jc over NC columns -> pc over KC depth -> pack the B block (groups of
 *   panels handed out to the threads) -> row blocks of <= MC rows handed out dynamically and
 *   guided (the last ones single micro-tiles, so the threads finish together): pack the A
 *   block, then jr over NR panels -> ir over MR rows -> micro-kernel. Two barriers per (jc, pc):
 *   the B block is complete before use and unused before it is packed again; their waiters
 *   yield the CPU after a short spin.
 * - few rows (M <= MC, e.g. M = r = 16 or one token): the columns are shared out instead, so
 *   every thread is busy even for M = 1, without any barrier: each thread packs the small A
 *   block of every depth block itself, then its own B panels chunk by chunk.
 * - streamed rows (M <= 4 with a strided op(B) of contiguous rows): memory-bound, so B is not
 *   packed; each thread streams the rows of its columns, four at a time.
 * A strided op(B) with contiguous rows is packed row by row (streaming reads), a transposed one
 * with 8 x 8 transposes, a callback one micro-panel at a time. Micro-tiles are MR x 16 with
 * MR = 6 on the AVX2 and portable paths (12 ymm accumulators) and MR = 24 on the AVX-512 path
 * (24 zmm accumulators; the B micro-panels are the same, so pack-B callbacks serve every path).
 * Micro-kernels are specialised on the number of valid rows (1..MR) so thin problems do no wasted
 * FMAs; edge columns use masked loads and stores. The two tile drivers compute every C element
 * identically (one thread, the same micro-tile rows, the same KC blocks in order); the streamed
 * one is chosen by M and the B source only. So results are identical for any number of threads. */
#include "gemm.h"

#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "common.h"
#include "simd_avx2.h"

#if SFT_X86
#include <immintrin.h>
#endif

/* ---- packing ---------------------------------------------------------------------------- */

/* One micro-panel of op(A) rows i0 .. i0+mr (mr <= MRF), depth k0 .. k0+kc, portable C:
 * d[kk*MRF + ii] = op(A)[i0+ii][k0+kk], zero for ii >= mr. MRF is the micro-tile height of the
 * kernels in use (GEMM_MR, or GEMM_MR_AVX512). */
static inline void pack_a_panel_mr(float *d, const float *a, int64_t rsa, int64_t csa, int64_t mr, int64_t kc,
                                   const int64_t MRF) {
    if (csa == 1) {
        // rows contiguous in k: read row by row, write strided by MRF
        for (int64_t ii = 0; ii < mr; ii++) {
            const float *row = a + ii * rsa;
            for (int64_t kk = 0; kk < kc; kk++) d[kk * MRF + ii] = row[kk];
        }
    } else {
        // columns contiguous (or general strides): walk k outer
        for (int64_t kk = 0; kk < kc; kk++)
            for (int64_t ii = 0; ii < mr; ii++) d[kk * MRF + ii] = a[ii * rsa + kk * csa];
    }
    // zero the padding rows
    for (int64_t ii = mr; ii < MRF; ii++)
        for (int64_t kk = 0; kk < kc; kk++) d[kk * MRF + ii] = 0.0f;
}

static void pack_a_panel_c(float *d, const float *a, int64_t rsa, int64_t csa, int64_t mr, int64_t kc) {
    pack_a_panel_mr(d, a, rsa, csa, mr, kc, GEMM_MR);
}

#if SFT_X86
/* Full micro-panel (mr == MR) of op(A), AVX2: 4 x 4 transposes for rows contiguous in k,
 * 6-float row copies for columns contiguous (rsa == 1). */
SFT_TARGET_AVX2 static void pack_a_panel_avx2(float *d, const float *a, int64_t rsa, int64_t csa, int64_t mr,
                                              int64_t kc) {
    if (mr != GEMM_MR || (csa != 1 && rsa != 1)) {
        pack_a_panel_c(d, a, rsa, csa, mr, kc);
        return;
    }
    int64_t kk = 0;
    if (csa == 1) {
        const float *r0 = a, *r1 = a + rsa, *r2 = a + 2 * rsa, *r3 = a + 3 * rsa, *r4 = a + 4 * rsa,
                    *r5 = a + 5 * rsa;
        // four depth indices per step: transpose rows 0-3, interleave rows 4-5
        for (; kk + 4 <= kc; kk += 4) {
            __m128 x0 = _mm_loadu_ps(r0 + kk), x1 = _mm_loadu_ps(r1 + kk);
            __m128 x2 = _mm_loadu_ps(r2 + kk), x3 = _mm_loadu_ps(r3 + kk);
            __m128 x4 = _mm_loadu_ps(r4 + kk), x5 = _mm_loadu_ps(r5 + kk);
            _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
            __m128 lo = _mm_unpacklo_ps(x4, x5), hi = _mm_unpackhi_ps(x4, x5);
            float *o = d + kk * GEMM_MR;
            _mm_storeu_ps(o + 0, x0);
            _mm_storel_pi((__m64 *)(o + 4), lo);
            _mm_storeu_ps(o + 6, x1);
            _mm_storeh_pi((__m64 *)(o + 10), lo);
            _mm_storeu_ps(o + 12, x2);
            _mm_storel_pi((__m64 *)(o + 16), hi);
            _mm_storeu_ps(o + 18, x3);
            _mm_storeh_pi((__m64 *)(o + 22), hi);
        }
        // remaining depth indices
        for (; kk < kc; kk++)
            for (int ii = 0; ii < GEMM_MR; ii++) d[kk * GEMM_MR + ii] = a[ii * rsa + kk];
    } else {
        // rsa == 1: the MR values of one depth index are contiguous
        for (; kk < kc; kk++) {
            const float *s = a + kk * csa;
            float *o = d + kk * GEMM_MR;
            _mm_storeu_ps(o, _mm_loadu_ps(s));
            _mm_storel_pi((__m64 *)(o + 4), _mm_castsi128_ps(_mm_loadl_epi64((const __m128i_u *)(s + 4))));
        }
    }
}
#endif

typedef void (*pack_a_fn)(float *, const float *, int64_t, int64_t, int64_t, int64_t);

/* A block op(A)[i0 : i0+mc, k0 : k0+kc] -> micro-panels of mr rows (the kernels' MR), k-major:
 * dst[p*kc + kk*mr + ii] = op(A)[i0+p+ii][k0+kk] (p a multiple of MR), zero-padded past mc. */
static void pack_a(pack_a_fn panel, int64_t mr, float *dst, const float *A, int64_t rsa, int64_t csa,
                   int64_t i0, int64_t mc, int64_t k0, int64_t kc) {
    // loop over micro-panels of mr rows
    for (int64_t p = 0; p < mc; p += mr)
        panel(dst + p * kc, A + (i0 + p) * rsa + k0 * csa, rsa, csa, SFT_MIN(mr, mc - p), kc);
}

static void pack_b_strided_c(float *dst, const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
    const gemm_strided_b *s = (const gemm_strided_b *)ctx;
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

#if SFT_X86
/* The strided op(B) packer, AVX2: vector copies of full rows (csb == 1), 8 x 8 transposes of
 * columns contiguous in k (rsb == 1). Edge panels fall back to the portable packer. */
SFT_TARGET_AVX2 static void pack_b_strided_avx2(float *dst, const void *ctx, int64_t k0, int64_t kc,
                                                int64_t j0, int64_t nc) {
    const gemm_strided_b *s = (const gemm_strided_b *)ctx;
    if (nc != GEMM_NR || (s->csb != 1 && s->rsb != 1)) {
        pack_b_strided_c(dst, ctx, k0, kc, j0, nc);
        return;
    }
    const float *b = s->B + k0 * s->rsb + j0 * s->csb;
    if (s->csb == 1) {
        // one 16-float row segment per depth index
        for (int64_t kk = 0; kk < kc; kk++) {
            const float *row = b + kk * s->rsb;
            _mm256_store_ps(dst + kk * GEMM_NR, _mm256_loadu_ps(row));
            _mm256_store_ps(dst + kk * GEMM_NR + 8, _mm256_loadu_ps(row + 8));
        }
        return;
    }
    // rsb == 1: column jj of the panel is b[jj*csb + kk]; 8 depth indices x 2 x 8 columns per step
    const int64_t cs = s->csb;
    int64_t kk = 0;
    for (; kk + 8 <= kc; kk += 8) {
        for (int h = 0; h < 2; h++) {
            __m256 r[8];
            for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(b + (8 * h + q) * cs + kk);
            sft_transpose8_ps(r);
            for (int q = 0; q < 8; q++) _mm256_store_ps(dst + (kk + q) * GEMM_NR + 8 * h, r[q]);
        }
    }
    // remaining depth indices
    for (; kk < kc; kk++)
        for (int jj = 0; jj < GEMM_NR; jj++) dst[kk * GEMM_NR + jj] = b[jj * cs + kk];
}
#endif

/* ---- micro-kernels ----------------------------------------------------------------------- */

/* A micro-kernel: C[0:m, 0:n] (row stride ldc) = alpha * a @ b + (first ? beta * C : C), where a
 * is a packed A micro-panel (kc, MR) and b a packed B micro-panel (kc, NR). first with beta == 0
 * never reads C. */
typedef void (*ukernel_fn)(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int m, int n,
                           int first, float alpha, float beta);

/* Writes the MR x NR tile acc into C (m x n valid). */
static inline void store_tile(float *C, int64_t ldc, const float *acc, int m, int n, int first, float alpha,
                              float beta) {
    // loop over valid rows, then columns
    for (int i = 0; i < m; i++) {
        float *c = C + i * ldc;
        const float *t = acc + i * GEMM_NR;
        if (!first)
            for (int j = 0; j < n; j++) c[j] += alpha * t[j];
        else if (beta == 0.0f)
            for (int j = 0; j < n; j++) c[j] = alpha * t[j];
        else
            for (int j = 0; j < n; j++) c[j] = beta * c[j] + alpha * t[j];
    }
}

/* Portable micro-kernel. With GCC/Clang it uses generic 4-float vectors (SSE2 on baseline
 * x86-64, NEON on ARM): the tile in two 6 x 8 halves, 12 vector accumulators each, which fit the
 * 16 registers of either. Other compilers get the plain loops. Padding rows of a are zero, so all
 * MR rows are computed. */
#if defined(__GNUC__) || defined(__clang__)
typedef float sft_v4 __attribute__((vector_size(16)));

static void ukernel_portable(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int m, int n,
                             int first, float alpha, float beta) {
    float acc[GEMM_MR * GEMM_NR];
    // loop over the two column halves, then rank-1 updates over the depth
    for (int h = 0; h < GEMM_NR; h += 8) {
        sft_v4 t0[GEMM_MR], t1[GEMM_MR];
        for (int i = 0; i < GEMM_MR; i++) t0[i] = t1[i] = (sft_v4){0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t k = 0; k < kc; k++) {
            const float *ak = a + k * GEMM_MR;
            sft_v4 b0, b1;
            memcpy(&b0, b + k * GEMM_NR + h, sizeof b0);
            memcpy(&b1, b + k * GEMM_NR + h + 4, sizeof b1);
            for (int i = 0; i < GEMM_MR; i++) {
                sft_v4 ai = {ak[i], ak[i], ak[i], ak[i]};
                t0[i] += ai * b0;
                t1[i] += ai * b1;
            }
        }
        for (int i = 0; i < GEMM_MR; i++) {
            memcpy(acc + i * GEMM_NR + h, &t0[i], sizeof t0[i]);
            memcpy(acc + i * GEMM_NR + h + 4, &t1[i], sizeof t1[i]);
        }
    }
    store_tile(C, ldc, acc, m, n, first, alpha, beta);
}
#else
static void ukernel_portable(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int m, int n,
                             int first, float alpha, float beta) {
    float acc[GEMM_MR * GEMM_NR];
    memset(acc, 0, sizeof acc);
    // accumulate rank-1 updates over the depth
    for (int64_t k = 0; k < kc; k++) {
        const float *ak = a + k * GEMM_MR;
        const float *bk = b + k * GEMM_NR;
        for (int i = 0; i < GEMM_MR; i++)
            for (int j = 0; j < GEMM_NR; j++) acc[i * GEMM_NR + j] += ak[i] * bk[j];
    }
    store_tile(C, ldc, acc, m, n, first, alpha, beta);
}
#endif

#if SFT_X86
/* One rank-1 update of the 6 x 16 tile in asm: row i of a (byte offset OFF + 4*i) times the B
 * row in ymm0/ymm1, into the accumulators ymm(4+2i) / ymm(5+2i). */
#define SFT_K6(OFF)                           \
    "vbroadcastss " #OFF                      \
    "+0(%[a]), %%ymm2\n\t"                    \
    "vfmadd231ps %%ymm0, %%ymm2, %%ymm4\n\t"  \
    "vfmadd231ps %%ymm1, %%ymm2, %%ymm5\n\t"  \
    "vbroadcastss " #OFF                      \
    "+4(%[a]), %%ymm3\n\t"                    \
    "vfmadd231ps %%ymm0, %%ymm3, %%ymm6\n\t"  \
    "vfmadd231ps %%ymm1, %%ymm3, %%ymm7\n\t"  \
    "vbroadcastss " #OFF                      \
    "+8(%[a]), %%ymm2\n\t"                    \
    "vfmadd231ps %%ymm0, %%ymm2, %%ymm8\n\t"  \
    "vfmadd231ps %%ymm1, %%ymm2, %%ymm9\n\t"  \
    "vbroadcastss " #OFF                      \
    "+12(%[a]), %%ymm3\n\t"                   \
    "vfmadd231ps %%ymm0, %%ymm3, %%ymm10\n\t" \
    "vfmadd231ps %%ymm1, %%ymm3, %%ymm11\n\t" \
    "vbroadcastss " #OFF                      \
    "+16(%[a]), %%ymm2\n\t"                   \
    "vfmadd231ps %%ymm0, %%ymm2, %%ymm12\n\t" \
    "vfmadd231ps %%ymm1, %%ymm2, %%ymm13\n\t" \
    "vbroadcastss " #OFF                      \
    "+20(%[a]), %%ymm3\n\t"                   \
    "vfmadd231ps %%ymm0, %%ymm3, %%ymm14\n\t" \
    "vfmadd231ps %%ymm1, %%ymm3, %%ymm15\n\t"
#define SFT_LOADB "vmovups (%[b]), %%ymm0\n\tvmovups 32(%[b]), %%ymm1\n\tadd %[ldb], %[b]\n\t"
#define SFT_ZERO6                                                                                         \
    "vxorps %%ymm4, %%ymm4, %%ymm4\n\tvxorps %%ymm5, %%ymm5, %%ymm5\n\tvxorps %%ymm6, %%ymm6, %%ymm6\n\t" \
    "vxorps %%ymm7, %%ymm7, %%ymm7\n\tvxorps %%ymm8, %%ymm8, %%ymm8\n\tvxorps %%ymm9, %%ymm9, %%ymm9\n\t" \
    "vxorps %%ymm10, %%ymm10, %%ymm10\n\tvxorps %%ymm11, %%ymm11, %%ymm11\n\t"                            \
    "vxorps %%ymm12, %%ymm12, %%ymm12\n\tvxorps %%ymm13, %%ymm13, %%ymm13\n\t"                            \
    "vxorps %%ymm14, %%ymm14, %%ymm14\n\tvxorps %%ymm15, %%ymm15, %%ymm15\n\t"
/* The tail (rest single updates) and the spill of the 12 accumulators to acc (row i: lo, hi). */
#define SFT_TAIL6 \
    "2:\n\t"                                                                                                     \
    "test %[r], %[r]\n\t"                                                                                        \
    "jz 4f\n"                                                                                                     \
    "3:\n\t" SFT_LOADB SFT_K6(0) "add $24, %[a]\n\t"                                                            \
    "dec %[r]\n\t"                                                                                               \
    "jnz 3b\n"                                                                                                    \
    "4:\n\t"                                                                                                     \
    "vmovaps %%ymm4, 0(%[acc])\n\tvmovaps %%ymm5, 32(%[acc])\n\tvmovaps %%ymm6, 64(%[acc])\n\t"               \
    "vmovaps %%ymm7, 96(%[acc])\n\tvmovaps %%ymm8, 128(%[acc])\n\tvmovaps %%ymm9, 160(%[acc])\n\t"            \
    "vmovaps %%ymm10, 192(%[acc])\n\tvmovaps %%ymm11, 224(%[acc])\n\tvmovaps %%ymm12, 256(%[acc])\n\t"        \
    "vmovaps %%ymm13, 288(%[acc])\n\tvmovaps %%ymm14, 320(%[acc])\n\tvmovaps %%ymm15, 352(%[acc])\n\t"
#define SFT_CLOBBERS                                                                                  \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
        "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc"

/* Writes MRV rows of accumulators (lo, hi halves) to C: C = alpha*acc + (first ? beta*C : C). */
SFT_TARGET_AVX2 static inline __attribute__((always_inline)) void store_avx2(const int MRV, const __m256 *c0,
                                                                             const __m256 *c1, float *C,
                                                                             int64_t ldc, int n, int first,
                                                                             float alpha, float beta) {
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    const int scale = alpha != 1.0f, keep = !first, blend = first && beta != 0.0f;
    if (n == GEMM_NR) {
        // full width: update C straight from the registers
#pragma GCC unroll 6
        for (int i = 0; i < MRV; i++) {
            float *c = C + i * ldc;
            __m256 lo = c0[i], hi = c1[i];
            if (scale) lo = _mm256_mul_ps(lo, va), hi = _mm256_mul_ps(hi, va);
            if (keep) {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(c));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(c + 8));
            } else if (blend) {
                lo = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), lo);
                hi = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), hi);
            }
            _mm256_storeu_ps(c, lo);
            _mm256_storeu_ps(c + 8, hi);
        }
    } else {
        // edge columns: masked loads and stores touch only the n valid ones
        const __m256i vn = _mm256_set1_epi32(n);
        const __m256i m0 = _mm256_cmpgt_epi32(vn, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i m1 = _mm256_cmpgt_epi32(vn, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
#pragma GCC unroll 6
        for (int i = 0; i < MRV; i++) {
            float *c = C + i * ldc;
            __m256 lo = c0[i], hi = c1[i];
            if (scale) lo = _mm256_mul_ps(lo, va), hi = _mm256_mul_ps(hi, va);
            if (keep) {
                lo = _mm256_add_ps(lo, _mm256_maskload_ps(c, m0));
                hi = _mm256_add_ps(hi, _mm256_maskload_ps(c + 8, m1));
            } else if (blend) {
                lo = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c, m0), lo);
                hi = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c + 8, m1), hi);
            }
            _mm256_maskstore_ps(c, m0, lo);
            _mm256_maskstore_ps(c + 8, m1, hi);
        }
    }
}

/* The full 6 x 16 AVX2/FMA micro-kernel: 12 ymm accumulators, the depth loop in asm (so the
 * compiler cannot spill an accumulator) unrolled by 4, A prefetched ahead, C rows prefetched
 * before the loop so their misses overlap the FMAs. */
SFT_TARGET_AVX2 static void ukernel_avx2_6(int64_t kc, const float *a, const float *b, float *C, int64_t ldc,
                                           int n, int first, float alpha, float beta) {
    float acc[2 * GEMM_MR * 8] __attribute__((aligned(32)));
    // C rows: both lines of each (a row of 16 floats may straddle two)
    for (int i = 0; i < GEMM_MR; i++) {
        _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + i * ldc + GEMM_NR - 1), _MM_HINT_T0);
    }
    int64_t quads = kc / 4, rest = kc % 4;
    const int64_t ldb_bytes = GEMM_NR * (int64_t)sizeof(float);
    __asm__ volatile(SFT_ZERO6 "test %[q], %[q]\n\t"
                               "jz 2f\n\t"
                               ".p2align 5\n"
                               "1:\n\t"
                               "prefetcht0 384(%[a])\n\t" SFT_LOADB SFT_K6(0) SFT_LOADB SFT_K6(24) SFT_LOADB
                                   SFT_K6(48) SFT_LOADB SFT_K6(72) "add $96, %[a]\n\t"
                                                                   "dec %[q]\n\t"
                                                                   "jnz 1b\n" SFT_TAIL6
                     : [a] "+r"(a), [b] "+r"(b), [q] "+r"(quads), [r] "+r"(rest)
                     : [ldb] "r"(ldb_bytes), [acc] "r"(acc)
                     : SFT_CLOBBERS);
    __m256 lo[GEMM_MR], hi[GEMM_MR];
    for (int i = 0; i < GEMM_MR; i++) {
        lo[i] = _mm256_load_ps(acc + 16 * i);
        hi[i] = _mm256_load_ps(acc + 16 * i + 8);
    }
    store_avx2(GEMM_MR, lo, hi, C, ldc, n, first, alpha, beta);
}
#undef SFT_K6
#undef SFT_LOADB
#undef SFT_ZERO6
#undef SFT_TAIL6
#undef SFT_CLOBBERS

/* AVX2/FMA micro-kernel body for MRV < MR valid rows (a compile-time constant after inlining):
 * 2*MRV ymm accumulators, so thin problems (M = 1, edge tiles) do no wasted FMAs. */
SFT_TARGET_AVX2 static inline __attribute__((always_inline)) void ukernel_avx2_rows(
    const int MRV, int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int n, int first,
    float alpha, float beta) {
    __m256 c0[GEMM_MR - 1], c1[GEMM_MR - 1];
#pragma GCC unroll 6
    for (int i = 0; i < MRV; i++) {
        c0[i] = _mm256_setzero_ps();
        c1[i] = _mm256_setzero_ps();
        _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + i * ldc + GEMM_NR - 1), _MM_HINT_T0);
    }
    // rank-1 updates over the depth
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MRV; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
        }
        a += GEMM_MR;
        b += GEMM_NR;
    }
    store_avx2(MRV, c0, c1, C, ldc, n, first, alpha, beta);
}

#define SFT_UKERNEL_AVX2(R)                                                                                \
    SFT_TARGET_AVX2 static void ukernel_avx2_##R(int64_t kc, const float *a, const float *b, float *C,     \
                                                 int64_t ldc, int n, int first, float alpha, float beta) { \
        ukernel_avx2_rows(R, kc, a, b, C, ldc, n, first, alpha, beta);                                     \
    }
SFT_UKERNEL_AVX2(1)
SFT_UKERNEL_AVX2(2)
SFT_UKERNEL_AVX2(3)
SFT_UKERNEL_AVX2(4)
SFT_UKERNEL_AVX2(5)
#undef SFT_UKERNEL_AVX2

/* Dispatch on the number of valid rows. */
SFT_TARGET_AVX2 static void ukernel_avx2(int64_t kc, const float *a, const float *b, float *C, int64_t ldc,
                                         int m, int n, int first, float alpha, float beta) {
    switch (m) {
        case 6:
            ukernel_avx2_6(kc, a, b, C, ldc, n, first, alpha, beta);
            break;
        case 5:
            ukernel_avx2_5(kc, a, b, C, ldc, n, first, alpha, beta);
            break;
        case 4:
            ukernel_avx2_4(kc, a, b, C, ldc, n, first, alpha, beta);
            break;
        case 3:
            ukernel_avx2_3(kc, a, b, C, ldc, n, first, alpha, beta);
            break;
        case 2:
            ukernel_avx2_2(kc, a, b, C, ldc, n, first, alpha, beta);
            break;
        default:
            ukernel_avx2_1(kc, a, b, C, ldc, n, first, alpha, beta);
            break;
    }
}
#endif

/* ---- AVX-512 micro-kernel (24 x 16) -------------------------------------------------------- */

#if SFT_X86
/* Full micro-panel (mr == GEMM_MR_AVX512) of op(A), AVX2 shuffles: 8 x 8 transposes of three
 * 8-row groups for rows contiguous in k, 24-float copies for columns contiguous (rsa == 1). */
SFT_TARGET_AVX512 static void pack_a_panel_avx512(float *d, const float *a, int64_t rsa, int64_t csa,
                                                  int64_t mr, int64_t kc) {
    const int64_t MRF = GEMM_MR_AVX512;
    if (mr != MRF || (csa != 1 && rsa != 1)) {
        pack_a_panel_mr(d, a, rsa, csa, mr, kc, MRF);
        return;
    }
    int64_t kk = 0;
    if (csa == 1) {
        // one group of eight rows at a time over the whole depth, eight depth indices per
        // transpose: rows a power-of-two stride apart share L1 sets, and eight of them fit the
        // ways where all 24 would evict each other between visits
        const int64_t k8 = kc / 8 * 8;
        for (int g = 0; g < 3; g++)
            for (kk = 0; kk < k8; kk += 8) {
                __m256 r[8];
                for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(a + (8 * g + q) * rsa + kk);
                sft_transpose8_ps(r);
                for (int q = 0; q < 8; q++) _mm256_storeu_ps(d + (kk + q) * MRF + 8 * g, r[q]);
            }
        // remaining depth indices
        for (kk = k8; kk < kc; kk++)
            for (int ii = 0; ii < MRF; ii++) d[kk * MRF + ii] = a[ii * rsa + kk];
    } else {
        // rsa == 1: the 24 values of one depth index are contiguous
        for (; kk < kc; kk++) {
            const float *src = a + kk * csa;
            float *o = d + kk * MRF;
            _mm512_storeu_ps(o, _mm512_loadu_ps(src));
            _mm256_storeu_ps(o + 16, _mm256_loadu_ps(src + 16));
        }
    }
}

/* Writes MRV rows of zmm accumulators to C: C = alpha*acc + (first ? beta*C : C); the n valid
 * columns only (masked loads and stores). */
SFT_TARGET_AVX512 static inline __attribute__((always_inline)) void store_avx512(
    const int MRV, const __m512 *c, float *C, int64_t ldc, int n, int first, float alpha, float beta) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const int scale = alpha != 1.0f, keep = !first, blend = first && beta != 0.0f;
    const __mmask16 mk = (__mmask16)(n >= GEMM_NR ? 0xFFFFu : (1u << n) - 1u);
    // loop over valid rows
    for (int i = 0; i < MRV; i++) {
        float *ci = C + i * ldc;
        __m512 v = c[i];
        if (scale) v = _mm512_mul_ps(v, va);
        if (keep)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, ci));
        else if (blend)
            v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk, ci), v);
        _mm512_mask_storeu_ps(ci, mk, v);
    }
}

/* One rank-1 update of the 24 x 16 tile in asm: the B row (byte offset 64*OFF) in zmm0, then row
 * i of a (byte offset 96*OFF + 4*i) broadcast straight from memory into accumulator zmm(8+i). */
#define SFT_Z(OFF, I, R) "vfmadd231ps " #OFF "*96+" #I "*4(%[a])%{1to16%}, %%zmm0, %%zmm" #R "\n\t"
#define SFT_K24(OFF)                                                                                     \
    "vmovups " #OFF "*64(%[b]), %%zmm0\n\t" SFT_Z(OFF, 0, 8) SFT_Z(OFF, 1, 9) SFT_Z(OFF, 2, 10)          \
        SFT_Z(OFF, 3, 11) SFT_Z(OFF, 4, 12) SFT_Z(OFF, 5, 13) SFT_Z(OFF, 6, 14) SFT_Z(OFF, 7, 15)        \
            SFT_Z(OFF, 8, 16) SFT_Z(OFF, 9, 17) SFT_Z(OFF, 10, 18) SFT_Z(OFF, 11, 19) SFT_Z(OFF, 12, 20) \
                SFT_Z(OFF, 13, 21) SFT_Z(OFF, 14, 22) SFT_Z(OFF, 15, 23) SFT_Z(OFF, 16, 24)              \
                    SFT_Z(OFF, 17, 25) SFT_Z(OFF, 18, 26) SFT_Z(OFF, 19, 27) SFT_Z(OFF, 20, 28)          \
                        SFT_Z(OFF, 21, 29) SFT_Z(OFF, 22, 30) SFT_Z(OFF, 23, 31)
// clang-format off
#define SFT_ZMM_LIST(X) \
    X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) \
    X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31)
// clang-format on
#define SFT_ZERO(R) "vpxord %%zmm" #R ", %%zmm" #R ", %%zmm" #R "\n\t"
#define SFT_SPILL(R) "vmovaps %%zmm" #R ", " #R "*64-512(%[acc])\n\t"
#define SFT_ADDC(R) \
    "vaddps (%[pc]), %%zmm" #R ", %%zmm" #R "\n\tvmovups %%zmm" #R ", (%[pc])\n\tadd %[ldcb], %[pc]\n\t"
#define SFT_STC(R) "vmovups %%zmm" #R ", (%[pc])\n\tadd %[ldcb], %[pc]\n\t"

/* The full 24 x 16 AVX-512 micro-kernel: 24 zmm accumulators, each FMA taking its A value as an
 * embedded broadcast, the depth loop in asm (so no accumulator can be spilled) unrolled by 4,
 * the A panel prefetched two unrolled steps ahead (it streams from L2; B stays in L1). The C
 * rows are prefetched one per unrolled step during the last 24 steps (a burst of prefetches at the
 * start would stall the loop, and lines fetched early would be evicted by the A stream), and a
 * full-width tile is added to C straight from the accumulators (spilling them to the stack and
 * reloading costs a store-forwarding stall per row); `python benchmarks/bench_gemm.py` measures
 * the kernel. Outputs are "+&r": early-clobber, so that no input shares
 * their register (pc starts equal to C). */
SFT_TARGET_AVX512 static void ukernel_avx512_24(int64_t kc, const float *a, const float *b, float *C,
                                                int64_t ldc, int n, int first, float alpha, float beta) {
    float acc[GEMM_MR_AVX512 * GEMM_NR] __attribute__((aligned(64)));
    // C rows prefetched inside the depth loop: both lines a row of 16 floats may touch
    const float *pc = C;
    int64_t pc_rows = GEMM_MR_AVX512, ldc_bytes = ldc * (int64_t)sizeof(float);
    int64_t quads = kc / 4, rest = kc % 4;
    // full-width tiles with alpha = 1 are written to C from the accumulators in asm (C += acc,
    // or C = acc on the first depth block with beta = 0); any other tile goes through the stack
    int64_t mode = n == GEMM_NR && alpha == 1.0f ? (!first ? 1 : beta == 0.0f ? 2 : 0) : 0;
    __asm__ volatile(SFT_ZMM_LIST(SFT_ZERO) "test %[q], %[q]\n\t"
                                            "jz 2f\n\t"
                                            ".p2align 5\n"
                                            "1:\n\t"
                                            "prefetcht0 768(%[a])\n\t"
                                            "prefetcht0 832(%[a])\n\t" SFT_K24(0) SFT_K24(1)
                                            "prefetcht0 896(%[a])\n\t"
                                            "cmp %[pr], %[q]\n\t"
                                            "ja 5f\n\t"
                                            "prefetcht0 (%[pc])\n\t"
                                            "prefetcht0 60(%[pc])\n\t"
                                            "add %[ldcb], %[pc]\n\t"
                                            "dec %[pr]\n"
                                            "5:\n\t" SFT_K24(2) SFT_K24(3)
                                            "add $384, %[a]\n\t"
                                            "add $256, %[b]\n\t"
                                            "dec %[q]\n\t"
                                            "jnz 1b\n"
                                            "2:\n\t"
                                            "test %[r], %[r]\n\t"
                                            "jz 4f\n"
                                            "3:\n\t" SFT_K24(0) "add $96, %[a]\n\t"
                                            "add $64, %[b]\n\t"
                                            "dec %[r]\n\t"
                                            "jnz 3b\n"
                                            "4:\n\t"
                                            "mov %[cp], %[pc]\n\t"
                                            "cmp $1, %[m]\n\t"
                                            "jb 6f\n\t"
                                            "ja 7f\n\t" SFT_ZMM_LIST(SFT_ADDC) "jmp 8f\n"
                                            "7:\n\t" SFT_ZMM_LIST(SFT_STC) "jmp 8f\n"
                                            "6:\n\t" SFT_ZMM_LIST(SFT_SPILL) "8:\n\t"
                     : [a] "+&r"(a), [b] "+&r"(b), [q] "+&r"(quads), [r] "+&r"(rest), [pc] "+&r"(pc),
                       [pr] "+&r"(pc_rows)
                     : [acc] "r"(acc), [ldcb] "r"(ldc_bytes), [cp] "r"(C), [m] "r"(mode)
                     : "xmm0", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16",
                       "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26",
                       "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory", "cc");
    if (mode == 0) store_avx512(GEMM_MR_AVX512, (const __m512 *)acc, C, ldc, n, first, alpha, beta);
}
#undef SFT_Z
#undef SFT_K24
#undef SFT_ZMM_LIST
#undef SFT_ZERO
#undef SFT_SPILL
#undef SFT_ADDC
#undef SFT_STC

/* AVX-512 micro-kernel body for MRV < 24 valid rows (a compile-time constant after inlining):
 * MRV zmm accumulators, so thin problems and edge tiles do no wasted FMAs. */
SFT_TARGET_AVX512 static inline __attribute__((always_inline)) void ukernel_avx512_rows(
    const int MRV, int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int n, int first,
    float alpha, float beta) {
    __m512 c[GEMM_MR_AVX512 - 1];
#pragma GCC unroll 23
    for (int i = 0; i < MRV; i++) {
        c[i] = _mm512_setzero_ps();
        _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
    }
    // rank-1 updates over the depth
    for (int64_t k = 0; k < kc; k++) {
        const __m512 bk = _mm512_loadu_ps(b);
#pragma GCC unroll 23
        for (int i = 0; i < MRV; i++) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i]), bk, c[i]);
        a += GEMM_MR_AVX512;
        b += GEMM_NR;
    }
    store_avx512(MRV, c, C, ldc, n, first, alpha, beta);
}

#define SFT_UKERNEL_AVX512(R)                                                                              \
    SFT_TARGET_AVX512 static void ukernel_avx512_##R(int64_t kc, const float *a, const float *b, float *C, \
                                                     int64_t ldc, int n, int first, float alpha,           \
                                                     float beta) {                                         \
        ukernel_avx512_rows(R, kc, a, b, C, ldc, n, first, alpha, beta);                                   \
    }
SFT_UKERNEL_AVX512(1)
SFT_UKERNEL_AVX512(2)
SFT_UKERNEL_AVX512(3)
SFT_UKERNEL_AVX512(4)
SFT_UKERNEL_AVX512(5)
SFT_UKERNEL_AVX512(6)
SFT_UKERNEL_AVX512(7)
SFT_UKERNEL_AVX512(8)
SFT_UKERNEL_AVX512(9)
SFT_UKERNEL_AVX512(10)
SFT_UKERNEL_AVX512(11)
SFT_UKERNEL_AVX512(12)
SFT_UKERNEL_AVX512(13)
SFT_UKERNEL_AVX512(14)
SFT_UKERNEL_AVX512(15)
SFT_UKERNEL_AVX512(16)
SFT_UKERNEL_AVX512(17)
SFT_UKERNEL_AVX512(18)
SFT_UKERNEL_AVX512(19)
SFT_UKERNEL_AVX512(20)
SFT_UKERNEL_AVX512(21)
SFT_UKERNEL_AVX512(22)
SFT_UKERNEL_AVX512(23)
#undef SFT_UKERNEL_AVX512

typedef void (*ukernel_rows_fn)(int64_t, const float *, const float *, float *, int64_t, int, int, float,
                                float);

/* Dispatch on the number of valid rows (1..24). */
SFT_TARGET_AVX512 static void ukernel_avx512(int64_t kc, const float *a, const float *b, float *C,
                                             int64_t ldc, int m, int n, int first, float alpha, float beta) {
    static const ukernel_rows_fn by_rows[GEMM_MR_AVX512 + 1] = {
        ukernel_avx512_1,  ukernel_avx512_1,  ukernel_avx512_2,  ukernel_avx512_3,  ukernel_avx512_4,
        ukernel_avx512_5,  ukernel_avx512_6,  ukernel_avx512_7,  ukernel_avx512_8,  ukernel_avx512_9,
        ukernel_avx512_10, ukernel_avx512_11, ukernel_avx512_12, ukernel_avx512_13, ukernel_avx512_14,
        ukernel_avx512_15, ukernel_avx512_16, ukernel_avx512_17, ukernel_avx512_18, ukernel_avx512_19,
        ukernel_avx512_20, ukernel_avx512_21, ukernel_avx512_22, ukernel_avx512_23, ukernel_avx512_24};
    by_rows[SFT_MAX(1, SFT_MIN(m, GEMM_MR_AVX512))](kc, a, b, C, ldc, n, first, alpha, beta);
}
#endif

/* ---- B packing by rows ------------------------------------------------------------------- */

/* Panels [0, ceil(ncols/NR)) of op(B)[k0 : k0+kc, j0 : j0+ncols] for a strided op(B) with
 * csb == 1, walking each row of B once (contiguous reads the hardware prefetcher follows, where
 * packing panel by panel would touch a new page every 64 bytes): panel p goes to dst + p*kc*NR,
 * zero-padded past ncols. */
static void pack_b_rows_c(float *dst, const float *B, int64_t rsb, int64_t k0, int64_t kc, int64_t j0,
                          int64_t ncols) {
    const int64_t full = ncols / GEMM_NR, tail = ncols % GEMM_NR;
    // loop over depth, then panels
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *row = B + (k0 + kk) * rsb + j0;
        float *d = dst + kk * GEMM_NR;
        for (int64_t p = 0; p < full; p++)
            for (int jj = 0; jj < GEMM_NR; jj++) d[p * kc * GEMM_NR + jj] = row[p * GEMM_NR + jj];
        if (tail > 0) {
            float *dt = d + full * kc * GEMM_NR;
            for (int64_t jj = 0; jj < tail; jj++) dt[jj] = row[full * GEMM_NR + jj];
            for (int64_t jj = tail; jj < GEMM_NR; jj++) dt[jj] = 0.0f;
        }
    }
}

#if SFT_X86
SFT_TARGET_AVX2 static void pack_b_rows_avx2(float *dst, const float *B, int64_t rsb, int64_t k0, int64_t kc,
                                             int64_t j0, int64_t ncols) {
    const int64_t full = ncols / GEMM_NR, tail = ncols % GEMM_NR;
    const int64_t step = kc * GEMM_NR;
    const __m256i vn = _mm256_set1_epi32((int)tail);
    const __m256i m0 = _mm256_cmpgt_epi32(vn, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i m1 = _mm256_cmpgt_epi32(vn, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
    // loop over depth, then panels (dst panels are 64-byte aligned, rows of 16 floats)
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *row = B + (k0 + kk) * rsb + j0;
        float *d = dst + kk * GEMM_NR;
        for (int64_t p = 0; p < full; p++) {
            _mm256_store_ps(d + p * step, _mm256_loadu_ps(row + p * GEMM_NR));
            _mm256_store_ps(d + p * step + 8, _mm256_loadu_ps(row + p * GEMM_NR + 8));
        }
        if (tail > 0) {
            // masked loads never touch the columns past ncols; zeros fill the padding
            _mm256_store_ps(d + full * step, _mm256_maskload_ps(row + full * GEMM_NR, m0));
            _mm256_store_ps(d + full * step + 8, _mm256_maskload_ps(row + full * GEMM_NR + 8, m1));
        }
    }
}
#endif

typedef void (*pack_b_rows_fn)(float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t);

/* The kernels of the selected SIMD path. */
typedef struct {
    ukernel_fn uk;
    pack_a_fn pack_a_panel;
    gemm_pack_b_fn pack_b_strided;
    pack_b_rows_fn pack_b_rows;
    int64_t mr; /* rows of the micro-tile (and of a packed A micro-panel) */
} gemm_kernels;

static gemm_kernels select_kernels(void) {
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX512)
        return (gemm_kernels){ukernel_avx512, pack_a_panel_avx512, pack_b_strided_avx2, pack_b_rows_avx2,
                              GEMM_MR_AVX512};
    if (sft_simd_path >= SFT_SIMD_AVX2)
        return (gemm_kernels){ukernel_avx2, pack_a_panel_avx2, pack_b_strided_avx2, pack_b_rows_avx2,
                              GEMM_MR};
#endif
    return (gemm_kernels){ukernel_portable, pack_a_panel_c, pack_b_strided_c, pack_b_rows_c, GEMM_MR};
}

int64_t gemm_mr(void) {
    return select_kernels().mr;
}

/* ---- driver ------------------------------------------------------------------------------ */

/* Row blocks per thread at least (when M allows) in the many-rows driver, for dynamic balance. */
#ifndef GEMM_MANY_BLOCKS
#define GEMM_MANY_BLOCKS 4
#endif
/* B micro-panels per packing work item in the many-rows driver (128 columns). */
#define GEMM_PACK_GROUP 8

/* Depth blocks at most this deep walk C row by row in the macro-kernel (C-store bound). */
#define GEMM_SHALLOW_KC 128

/* M*N*K below which one thread does the whole product (2 MFLOP). */
#define GEMM_MIN_PARALLEL_MNK (1 << 20)

/* Columns of the B chunk each thread packs at a time in the few-rows driver. */
#define GEMM_FEW_NC 256

/* The dynamic-columns driver: rows at most, op(A) floats packed whole per thread at most (768 KiB:
 * 256 tokens by 768 features; with the 256 KiB B chunk, 1 MiB per thread), and column chunks at
 * least per thread. Deeper products (K = 3072 at 256 rows) would have to repack A per chunk,
 * which measured slower than the many-rows driver on a quiet host. */
#define GEMM_COLS_M 512
#define GEMM_COLS_A_FLOATS (3 << 16)
#define GEMM_COLS_MIN_CHUNKS 4

/* Columns of the shared B block of the many-rows driver with nthreads threads: GEMM_NC per
 * thread (so B block + A blocks stay within 1 MiB per thread), a multiple of NR, at most
 * GEMM_NC_MAX. Every column block packs the whole A operand again: two threads get 1760
 * columns, so a 2048-wide product packs A twice instead of three times. */
#define GEMM_NC_MAX (4 * GEMM_NC)
static int64_t many_nc(int nthreads) {
    return (int64_t)SFT_MIN(GEMM_NC_MAX, SFT_MAX(1, nthreads) * GEMM_NC);
}

int64_t sgemm_scratch_bytes(int nthreads) {
    // the many-rows driver: one shared B block + one A block per thread; the few-rows driver
    // needs less: per thread an A block of at most MC rows and a B chunk of GEMM_FEW_NC columns
    if (nthreads < 1) nthreads = 1;
    int64_t many = (int64_t)GEMM_KC * many_nc(nthreads) + (int64_t)nthreads * GEMM_MC * GEMM_KC;
    int64_t few = (int64_t)nthreads * (GEMM_MC + GEMM_FEW_NC) * GEMM_KC;
    int64_t cols =
        (int64_t)nthreads * (SFT_MAX(GEMM_COLS_A_FLOATS, GEMM_COLS_M * GEMM_KC) + GEMM_FEW_NC * GEMM_KC);
    return (int64_t)sizeof(float) * SFT_MAX(SFT_MAX(many, few), cols);
}

/* One mc x nc block of C from a packed A block (mc x kc) and packed B panels [p_lo, p_hi). */
static void macro_kernel(ukernel_fn uk, int64_t mr, float *C, int64_t ldc, const float *pa, const float *pb,
                         int64_t mc, int64_t nc, int64_t kc, int64_t p_lo, int64_t p_hi, int first,
                         float alpha, float beta) {
    if (kc <= GEMM_SHALLOW_KC) {
        // shallow depth: storing C dominates, so walk C along its rows (sequential stores the
        // hardware prefetcher follows) instead of down 6-row strips of every column panel
        for (int64_t i = 0; i < mc; i += mr) {
            int m = (int)SFT_MIN(mr, mc - i);
            for (int64_t p = p_lo; p < p_hi; p++) {
                int64_t j = p * GEMM_NR;
                int n = (int)SFT_MIN(GEMM_NR, nc - j);
                uk(kc, pa + i * kc, pb + p * kc * GEMM_NR, C + i * ldc + j, ldc, m, n, first, alpha, beta);
            }
        }
        return;
    }
    // loop over B micro-panels (columns, each kept in L1), then A micro-panels (rows)
    for (int64_t p = p_lo; p < p_hi; p++) {
        int64_t j = p * GEMM_NR;
        int n = (int)SFT_MIN(GEMM_NR, nc - j);
        const float *b = pb + p * kc * GEMM_NR;
        for (int64_t i = 0; i < mc; i += mr) {
            int m = (int)SFT_MIN(mr, mc - i);
            uk(kc, pa + i * kc, b, C + i * ldc + j, ldc, m, n, first, alpha, beta);
        }
    }
}

/* [lo, hi) of n items for thread t of nth, contiguous and balanced. */
static void share(int64_t n, int t, int nth, int64_t *lo, int64_t *hi) {
    *lo = n * t / nth;
    *hi = n * (t + 1) / nth;
}

/* The operands of one call. rows_b: op(B) is the strided matrix B with csb == 1 and no
 * callback, so B is packed row by row (pack_b_rows); otherwise panel by panel with pack_b. */
typedef struct {
    float *C;
    int64_t ldc;
    const float *A;
    int64_t rsa, csa;
    gemm_pack_b_fn pack_b;
    const void *ctx;
    const float *B;
    int64_t rsb;
    int rows_b;
    int64_t M, N, K;
    float alpha, beta;
} gemm_args;

/* Packs panels [q0, q1) of the B block op(B)[pc : pc+kc, jc : jc+nc] to dst (panel q0 first). */
static void pack_b_range(const gemm_args *g, const gemm_kernels *kern, float *dst, int64_t pc, int64_t kc,
                         int64_t jc, int64_t nc, int64_t q0, int64_t q1) {
    if (q0 >= q1) return;
    if (g->rows_b) {
        kern->pack_b_rows(dst, g->B, g->rsb, pc, kc, jc + q0 * GEMM_NR,
                          SFT_MIN(nc, q1 * GEMM_NR) - q0 * GEMM_NR);
        return;
    }
    // one micro-panel at a time through the callback
    for (int64_t q = q0; q < q1; q++) {
        int64_t j = q * GEMM_NR;
        g->pack_b(dst + (q - q0) * kc * GEMM_NR, g->ctx, pc, kc, jc + j, SFT_MIN(GEMM_NR, nc - j));
    }
}

/* ---- team synchronisation that yields ------------------------------------------------------ */

/* Work counters and a barrier for the threads of one parallel region. Waiters spin briefly, then
 * yield the CPU: on a shared, oversubscribed machine a waiting thread that keeps spinning (as
 * the OpenMP barrier does) steals the time the thread it waits for needs. */
typedef struct {
    _Atomic int64_t next_pack, next_rows; /* next work item of the current depth block */
    _Atomic int arrived;                  /* threads at the barrier */
    _Atomic int phase;                    /* barriers completed */
    int nth;                              /* threads in the team */
} team_sync;

static void cpu_relax(void) {
#if SFT_X86
    _mm_pause();
#endif
}

/* Waits until all nth threads have arrived. The last one to arrive first resets *counter (no
 * thread touches it again before the next phase), then releases the others. */
static void team_barrier(team_sync *ts, int *phase, _Atomic int64_t *counter) {
    const int ph = *phase;
    if (atomic_fetch_add(&ts->arrived, 1) == ts->nth - 1) {
        atomic_store(&ts->arrived, 0);
        atomic_store(counter, 0);
        atomic_store(&ts->phase, ph + 1);
    } else {
        // spin a little, then give the CPU away until the phase moves
        for (int spin = 0; atomic_load(&ts->phase) == ph; spin++) {
            if (spin < 256)
                cpu_relax();
            else
                sched_yield();
        }
    }
    *phase = ph + 1;
}

/* Many rows: shared packed B block; equal-size row blocks and B panel groups handed out to the
 * threads dynamically (atomic counters), so a thread slowed down (a shared machine) does not
 * hold the others up. Which thread takes a block does not change any result. */
static int gemm_many_rows(const gemm_args *g, gemm_kernels kern, int nthreads) {
    const int64_t M = g->M, N = g->N, K = g->K;
    const int64_t MR = kern.mr;
    const int64_t tiles = sft_ceil_div(M, MR);
    // column blocks of equal width (up to NR), scratch sized to the problem
    const int64_t n_jc = sft_ceil_div(N, many_nc(nthreads));
    const int64_t nc_max = sft_round_up(sft_ceil_div(N, n_jc), GEMM_NR);
    const int64_t kc_max = SFT_MIN(K, GEMM_KC);
    // row blocks of at most mc_tiles micro-tiles (MC rows, and at most 1/GEMM_MANY_BLOCKS of a
    // thread's share when M is small), so each thread packs at most mc_blk rows of A at a time
    int64_t nb = sft_ceil_div(M, GEMM_MC);
    nb = SFT_MIN(tiles, sft_round_up(SFT_MAX(nb, GEMM_MANY_BLOCKS * (int64_t)nthreads), nthreads));
    const int64_t mc_tiles = sft_ceil_div(tiles, nb), mc_blk = mc_tiles * MR;
    float *pb = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(kc_max * nc_max));
    float *pa_all = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(nthreads * mc_blk * kc_max));
    if (pb == NULL || pa_all == NULL) {
        sft_scratch_free(pb);
        sft_scratch_free(pa_all);
        return -1;
    }
    team_sync ts;
    atomic_init(&ts.next_pack, 0);
    atomic_init(&ts.next_rows, 0);
    atomic_init(&ts.arrived, 0);
    atomic_init(&ts.phase, 0);
    ts.nth = 1;

#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num();
#pragma omp single
        ts.nth = sft_team_size(); /* the team may be smaller than asked (implicit barrier) */
        int phase = 0;
        float *pa = pa_all + (int64_t)tid * mc_blk * kc_max;
        // loop over column blocks of C
        for (int64_t jc = 0; jc < N; jc += nc_max) {
            const int64_t nc = SFT_MIN(nc_max, N - jc);
            const int64_t n_panels = sft_ceil_div(nc, GEMM_NR);
            const int64_t n_groups = sft_ceil_div(n_panels, GEMM_PACK_GROUP);
            // loop over depth blocks
            for (int64_t pc = 0; pc < K; pc += GEMM_KC) {
                const int64_t kc = SFT_MIN(GEMM_KC, K - pc);
                const int first = pc == 0;
                // pack the B block, groups of panels handed out
                for (int64_t q; (q = atomic_fetch_add(&ts.next_pack, 1)) < n_groups;) {
                    int64_t q0 = q * GEMM_PACK_GROUP, q1 = SFT_MIN(n_panels, q0 + GEMM_PACK_GROUP);
                    pack_b_range(g, &kern, pb + q0 * kc * GEMM_NR, pc, kc, jc, nc, q0, q1);
                }
                team_barrier(&ts, &phase, &ts.next_pack);
                // row blocks handed out, each against the whole B block; guided: a block takes
                // 1/(2 nth) of the tiles left (at most the A block), so the blocks handed out
                // last are single tiles and the threads reach the barrier close together
                for (;;) {
                    int64_t t0 = atomic_load(&ts.next_rows), take = 0;
                    while (t0 < tiles) {
                        take = ts.nth == 1 ? mc_tiles : (tiles - t0) / (2 * (int64_t)ts.nth);
                        take = SFT_MAX(1, SFT_MIN(mc_tiles, take));
                        if (atomic_compare_exchange_weak(&ts.next_rows, &t0, t0 + take)) break;
                    }
                    if (t0 >= tiles) break;
                    int64_t ic = t0 * MR;
                    int64_t mc = SFT_MIN(M, (t0 + take) * MR) - ic;
                    pack_a(kern.pack_a_panel, MR, pa, g->A, g->rsa, g->csa, ic, mc, pc, kc);
                    macro_kernel(kern.uk, MR, g->C + ic * g->ldc + jc, g->ldc, pa, pb, mc, nc, kc, 0,
                                 n_panels, first, g->alpha, g->beta);
                }
                // everyone is done with the B block before it is packed again
                team_barrier(&ts, &phase, &ts.next_rows);
            }
        }
    }
    sft_scratch_free(pa_all);
    sft_scratch_free(pb);
    return 0;
}

/* Few rows (M <= MC): columns shared out among threads, each packing its own B chunks (no
 * barrier) and the whole (small) A block of every depth block. */
static int gemm_few_rows(const gemm_args *g, gemm_kernels kern, int nthreads) {
    const int64_t M = g->M, N = g->N, K = g->K;
    const int64_t mpad = sft_round_up(M, kern.mr);
    const int64_t n_panels = sft_ceil_div(N, GEMM_NR);
    // B chunks of up to GEMM_FEW_NC columns; scratch sized to the problem
    const int64_t chunk = SFT_MIN(GEMM_FEW_NC / GEMM_NR, sft_ceil_div(n_panels, nthreads));
    const int64_t kc_max = SFT_MIN(K, GEMM_KC);
    const int64_t b_size = sft_round_up(chunk * GEMM_NR * kc_max, 16);   /* keeps pa 64-byte aligned */
    const int64_t per_thread = b_size + sft_round_up(mpad * kc_max, 16); /* B chunk + A block */
    float *buf = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * (size_t)per_thread);
    if (buf == NULL) return -1;

#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num(), nth = sft_team_size();
        float *pb = buf + (int64_t)tid * per_thread; /* B chunk first: 64-byte aligned panels */
        float *pa = pb + b_size;
        int64_t p_lo, p_hi;
        share(n_panels, tid, nth, &p_lo, &p_hi);
        // loop over depth blocks, then this thread's panels chunk by chunk
        for (int64_t pc = 0; pc < K && p_lo < p_hi; pc += GEMM_KC) {
            int64_t kc = SFT_MIN(GEMM_KC, K - pc);
            int first = pc == 0;
            pack_a(kern.pack_a_panel, kern.mr, pa, g->A, g->rsa, g->csa, 0, M, pc, kc);
            for (int64_t q0 = p_lo; q0 < p_hi; q0 += chunk) {
                int64_t q1 = SFT_MIN(p_hi, q0 + chunk);
                pack_b_range(g, &kern, pb, pc, kc, 0, N, q0, q1);
                // all row tiles against each panel (it stays in L1)
                macro_kernel(kern.uk, kern.mr, g->C + q0 * GEMM_NR, g->ldc, pa, pb, M, N - q0 * GEMM_NR, kc,
                             0, q1 - q0, first, g->alpha, g->beta);
            }
        }
    }
    sft_scratch_free(buf);
    return 0;
}

/* Tokens-by-features products (M up to GEMM_COLS_M rows, e.g. B*T = 256 tokens of a training step,
 * against a wide op(B)): threads take column chunks of GEMM_FEW_NC from an atomic counter and run
 * every depth block of their chunk in order, with op(A) packed whole once per thread (the caller
 * checks it fits in GEMM_COLS_A_FLOATS). No barrier at all, and a thread
 * slowed down (a shared machine) takes fewer chunks instead of holding the other up: the
 * many-rows driver needs two barriers per (column block, depth block), each up to a scheduler
 * slice on a loaded host. Every C element is computed as in the other drivers (same micro-tile
 * rows, depth blocks in order), so results do not change with the driver or the thread count. */
static int gemm_cols_dynamic(const gemm_args *g, gemm_kernels kern, int nthreads) {
    const int64_t M = g->M, N = g->N, K = g->K;
    const int64_t mpad = sft_round_up(M, kern.mr);
    const int64_t n_panels = sft_ceil_div(N, GEMM_NR);
    const int64_t chunk = GEMM_FEW_NC / GEMM_NR, n_chunks = sft_ceil_div(n_panels, chunk);
    const int64_t kc_max = SFT_MIN(K, GEMM_KC), n_pc = sft_ceil_div(K, GEMM_KC);
    const int64_t a_size = sft_round_up(mpad * K, 16);
    const int64_t b_size = sft_round_up(chunk * GEMM_NR * kc_max, 16);
    const int64_t per_thread = a_size + b_size;
    float *buf = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * (size_t)per_thread);
    if (buf == NULL) return -1;
    _Atomic int64_t next;
    atomic_init(&next, 0);

#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num();
        float *pb = buf + (int64_t)tid * per_thread; /* B chunk first: 64-byte aligned panels */
        float *pa = pb + b_size;
        int packed = 0;
        for (int64_t q; (q = atomic_fetch_add(&next, 1)) < n_chunks;) {
            if (!packed) { /* the whole op(A), depth block by depth block */
                for (int64_t b = 0; b < n_pc; b++) {
                    int64_t pc = b * GEMM_KC, kc = SFT_MIN(GEMM_KC, K - pc);
                    pack_a(kern.pack_a_panel, kern.mr, pa + pc * mpad, g->A, g->rsa, g->csa, 0, M, pc, kc);
                }
                packed = 1;
            }
            int64_t q0 = q * chunk, q1 = SFT_MIN(n_panels, q0 + chunk);
            // every depth block of this chunk, in order
            for (int64_t b = 0; b < n_pc; b++) {
                int64_t pc = b * GEMM_KC, kc = SFT_MIN(GEMM_KC, K - pc);
                pack_b_range(g, &kern, pb, pc, kc, 0, N, q0, q1);
                macro_kernel(kern.uk, kern.mr, g->C + q0 * GEMM_NR, g->ldc, pa + pc * mpad, pb, M,
                             N - q0 * GEMM_NR, kc, 0, q1 - q0, b == 0, g->alpha, g->beta);
            }
        }
    }
    sft_scratch_free(buf);
    return 0;
}

/* ---- very few rows: stream B rows ---------------------------------------------------------- */

/* Up to GEMM_STREAM_M rows of C against a strided op(B) with contiguous rows, without packing:
 * memory-bound (2*M flops per element of B), so B is read once, four rows at a time, in long
 * contiguous runs the hardware prefetcher follows (the longer the better: one row gets chunks of
 * 2048 columns). Each thread owns a range of columns, in chunks accumulated in an 8 KiB stack
 * buffer and written once. */
#define GEMM_STREAM_M 4
#define GEMM_STREAM_ACC 2048 /* floats of the accumulator: 2048 / M columns per chunk */

/* acc[i*w + j] += sum_k op(A)[i][k] * B[k*rsb + j] for i < m, j < w, k < K (in k order). */
typedef void (*stream_fn)(float *acc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
                          int64_t m, int64_t w, int64_t K);

static void stream_rows_c(float *acc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
                          int64_t m, int64_t w, int64_t K) {
    // loop over depth, then rows, then columns (contiguous)
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * rsb;
        for (int64_t i = 0; i < m; i++) {
            float a = A[i * rsa + k * csa];
            float *c = acc + i * w;
            for (int64_t j = 0; j < w; j++) c[j] += a * b[j];
        }
    }
}

#if SFT_X86
SFT_TARGET_AVX2 static void stream_rows_avx2(float *acc, const float *A, int64_t rsa, int64_t csa,
                                             const float *B, int64_t rsb, int64_t m, int64_t w, int64_t K) {
    const int64_t w8 = w / 8 * 8;
    int64_t k = 0;
    // four depth indices per sweep: four B rows streamed together, one pass over acc
    for (; k + 4 <= K; k += 4) {
        const float *b0 = B + k * rsb, *b1 = b0 + rsb, *b2 = b1 + rsb, *b3 = b2 + rsb;
        for (int64_t i = 0; i < m; i++) {
            const float *a = A + i * rsa + k * csa;
            const __m256 a0 = _mm256_broadcast_ss(a), a1 = _mm256_broadcast_ss(a + csa);
            const __m256 a2 = _mm256_broadcast_ss(a + 2 * csa), a3 = _mm256_broadcast_ss(a + 3 * csa);
            float *c = acc + i * w;
            for (int64_t j = 0; j < w8; j += 8) {
                __m256 t = _mm256_loadu_ps(c + j);
                t = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b0 + j), t);
                t = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b1 + j), t);
                t = _mm256_fmadd_ps(a2, _mm256_loadu_ps(b2 + j), t);
                t = _mm256_fmadd_ps(a3, _mm256_loadu_ps(b3 + j), t);
                _mm256_storeu_ps(c + j, t);
            }
            for (int64_t j = w8; j < w; j++) {
                float t = c[j];
                t = __builtin_fmaf(a[0], b0[j], t);
                t = __builtin_fmaf(a[csa], b1[j], t);
                t = __builtin_fmaf(a[2 * csa], b2[j], t);
                t = __builtin_fmaf(a[3 * csa], b3[j], t);
                c[j] = t;
            }
        }
    }
    // remaining depth
    for (; k < K; k++) {
        const float *b = B + k * rsb;
        for (int64_t i = 0; i < m; i++) {
            const float a = A[i * rsa + k * csa];
            const __m256 va = _mm256_set1_ps(a);
            float *c = acc + i * w;
            for (int64_t j = 0; j < w8; j += 8)
                _mm256_storeu_ps(c + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(b + j), _mm256_loadu_ps(c + j)));
            for (int64_t j = w8; j < w; j++) c[j] = __builtin_fmaf(a, b[j], c[j]);
        }
    }
}
#endif

static void gemm_stream_rows(const gemm_args *g, int nthreads) {
    stream_fn stream = stream_rows_c;
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) stream = stream_rows_avx2;
#endif
    const int64_t M = g->M, N = g->N, ldc = g->ldc;
    const int64_t n16 = sft_ceil_div(N, GEMM_NR); /* columns shared out in groups of 16 */

#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num(), nth = sft_team_size();
        float acc[GEMM_STREAM_ACC];
        const int64_t width = GEMM_STREAM_ACC / M / GEMM_NR * GEMM_NR;
        int64_t g_lo, g_hi;
        share(n16, tid, nth, &g_lo, &g_hi);
        const int64_t j_end = SFT_MIN(N, g_hi * GEMM_NR);
        // loop over column chunks of this thread
        for (int64_t j0 = g_lo * GEMM_NR; j0 < j_end; j0 += width) {
            const int64_t w = SFT_MIN(width, j_end - j0);
            memset(acc, 0, sizeof(float) * (size_t)(M * w));
            stream(acc, g->A, g->rsa, g->csa, g->B + j0, g->rsb, M, w, g->K);
            // C = alpha * acc + beta * C (C not read when beta == 0)
            for (int64_t i = 0; i < M; i++) {
                float *c = g->C + i * ldc + j0;
                const float *t = acc + i * w;
                if (g->beta == 0.0f)
                    for (int64_t j = 0; j < w; j++) c[j] = g->alpha * t[j];
                else
                    for (int64_t j = 0; j < w; j++) c[j] = g->beta * c[j] + g->alpha * t[j];
            }
        }
    }
}

/* C = beta * C without reading C when beta == 0. */
static void scale_c(float *C, int64_t ldc, int64_t M, int64_t N, float beta) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

static int gemm_run(gemm_args *g) {
    if (g->M <= 0 || g->N <= 0) return 0;
    if (g->K <= 0 || g->alpha == 0.0f) {
        // empty product: C = beta * C
        scale_c(g->C, g->ldc, g->M, g->N, g->beta);
        return 0;
    }
    gemm_kernels kern = select_kernels();
    if (g->pack_b == NULL) g->pack_b = kern.pack_b_strided;
    int nthreads = sft_get_num_threads();
#ifdef _OPENMP
    // inside a parallel region that cannot nest further the team has one thread
    if (omp_get_active_level() >= omp_get_max_active_levels()) nthreads = 1;
#endif
    // tiny products (a few microseconds on one core) cost less than waking a second thread
    if ((double)g->M * (double)g->N * (double)g->K < GEMM_MIN_PARALLEL_MNK) nthreads = 1;
    const int64_t tiles = sft_ceil_div(g->M, kern.mr), n_panels = sft_ceil_div(g->N, GEMM_NR);
    // one to a few rows against contiguous B rows: memory-bound, stream B without packing
    if (g->rows_b && g->M <= GEMM_STREAM_M) {
        gemm_stream_rows(g, (int)SFT_MAX(1, SFT_MIN(nthreads, n_panels)));
        return 0;
    }
    // tokens by features: dynamic column chunks, no barrier (when op(A) is small enough to pack
    // whole in every thread and there are enough chunks to balance)
    if (nthreads > 1 && g->M > GEMM_MC && g->M <= GEMM_COLS_M &&
        sft_round_up(g->M, kern.mr) * g->K <= GEMM_COLS_A_FLOATS &&
        sft_ceil_div(n_panels, GEMM_FEW_NC / GEMM_NR) >= GEMM_COLS_MIN_CHUNKS * (int64_t)nthreads)
        return gemm_cols_dynamic(g, kern, nthreads);
    // few rows: share the columns (unless there are too few of them and rows to share instead)
    if (g->M <= GEMM_MC && (n_panels >= nthreads || tiles < 2 * (int64_t)nthreads))
        return gemm_few_rows(g, kern, (int)SFT_MAX(1, SFT_MIN(nthreads, n_panels)));
    return gemm_many_rows(g, kern, (int)SFT_MAX(1, SFT_MIN(nthreads, tiles)));
}

void gemm_pack_b_strided(float *dst, const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
    select_kernels().pack_b_strided(dst, ctx, k0, kc, j0, nc);
}

int sgemm_packb_ab(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, gemm_pack_b_fn pack_b,
                   const void *ctx, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    gemm_args g = {C, ldc, A, rsa, csa, pack_b, ctx, NULL, 0, 0, M, N, K, alpha, beta};
    return gemm_run(&g);
}

int sgemm_packb(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, gemm_pack_b_fn pack_b,
                const void *ctx, int64_t M, int64_t N, int64_t K, float beta) {
    return sgemm_packb_ab(C, ldc, A, rsa, csa, pack_b, ctx, M, N, K, 1.0f, beta);
}

int sgemm_ab(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
             int64_t csb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    gemm_strided_b s = {B, rsb, csb};
    gemm_args g = {C, ldc, A, rsa, csa, NULL, &s, B, rsb, csb == 1, M, N, K, alpha, beta};
    return gemm_run(&g);
}

int sgemm(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
          int64_t csb, int64_t M, int64_t N, int64_t K, float beta) {
    return sgemm_ab(C, ldc, A, rsa, csa, B, rsb, csb, M, N, K, 1.0f, beta);
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
