/* lors.c: LoRS forward/backward/merge on a dense-masked base.
 * The recompute of W' = W + s*(B A)*M lives in two pack-B callbacks of the GEMM core:
 * pack_forward writes micro-panels of W'^T (for y = x W'^T), pack_backward micro-panels of W'
 * (for gx = gy W'). Each panel costs kc * 16 * r FMAs and nothing of size out x in is stored.
 * The exact gradient walks (out, in) tiles of G = gy^T x, masks each and reduces it into dA, dB. */
#include "lors.h"

#include <string.h>

#include "common.h"
#include "simd_avx2.h"
#include "gemm.h"

#if SFT_X86
#include <immintrin.h>
#endif

/* ---- row rebuild: dst[i] = M[i] ? W[i] + s * sum_t Bj[t] A[t][i] : W[i] ------------------- */

/* A points at column 0 of the row segment, lda is the row stride of A (r, in); n <= GEMM_KC. */
typedef void (*row_fn)(float *dst, const float *w, const uint8_t *m, const float *A, int64_t lda,
                       const float *Bj, float s, int64_t r, int64_t n);

static void row_rebuild_portable(float *dst, const float *w, const uint8_t *m, const float *A, int64_t lda,
                                 const float *Bj, float s, int64_t r, int64_t n) {
    float acc[GEMM_KC];
    if (s == 0.0f || r == 0) {
        // no adapter: W' = W
        for (int64_t i = 0; i < n; i++) dst[i] = w[i];
        return;
    }
    // acc = (B A)[j, segment], one rank at a time
    for (int64_t i = 0; i < n; i++) acc[i] = 0.0f;
    for (int64_t t = 0; t < r; t++) {
        const float b = Bj[t];
        const float *a = A + t * lda;
        for (int64_t i = 0; i < n; i++) acc[i] += b * a[i];
    }
    // select W + s*acc at the mask, W elsewhere
    for (int64_t i = 0; i < n; i++) dst[i] = m[i] ? w[i] + s * acc[i] : w[i];
}

#if SFT_X86
/* 8 mask bytes -> an all-ones float lane where the byte is nonzero. */
SFT_TARGET_AVX2 static inline __m256 mask8(const uint8_t *m) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)m));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_setzero_si256()));
}

SFT_TARGET_AVX2 static void row_rebuild_avx2(float *dst, const float *w, const uint8_t *m, const float *A,
                                             int64_t lda, const float *Bj, float s, int64_t r, int64_t n) {
    if (s == 0.0f || r == 0) {
        // no adapter: W' = W
        memcpy(dst, w, sizeof(float) * (size_t)n);
        return;
    }
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    // 32 columns at a time: four independent FMA chains over the rank
    for (; i + 32 <= n; i += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t t = 0; t < r; t++) {
            const __m256 b = _mm256_broadcast_ss(Bj + t);
            const float *a = A + t * lda + i;
            a0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a), a0);
            a1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a + 8), a1);
            a2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a + 16), a2);
            a3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a + 24), a3);
        }
        __m256 acc[4] = {a0, a1, a2, a3};
        for (int q = 0; q < 4; q++) {
            __m256 wv = _mm256_loadu_ps(w + i + 8 * q);
            __m256 nv = _mm256_fmadd_ps(vs, acc[q], wv);
            _mm256_storeu_ps(dst + i + 8 * q, _mm256_blendv_ps(wv, nv, mask8(m + i + 8 * q)));
        }
    }
    // 8 columns at a time
    for (; i + 8 <= n; i += 8) {
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t t = 0; t < r; t++)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(Bj + t), _mm256_loadu_ps(A + t * lda + i), a0);
        __m256 wv = _mm256_loadu_ps(w + i);
        _mm256_storeu_ps(dst + i, _mm256_blendv_ps(wv, _mm256_fmadd_ps(vs, a0, wv), mask8(m + i)));
    }
    // remaining columns one by one
    for (; i < n; i++) {
        float acc = 0.0f;
        for (int64_t t = 0; t < r; t++) acc += Bj[t] * A[t * lda + i];
        dst[i] = m[i] ? w[i] + s * acc : w[i];
    }
}
#endif

static row_fn select_row(void) {
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) return row_rebuild_avx2;
#endif
    return row_rebuild_portable;
}

/* The A segment A[:, k0 : k0+kc] copied into buf (r, kc) when it fits (LORS_APANEL floats), so
 * its r rows sit kc floats apart instead of `in` apart (rows `in` = 2^k floats apart all land in
 * the same L1 sets and evict each other). Returns the segment and its row stride in *ld. */
#define LORS_APANEL 8192
static const float *a_segment(float *buf, const float *A, int64_t in, int64_t k0, int64_t kc, int64_t r,
                              int64_t *ld) {
    if (r * kc > LORS_APANEL) {
        *ld = in;
        return A + k0;
    }
    // copy row by row
    for (int64_t t = 0; t < r; t++) memcpy(buf + t * kc, A + t * in + k0, sizeof(float) * (size_t)kc);
    *ld = kc;
    return buf;
}

/* ---- pack-B callbacks: W' rebuilt panel by panel ----------------------------------------- */

typedef struct {
    const float *W;   /* (out, in) */
    const uint8_t *M; /* (out, in) */
    const float *A;   /* (r, in) */
    const float *B;   /* (out, r) */
    float s;
    int64_t in, r;
    row_fn row;
} lors_ctx;

/* rows (nc, GEMM_KC): rows j0 .. j0+nc of W' on columns [k0, k0+kc), rebuilt one by one. */
static void rebuild_rows(float *rows, const lors_ctx *c, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
    float abuf[LORS_APANEL] __attribute__((aligned(64)));
    int64_t lda;
    const float *a = a_segment(abuf, c->A, c->in, k0, kc, c->r, &lda);
    // rebuild row j0+jj of W' on columns [k0, k0+kc)
    for (int64_t jj = 0; jj < nc; jj++) {
        int64_t j = j0 + jj;
        c->row(rows + jj * GEMM_KC, c->W + j * c->in + k0, c->M + j * c->in + k0, a, lda, c->B + j * c->r,
               c->s, c->r, kc);
    }
}

/* op(B)[k][j] = W'[j][k] (k over in, j over out): rebuild nc rows of W' over kc columns, then
 * transpose them into the k-major micro-panel. */
static void pack_forward(float *dst, const void *vctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
    const lors_ctx *c = (const lors_ctx *)vctx;
    float rows[GEMM_NR * GEMM_KC] __attribute__((aligned(64)));
    rebuild_rows(rows, c, k0, kc, j0, nc);
    // transpose into dst (kc, NR), zero-padding columns past nc
    for (int64_t kk = 0; kk < kc; kk++) {
        float *d = dst + kk * GEMM_NR;
        for (int64_t jj = 0; jj < nc; jj++) d[jj] = rows[jj * GEMM_KC + kk];
        for (int64_t jj = nc; jj < GEMM_NR; jj++) d[jj] = 0.0f;
    }
}

#if SFT_X86

/* pack_forward for full 16-wide panels: rows rebuilt as before, transposed 8 x 8 in registers. */
SFT_TARGET_AVX2 static void pack_forward_avx2(float *dst, const void *vctx, int64_t k0, int64_t kc,
                                              int64_t j0, int64_t nc) {
    const lors_ctx *c = (const lors_ctx *)vctx;
    if (nc != GEMM_NR) {
        pack_forward(dst, vctx, k0, kc, j0, nc);
        return;
    }
    float rows[GEMM_NR * GEMM_KC] __attribute__((aligned(64)));
    rebuild_rows(rows, c, k0, kc, j0, GEMM_NR);
    int64_t kk = 0;
    // 8 depth indices x 8 rows per transpose, two per 16-wide panel row
    for (; kk + 8 <= kc; kk += 8)
        for (int h = 0; h < 2; h++) {
            __m256 v[8];
            for (int q = 0; q < 8; q++) v[q] = _mm256_load_ps(rows + (8 * h + q) * GEMM_KC + kk);
            sft_transpose8_ps(v);
            for (int q = 0; q < 8; q++) _mm256_store_ps(dst + (kk + q) * GEMM_NR + 8 * h, v[q]);
        }
    // remaining depth indices one by one
    for (; kk < kc; kk++)
        for (int64_t jj = 0; jj < GEMM_NR; jj++) dst[kk * GEMM_NR + jj] = rows[jj * GEMM_KC + kk];
}
#endif

/* op(B)[k][j] = W'[k][j] (k over out, j over in): each panel row is a 16-wide row segment of W'. */
static void pack_backward(float *dst, const void *vctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
    const lors_ctx *c = (const lors_ctx *)vctx;
    float abuf[LORS_APANEL] __attribute__((aligned(64)));
    int64_t lda;
    const float *a = a_segment(abuf, c->A, c->in, j0, nc, c->r, &lda);
    // one row of W' per depth index
    for (int64_t kk = 0; kk < kc; kk++) {
        int64_t k = k0 + kk;
        float *d = dst + kk * GEMM_NR;
        c->row(d, c->W + k * c->in + j0, c->M + k * c->in + j0, a, lda, c->B + k * c->r, c->s, c->r, nc);
        for (int64_t jj = nc; jj < GEMM_NR; jj++) d[jj] = 0.0f;
    }
}

#if SFT_X86
/* pack_backward for full 16-wide panels: four rows of W' at a time share the loads of A. */
SFT_TARGET_AVX2 static void pack_backward_avx2(float *dst, const void *vctx, int64_t k0, int64_t kc,
                                               int64_t j0, int64_t nc) {
    const lors_ctx *c = (const lors_ctx *)vctx;
    if (nc != GEMM_NR || c->s == 0.0f || c->r == 0) {
        pack_backward(dst, vctx, k0, kc, j0, nc);
        return;
    }
    const __m256 vs = _mm256_set1_ps(c->s);
    const int64_t in = c->in, r = c->r;
    float abuf[LORS_APANEL] __attribute__((aligned(64)));
    int64_t lda;
    const float *A = a_segment(abuf, c->A, in, j0, GEMM_NR, r, &lda);
    int64_t kk = 0;
    // four rows of W' per step: 8 independent FMA chains over the rank
    for (; kk + 4 <= kc; kk += 4) {
        __m256 acc[4][2];
        for (int q = 0; q < 4; q++) acc[q][0] = acc[q][1] = _mm256_setzero_ps();
        const float *b = c->B + (k0 + kk) * r;
        for (int64_t t = 0; t < r; t++) {
            __m256 a0 = _mm256_loadu_ps(A + t * lda), a1 = _mm256_loadu_ps(A + t * lda + 8);
            for (int q = 0; q < 4; q++) {
                __m256 bq = _mm256_broadcast_ss(b + q * r + t);
                acc[q][0] = _mm256_fmadd_ps(bq, a0, acc[q][0]);
                acc[q][1] = _mm256_fmadd_ps(bq, a1, acc[q][1]);
            }
        }
        // select W + s*acc at the mask and store the four panel rows
        for (int q = 0; q < 4; q++) {
            int64_t off = (k0 + kk + q) * in + j0;
            for (int h = 0; h < 2; h++) {
                __m256 wv = _mm256_loadu_ps(c->W + off + 8 * h);
                __m256 nv = _mm256_fmadd_ps(vs, acc[q][h], wv);
                _mm256_store_ps(dst + (kk + q) * GEMM_NR + 8 * h,
                                _mm256_blendv_ps(wv, nv, mask8(c->M + off + 8 * h)));
            }
        }
    }
    // remaining rows
    if (kk < kc) pack_backward(dst + kk * GEMM_NR, vctx, k0 + kk, kc - kk, j0, nc);
}
#endif

/* Output rows of the exact gradient's slabs start at multiples of this. */
#define LORS_ROW_ALIGN 8

/* [lo, hi) of n items for thread tid of nt, slice starts rounded to multiples of align. */
static void split_range(int64_t n, int tid, int nt, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t per = sft_round_up(sft_ceil_div(n, nt), align);
    *lo = SFT_MIN(n, tid * per);
    *hi = SFT_MIN(n, *lo + per);
}

int lors_forward(float *y, const float *x, const float *W, const uint8_t *M, const float *A, const float *B,
                 const float *bias, float s, int64_t N, int64_t in, int64_t out, int64_t r) {
    if (N <= 0 || out <= 0) return 0;
    lors_ctx c = {W, M, A, B, s, in, r, select_row()};
    gemm_pack_b_fn pack = pack_forward;
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) pack = pack_forward_avx2;
#endif
    float beta = 0.0f;
    if (bias != NULL) {
        // start every row of y at the bias, then accumulate
        for (int64_t n = 0; n < N; n++) memcpy(y + n * out, bias, sizeof(float) * (size_t)out);
        beta = 1.0f;
    }
    return sgemm_packb(y, out, x, in, 1, pack, &c, N, out, in, beta);
}

void lors_forward_naive(float *y, const float *x, const float *W, const uint8_t *M, const float *A,
                        const float *B, const float *bias, float s, int64_t N, int64_t in, int64_t out,
                        int64_t r) {
    // one output at a time, W' recomputed element by element
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < out; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < in; k++) {
                float wp = W[j * in + k];
                if (M[j * in + k] && s != 0.0f) { /* scale 0: the adapter is off, W' = W */
                    float ba = 0.0f;
                    for (int64_t t = 0; t < r; t++) ba += B[j * r + t] * A[t * in + k];
                    wp += s * ba;
                }
                acc += x[n * in + k] * wp;
            }
            y[n * out + j] = acc + (bias != NULL ? bias[j] : 0.0f);
        }
}

int lors_backward_input(float *gx, const float *gy, const float *W, const uint8_t *M, const float *A,
                        const float *B, float s, int64_t N, int64_t in, int64_t out, int64_t r) {
    if (N <= 0 || in <= 0) return 0;
    lors_ctx c = {W, M, A, B, s, in, r, select_row()};
    gemm_pack_b_fn pack = pack_backward;
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) pack = pack_backward_avx2;
#endif
    return sgemm_packb(gx, in, gy, out, 1, pack, &c, N, in, out, 0.0f);
}

void lors_backward_input_naive(float *gx, const float *gy, const float *W, const uint8_t *M, const float *A,
                               const float *B, float s, int64_t N, int64_t in, int64_t out, int64_t r) {
    // one input-gradient entry at a time
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < in; k++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < out; j++) {
                float wp = W[j * in + k];
                if (M[j * in + k] && s != 0.0f) { /* scale 0: the adapter is off, W' = W */
                    float ba = 0.0f;
                    for (int64_t t = 0; t < r; t++) ba += B[j * r + t] * A[t * in + k];
                    wp += s * ba;
                }
                acc += gy[n * out + j] * wp;
            }
            gx[n * in + k] = acc;
        }
}

/* ---- exact masked gradient ---------------------------------------------------------------- */

/* 1 when any mask byte of the (to, ti) tile at row stride ld is set. */
static int tile_any(const uint8_t *m, int64_t ld, int64_t to, int64_t ti) {
    // scan rows until a set byte shows up
    for (int64_t a = 0; a < to; a++) {
        const uint8_t *row = m + a * ld;
        for (int64_t b = 0; b < ti; b++)
            if (row[b]) return 1;
    }
    return 0;
}

/* G (to, ti) with row stride ti: zero the entries whose mask byte is 0. */
static void mask_tile_portable(float *G, const uint8_t *m, int64_t ld, int64_t to, int64_t ti) {
    // row by row, select G or 0
    for (int64_t a = 0; a < to; a++) {
        float *g = G + a * ti;
        const uint8_t *row = m + a * ld;
        for (int64_t b = 0; b < ti; b++) g[b] = row[b] ? g[b] : 0.0f;
    }
}

#if SFT_X86
SFT_TARGET_AVX2 static void mask_tile_avx2(float *G, const uint8_t *m, int64_t ld, int64_t to, int64_t ti) {
    // row by row, 8 lanes at a time, then the tail
    for (int64_t a = 0; a < to; a++) {
        float *g = G + a * ti;
        const uint8_t *row = m + a * ld;
        int64_t b = 0;
        for (; b + 8 <= ti; b += 8)
            _mm256_storeu_ps(g + b, _mm256_and_ps(_mm256_loadu_ps(g + b), mask8(row + b)));
        for (; b < ti; b++) g[b] = row[b] ? g[b] : 0.0f;
    }
}
#endif

int64_t lors_scratch_bytes(int nthreads, int64_t in, int64_t out, int64_t r) {
    return (int64_t)sizeof(float) *
           ((int64_t)nthreads * LORS_TILE_O * LORS_TILE_I + (nthreads - 1) * r * (in + out));
}

int lors_backward_exact(float *dA, float *dB, const float *gy, const float *x, const uint8_t *M,
                        const float *A, const float *B, float s, int64_t N, int64_t in, int64_t out,
                        int64_t r) {
    memset(dA, 0, sizeof(float) * (size_t)(r * in));
    memset(dB, 0, sizeof(float) * (size_t)(out * r));
    // scale 0: the adapter is off and its gradients are exactly 0 (never 0 * inf)
    if (N <= 0 || r <= 0 || in <= 0 || out <= 0 || s == 0.0f) return 0;
    int nth = sft_get_num_threads();
    // each thread takes one slab of output rows (as equal as LORS_ROW_ALIGN allows) and tiles
    // it with equal tiles of at most LORS_TILE_O x LORS_TILE_I, so no thread gets a whole tile
    // row more than another (as a fixed tile grid dealt out statically would give)
    if ((int64_t)nth > sft_ceil_div(out, LORS_ROW_ALIGN)) nth = (int)sft_ceil_div(out, LORS_ROW_ALIGN);
    const int64_t n_ti = sft_ceil_div(in, LORS_TILE_I);
    const int64_t ti_eq = SFT_MIN(LORS_TILE_I, sft_round_up(sft_ceil_div(in, n_ti), 16));
    /* per thread: one G tile, and (threads after the first) partial dA and dB summed at the end */
    float *G_all = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nth * LORS_TILE_O * LORS_TILE_I);
    float *part =
        nth > 1 ? (float *)sft_scratch_alloc(sizeof(float) * (size_t)(nth - 1) * (size_t)(r * (in + out)))
                : NULL;
    if (G_all == NULL || (nth > 1 && part == NULL)) {
        sft_scratch_free(G_all);
        sft_scratch_free(part);
        return -1;
    }
    if (part != NULL) memset(part, 0, sizeof(float) * (size_t)(nth - 1) * (size_t)(r * (in + out)));
    void (*mask_tile)(float *, const uint8_t *, int64_t, int64_t, int64_t) = mask_tile_portable;
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) mask_tile = mask_tile_avx2;
#endif
    int rc = 0;
#pragma omp parallel num_threads(nth) reduction(| : rc)
    {
        int tid = sft_thread_num(), nt = sft_team_size();
        float *G = G_all + (int64_t)tid * LORS_TILE_O * LORS_TILE_I;
        float *pA = tid == 0 ? dA : part + (int64_t)(tid - 1) * r * (in + out);
        float *pB = tid == 0 ? dB : pA + r * in;
        // this thread's slab of output rows and its tile height (a fixed thread count gives a
        // fixed partition and order); the GEMMs inside run on this thread alone
        int64_t lo, hi;
        split_range(out, tid, nt, LORS_ROW_ALIGN, &lo, &hi);
        const int64_t n_to = sft_ceil_div(hi - lo, LORS_TILE_O);
        const int64_t to_eq = n_to == 0 ? 0 : sft_round_up(sft_ceil_div(hi - lo, n_to), LORS_ROW_ALIGN);
        // loop over the slab's tiles, row tiles outer
        for (int64_t o0 = lo; o0 < hi; o0 += to_eq)
            for (int64_t i0 = 0; i0 < in; i0 += ti_eq) {
                int64_t to = SFT_MIN(to_eq, hi - o0), ti = SFT_MIN(ti_eq, in - i0);
                const uint8_t *m = M + o0 * in + i0;
                if (!tile_any(m, in, to, ti)) continue;
                // G = gy[:, o-tile]^T x[:, i-tile]  (to, ti), over the N tokens
                rc |= sgemm(G, ti, gy + o0, 1, out, x + i0, in, 1, to, ti, N, 0.0f);
                mask_tile(G, m, in, to, ti);
                // dB[o-tile] += G A[:, i-tile]^T  (to, r)
                rc |= sgemm(pB + o0 * r, r, G, ti, 1, A + i0, 1, in, to, r, ti, 1.0f);
                // dA[:, i-tile] += B[o-tile]^T G  (r, ti)
                rc |= sgemm(pA + i0, in, B + o0 * r, 1, r, G, ti, 1, r, ti, to, 1.0f);
            }
    }
    // partial sums of the other threads, in thread order
    for (int t = 1; t < nth; t++) {
        const float *pA = part + (int64_t)(t - 1) * r * (in + out), *pB = pA + r * in;
        for (int64_t i = 0; i < r * in; i++) dA[i] += pA[i];
        for (int64_t i = 0; i < out * r; i++) dB[i] += pB[i];
    }
    sft_scratch_free(part);
    sft_scratch_free(G_all);
    // the scale, once at the end
    for (int64_t i = 0; i < r * in; i++) dA[i] *= s;
    for (int64_t i = 0; i < out * r; i++) dB[i] *= s;
    return rc == 0 ? 0 : -1;
}

void lors_backward_exact_naive(float *dA, float *dB, const float *gy, const float *x, const uint8_t *M,
                               const float *A, const float *B, float s, int64_t N, int64_t in, int64_t out,
                               int64_t r) {
    memset(dA, 0, sizeof(float) * (size_t)(r * in));
    memset(dB, 0, sizeof(float) * (size_t)(out * r));
    if (s == 0.0f) return; /* the adapter is off: its gradients are exactly 0 */
    // one masked entry of G = gy^T x at a time, scattered into dA and dB
    for (int64_t j = 0; j < out; j++)
        for (int64_t k = 0; k < in; k++) {
            if (!M[j * in + k]) continue;
            float g = 0.0f;
            for (int64_t n = 0; n < N; n++) g += gy[n * out + j] * x[n * in + k];
            for (int64_t t = 0; t < r; t++) {
                dB[j * r + t] += s * g * A[t * in + k];
                dA[t * in + k] += s * B[j * r + t] * g;
            }
        }
}

/* ---- rearranged ("lors") gradient -------------------------------------------------------- */

int lors_backward_lors(float *dA, float *dB, const float *gy, const float *x, const float *A, const float *B,
                       float s, int64_t N, int64_t in, int64_t out, int64_t r) {
    // no tokens, no outputs (gy B = 0), no inputs (x A^T = 0) or scale 0 (the adapter is off):
    // the gradients are exactly 0
    if (N <= 0 || r <= 0 || in <= 0 || out <= 0 || s == 0.0f) {
        memset(dA, 0, sizeof(float) * (size_t)(r * in));
        memset(dB, 0, sizeof(float) * (size_t)(out * r));
        return 0;
    }
    float *xa = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(2 * N * r));
    if (xa == NULL) return -1;
    float *gb = xa + N * r;
    int rc = 0;
#pragma omp parallel num_threads(sft_get_num_threads()) reduction(| : rc)
    {
        int tid = sft_thread_num(), nt = sft_team_size();
        int64_t lo, hi;
        // xa = x A^T and gb = gy B on this thread's token rows (the GEMMs run on this thread alone)
        split_range(N, tid, nt, gemm_mr(), &lo, &hi);
        rc |= sgemm(xa + lo * r, r, x + lo * in, in, 1, A, 1, in, hi - lo, r, in, 0.0f);
        rc |= sgemm(gb + lo * r, r, gy + lo * out, out, 1, B, r, 1, hi - lo, r, out, 0.0f);
#pragma omp barrier
        // dB rows: gy[:, rows]^T xa, over the N tokens
        split_range(out, tid, nt, gemm_mr(), &lo, &hi);
        rc |= sgemm(dB + lo * r, r, gy + lo, 1, out, xa, r, 1, hi - lo, r, N, 0.0f);
        for (int64_t i = lo * r; i < hi * r; i++) dB[i] *= s;
        // dA columns: gb^T x[:, cols], over the N tokens
        split_range(in, tid, nt, GEMM_NR, &lo, &hi);
        rc |= sgemm(dA + lo, in, gb, 1, r, x + lo, in, 1, r, hi - lo, N, 0.0f);
        for (int64_t t = 0; t < r; t++)
            for (int64_t i = lo; i < hi; i++) dA[t * in + i] *= s;
    }
    sft_scratch_free(xa);
    return rc == 0 ? 0 : -1;
}

void lors_backward_lors_naive(float *dA, float *dB, const float *gy, const float *x, const float *A,
                              const float *B, float s, int64_t N, int64_t in, int64_t out, int64_t r) {
    memset(dA, 0, sizeof(float) * (size_t)(r * in));
    memset(dB, 0, sizeof(float) * (size_t)(out * r));
    if (s == 0.0f) return; /* the adapter is off: its gradients are exactly 0 */
    // token by token: xa = x[n] A^T, gb = gy[n] B, then the two rank-1 style updates
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < r; t++) {
            float xa = 0.0f, gb = 0.0f;
            for (int64_t k = 0; k < in; k++) xa += x[n * in + k] * A[t * in + k];
            for (int64_t j = 0; j < out; j++) gb += gy[n * out + j] * B[j * r + t];
            for (int64_t j = 0; j < out; j++) dB[j * r + t] += s * gy[n * out + j] * xa;
            for (int64_t k = 0; k < in; k++) dA[t * in + k] += s * gb * x[n * in + k];
        }
}

/* ---- merge / unmerge ---------------------------------------------------------------------- */

void lors_merge(float *Wout, const float *W, const uint8_t *M, const float *A, const float *B, float s,
                int64_t in, int64_t out, int64_t r) {
    row_fn row = select_row();
    int64_t n_blocks = sft_ceil_div(out, GEMM_NR);
    // blocks of GEMM_NR rows shared out among threads
#pragma omp parallel for schedule(static) num_threads(sft_get_num_threads())
    for (int64_t b = 0; b < n_blocks; b++) {
        float abuf[LORS_APANEL] __attribute__((aligned(64)));
        int64_t j_end = SFT_MIN(out, (b + 1) * GEMM_NR);
        // GEMM_KC-wide column segments, the A segment shared by the block's rows
        for (int64_t k0 = 0; k0 < in; k0 += GEMM_KC) {
            int64_t kc = SFT_MIN(GEMM_KC, in - k0), lda;
            const float *a = a_segment(abuf, A, in, k0, kc, r, &lda);
            for (int64_t j = b * GEMM_NR; j < j_end; j++)
                row(Wout + j * in + k0, W + j * in + k0, M + j * in + k0, a, lda, B + j * r, s, r, kc);
        }
    }
}

void lors_merge_naive(float *Wout, const float *W, const uint8_t *M, const float *A, const float *B, float s,
                      int64_t in, int64_t out, int64_t r) {
    // element by element (scale 0: the adapter is off, W' = W)
    for (int64_t j = 0; j < out; j++)
        for (int64_t k = 0; k < in; k++) {
            float ba = 0.0f;
            for (int64_t t = 0; t < r; t++) ba += B[j * r + t] * A[t * in + k];
            Wout[j * in + k] = M[j * in + k] && s != 0.0f ? W[j * in + k] + s * ba : W[j * in + k];
        }
}
