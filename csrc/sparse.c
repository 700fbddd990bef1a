/* sparse.c: SpMM / SDDMM kernels over the CSR and N:M base formats with W' recomputed on the fly.
 *
 * Blocking (outer to inner), the same for forward and backward:
 *   token block of NC tokens -> transpose x (and gx) into (in, NCpad) panels, tokens contiguous
 *   -> row chunk (<= CHUNK_NNZ nonzeros, <= CHUNK_ROWS rows): W' values of the chunk recomputed once
 *      (shared by the threads), N:M indices expanded to columns
 *   -> every thread takes its own token range of the block and sweeps all rows of the chunk:
 *      forward: a register tile of up to 64 tokens per row, accumulated over the row's nonzeros;
 *      backward: per nonzero, gx panel row j += w' * gy row (scatter) and g_ij += <gy row, x row j>
 *   -> backward: the per-thread partial g of the chunk are summed in thread order and reduced into
 *      dB (rows split among threads) and a per-thread dA^T, summed in thread order at the end.
 * Deterministic for a fixed thread count (every sum has a fixed order). */
#include "sparse.h"

#include <string.h>

#include "common.h"

#if SFT_X86
#include <immintrin.h>
#endif

#define TOK_VEC 8               /* tokens per vector; thread token ranges are multiples of it */
#define TOK_TILE 64             /* tokens of one forward register tile (8 vectors) */
#define CHUNK_NNZ 8192          /* nonzeros of a row chunk (W' and columns: 64 KiB) */
#define CHUNK_ROWS 256          /* rows of a row chunk */
#define PANEL_BYTES (768 << 10) /* bytes of token panels per thread */
#define ALWAYS_INLINE inline __attribute__((always_inline))

int64_t sparse_token_block(int64_t in, int nthreads, int backward) {
    int64_t per_token = 4 * SFT_MAX(in, 1) * (backward ? 2 : 1);
    int64_t nc = (int64_t)PANEL_BYTES * SFT_MAX(nthreads, 1) / per_token;
    nc = nc / TOK_VEC * TOK_VEC;
    // at least one vector, at most 512 tokens per block
    return SFT_MIN(SFT_MAX(nc, TOK_VEC), 512);
}

/* ---- format access ------------------------------------------------------------------------- */

/* Offset of row i's first nonzero in W->values. */
static ALWAYS_INLINE int64_t row_begin(const sparse_base *W, int64_t i) {
    if (W->kind == SPARSE_CSR) return W->rowptr[i];
    return i * (W->m > 0 ? W->in / W->m * W->n : 0);
}

/* End (exclusive) of the row chunk starting at row i0. */
static int64_t chunk_end(const sparse_base *W, int64_t i0) {
    int64_t i1 = i0 + 1;
    int64_t lim = SFT_MIN(W->out, i0 + CHUNK_ROWS);
    // grow while the chunk stays within CHUNK_NNZ nonzeros
    while (i1 < lim && row_begin(W, i1 + 1) - row_begin(W, i0) <= CHUNK_NNZ) i1++;
    return i1;
}

/* Largest number of nonzeros a chunk can hold (a single long row may exceed CHUNK_NNZ). */
static int64_t chunk_capacity(const sparse_base *W) {
    return SFT_MAX((int64_t)CHUNK_NNZ, W->in);
}

/* Columns of the nonzeros of rows [i_lo, i_hi) into col[k - off0]. */
static ALWAYS_INLINE void fill_cols(int32_t *col, const sparse_base *W, int64_t i_lo, int64_t i_hi,
                                    int64_t off0) {
    if (W->kind == SPARSE_CSR) {
        int64_t b = W->rowptr[i_lo], e = W->rowptr[i_hi];
        memcpy(col + (b - off0), W->colidx + b, sizeof(int32_t) * (size_t)(e - b));
        return;
    }
    int64_t kpr = W->in / W->m * W->n;
    // loop over rows, then kept entries (group kk / n, position idx inside the group)
    for (int64_t i = i_lo; i < i_hi; i++) {
        int64_t b = i * kpr;
        for (int64_t kk = 0; kk < kpr; kk++)
            col[b + kk - off0] = (int32_t)((kk / W->n) * W->m + W->idx[b + kk]);
    }
}

/* ---- W' recompute: w'[k] = v[k] + s * <B[i,:], A[:,col[k]]>, with AT (in, r) = A^T ---------- */

static void recompute_portable(float *wv, const int32_t *col, const float *v, const float *Bi,
                               const float *AT, float scale, int64_t cnt, int64_t r) {
    // one dot product of length r per nonzero
    for (int64_t k = 0; k < cnt; k++) {
        const float *a = AT + (int64_t)col[k] * r;
        float s0 = 0.0f, s1 = 0.0f;
        int64_t q = 0;
        for (; q + 1 < r; q += 2) s0 += Bi[q] * a[q], s1 += Bi[q + 1] * a[q + 1];
        if (q < r) s0 += Bi[q] * a[q];
        wv[k] = v[k] + scale * (s0 + s1);
    }
}

#if SFT_X86
/* Sum of the 8 lanes of v. */
SFT_TARGET_AVX2 static ALWAYS_INLINE float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Lane u of the result = sum of the lanes of v[u]. */
SFT_TARGET_AVX2 static ALWAYS_INLINE __m256 hsum8_avx2(const __m256 *v) {
    __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    t0 = _mm256_hadd_ps(t0, t1);
    t2 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

/* The same, 8 nonzeros at a time: 8 vector dot products reduced together. */
SFT_TARGET_AVX2 static void recompute_avx2(float *wv, const int32_t *col, const float *v, const float *Bi,
                                           const float *AT, float scale, int64_t cnt, int64_t r) {
    int64_t r8 = r / 8 * 8;
    __m256 vs = _mm256_set1_ps(scale);
    int64_t k = 0;
    // blocks of 8 nonzeros
    for (; k + 8 <= cnt; k += 8) {
        __m256 acc[8];
        float tail[8] = {0};
        for (int u = 0; u < 8; u++) {
            const float *a = AT + (int64_t)col[k + u] * r;
            __m256 s = _mm256_setzero_ps();
            for (int64_t q = 0; q < r8; q += 8)
                s = _mm256_fmadd_ps(_mm256_loadu_ps(Bi + q), _mm256_loadu_ps(a + q), s);
            acc[u] = s;
            for (int64_t q = r8; q < r; q++) tail[u] += Bi[q] * a[q];
        }
        __m256 dot = _mm256_add_ps(hsum8_avx2(acc), _mm256_loadu_ps(tail));
        _mm256_storeu_ps(wv + k, _mm256_fmadd_ps(vs, dot, _mm256_loadu_ps(v + k)));
    }
    // remaining nonzeros one by one
    for (; k < cnt; k++) {
        const float *a = AT + (int64_t)col[k] * r;
        __m256 s = _mm256_setzero_ps();
        for (int64_t q = 0; q < r8; q += 8)
            s = _mm256_fmadd_ps(_mm256_loadu_ps(Bi + q), _mm256_loadu_ps(a + q), s);
        float t = hsum_avx2(s);
        for (int64_t q = r8; q < r; q++) t += Bi[q] * a[q];
        wv[k] = v[k] + scale * t;
    }
}
#endif

typedef void (*recompute_fn)(float *, const int32_t *, const float *, const float *, const float *, float,
                             int64_t, int64_t);

static recompute_fn select_recompute(void) {
#if SFT_X86
    if (sft_simd_path == SFT_SIMD_AVX2) return recompute_avx2;
#endif
    return recompute_portable;
}

/* Columns (and W' values when wv != NULL) of rows [i_lo, i_hi), stored at [k - off0]. */
static void fill_rows(float *wv, int32_t *col, const sparse_base *W, const float *AT, const float *B,
                      float scale, int64_t r, int64_t i_lo, int64_t i_hi, int64_t off0, recompute_fn rc) {
    fill_cols(col, W, i_lo, i_hi, off0);
    if (wv == NULL) return;
    // one row at a time: B[i,:] is shared by the row's nonzeros
    for (int64_t i = i_lo; i < i_hi; i++) {
        int64_t b = row_begin(W, i), e = row_begin(W, i + 1);
        rc(wv + (b - off0), col + (b - off0), W->values + b, B + i * r, AT, scale, e - b, r);
    }
}

/* AT (in, r) = A (r, in)^T, rows split among the threads of the enclosing parallel region. */
static void transpose_A(float *AT, const float *A, int64_t r, int64_t in) {
#pragma omp for schedule(static)
    for (int64_t j = 0; j < in; j++)
        for (int64_t q = 0; q < r; q++) AT[j * r + q] = A[q * in + j];
}

/* dst (cols, ld) panel: dst[j*ld + t] = src[(t0+t)*cols + j] for t < nc, 0 for nc <= t < ncpad.
 * Column blocks split among the threads of the enclosing parallel region. */
static void pack_transposed(float *dst, int64_t ld, const float *src, int64_t cols, int64_t t0, int64_t nc,
                            int64_t ncpad) {
#pragma omp for schedule(static)
    for (int64_t jb = 0; jb < cols; jb += 64) {
        int64_t je = SFT_MIN(cols, jb + 64);
        // tokens outer (contiguous reads of a row of src), columns inner
        for (int64_t t = 0; t < nc; t++) {
            const float *s = src + (t0 + t) * cols;
            for (int64_t j = jb; j < je; j++) dst[j * ld + t] = s[j];
        }
        for (int64_t j = jb; j < je; j++)
            for (int64_t t = nc; t < ncpad; t++) dst[j * ld + t] = 0.0f;
    }
}

/* Token range [ta, tb) of thread tid of nth in a block of ncpad tokens (multiples of TOK_VEC). */
static void token_range(int64_t ncpad, int tid, int nth, int64_t *ta, int64_t *tb) {
    int64_t units = ncpad / TOK_VEC;
    *ta = units * tid / nth * TOK_VEC;
    *tb = units * (tid + 1) / nth * TOK_VEC;
}

/* ---- forward row tiles: yt[t] = sum_k wv[k] * xT[col[k]*ldx + t], t < nv*8 ------------------ */

static void fwd_tile_portable(float *yt, const float *wv, const int32_t *col, int64_t cnt, const float *xT,
                              int64_t ldx, int64_t nt) {
    float acc[TOK_TILE];
    memset(acc, 0, sizeof acc);
    // loop over the row's nonzeros, a run of tokens each
    for (int64_t k = 0; k < cnt; k++) {
        const float w = wv[k];
        const float *p = xT + (int64_t)col[k] * ldx;
        for (int64_t t = 0; t < nt; t++) acc[t] += w * p[t];
    }
    memcpy(yt, acc, sizeof(float) * (size_t)nt);
}

#if SFT_X86
/* 8 accumulators (64 tokens) kept in registers across all nonzeros of the row. */
SFT_TARGET_AVX2 static void fwd_tile64_avx2(float *yt, const float *wv, const int32_t *col, int64_t cnt,
                                            const float *xT, int64_t ldx) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
    __m256 a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps();
    __m256 a6 = _mm256_setzero_ps(), a7 = _mm256_setzero_ps();
    // loop over the row's nonzeros: one broadcast, 8 loads, 8 FMAs
    for (int64_t k = 0; k < cnt; k++) {
        __m256 w = _mm256_broadcast_ss(wv + k);
        const float *p = xT + (int64_t)col[k] * ldx;
        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 0), a0);
        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8), a1);
        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 16), a2);
        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 24), a3);
        a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 32), a4);
        a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 40), a5);
        a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 48), a6);
        a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 56), a7);
    }
    _mm256_storeu_ps(yt + 0, a0), _mm256_storeu_ps(yt + 8, a1), _mm256_storeu_ps(yt + 16, a2);
    _mm256_storeu_ps(yt + 24, a3), _mm256_storeu_ps(yt + 32, a4), _mm256_storeu_ps(yt + 40, a5);
    _mm256_storeu_ps(yt + 48, a6), _mm256_storeu_ps(yt + 56, a7);
}

/* Fewer than 64 tokens: one vector at a time, two accumulators (even/odd nonzeros). */
SFT_TARGET_AVX2 static void fwd_tile_avx2(float *yt, const float *wv, const int32_t *col, int64_t cnt,
                                          const float *xT, int64_t ldx, int64_t nt) {
    if (nt == TOK_TILE) {
        fwd_tile64_avx2(yt, wv, col, cnt, xT, ldx);
        return;
    }
    // loop over vectors of tokens, then nonzeros
    for (int64_t t = 0; t < nt; t += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 2 <= cnt; k += 2) {
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(wv + k), _mm256_loadu_ps(xT + (int64_t)col[k] * ldx + t),
                                 a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(wv + k + 1),
                                 _mm256_loadu_ps(xT + (int64_t)col[k + 1] * ldx + t), a1);
        }
        if (k < cnt)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(wv + k), _mm256_loadu_ps(xT + (int64_t)col[k] * ldx + t),
                                 a0);
        _mm256_storeu_ps(yt + t, _mm256_add_ps(a0, a1));
    }
}
#endif

typedef void (*fwd_tile_fn)(float *, const float *, const int32_t *, int64_t, const float *, int64_t,
                            int64_t);

/* ---- backward rows: gxT[col[k]] += wv[k] * gyrow;  gpart[k] = <gyrow, xT[col[k]]> ------------ */

static void bwd_row_portable(float *gpart, float *gxT, const float *wv, const int32_t *col, int64_t cnt,
                             const float *gyrow, const float *xT, int64_t ld, int64_t nt) {
    // loop over the row's nonzeros, then the thread's tokens
    for (int64_t k = 0; k < cnt; k++) {
        int64_t off = (int64_t)col[k] * ld;
        if (gxT != NULL) {
            float w = wv[k];
            float *g = gxT + off;
            for (int64_t t = 0; t < nt; t++) g[t] += w * gyrow[t];
        }
        if (gpart != NULL) {
            const float *p = xT + off;
            float s[8] = {0};
            for (int64_t t = 0; t < nt; t += 8)
                for (int u = 0; u < 8; u++) s[u] += gyrow[t + u] * p[t + u];
            gpart[k] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        }
    }
}

#if SFT_X86
SFT_TARGET_AVX2 static void bwd_row_avx2(float *gpart, float *gxT, const float *wv, const int32_t *col,
                                         int64_t cnt, const float *gyrow, const float *xT, int64_t ld,
                                         int64_t nt) {
    if (gxT != NULL && gpart != NULL) {
        // fused: per nonzero one pass over the tokens for both products
        for (int64_t k = 0; k < cnt; k++) {
            int64_t off = (int64_t)col[k] * ld;
            __m256 w = _mm256_broadcast_ss(wv + k);
            const float *p = xT + off;
            float *g = gxT + off;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            int64_t t = 0;
            for (; t + 16 <= nt; t += 16) {
                __m256 y0 = _mm256_loadu_ps(gyrow + t), y1 = _mm256_loadu_ps(gyrow + t + 8);
                s0 = _mm256_fmadd_ps(y0, _mm256_loadu_ps(p + t), s0);
                s1 = _mm256_fmadd_ps(y1, _mm256_loadu_ps(p + t + 8), s1);
                _mm256_storeu_ps(g + t, _mm256_fmadd_ps(w, y0, _mm256_loadu_ps(g + t)));
                _mm256_storeu_ps(g + t + 8, _mm256_fmadd_ps(w, y1, _mm256_loadu_ps(g + t + 8)));
            }
            if (t < nt) {
                __m256 y0 = _mm256_loadu_ps(gyrow + t);
                s0 = _mm256_fmadd_ps(y0, _mm256_loadu_ps(p + t), s0);
                _mm256_storeu_ps(g + t, _mm256_fmadd_ps(w, y0, _mm256_loadu_ps(g + t)));
            }
            gpart[k] = hsum_avx2(_mm256_add_ps(s0, s1));
        }
    } else if (gxT != NULL) {
        // input gradient only: scatter w' * gy into the rows of gx^T
        for (int64_t k = 0; k < cnt; k++) {
            __m256 w = _mm256_broadcast_ss(wv + k);
            float *g = gxT + (int64_t)col[k] * ld;
            for (int64_t t = 0; t < nt; t += 8)
                _mm256_storeu_ps(g + t,
                                 _mm256_fmadd_ps(w, _mm256_loadu_ps(gyrow + t), _mm256_loadu_ps(g + t)));
        }
    } else {
        // sampled products only (SDDMM)
        for (int64_t k = 0; k < cnt; k++) {
            const float *p = xT + (int64_t)col[k] * ld;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            int64_t t = 0;
            for (; t + 16 <= nt; t += 16) {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(gyrow + t), _mm256_loadu_ps(p + t), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(gyrow + t + 8), _mm256_loadu_ps(p + t + 8), s1);
            }
            if (t < nt) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(gyrow + t), _mm256_loadu_ps(p + t), s0);
            gpart[k] = hsum_avx2(_mm256_add_ps(s0, s1));
        }
    }
}
#endif

typedef void (*bwd_row_fn)(float *, float *, const float *, const int32_t *, int64_t, const float *,
                           const float *, int64_t, int64_t);

/* ---- gradient reduction: dB[i,:] += s*g*AT[j,:],  dAT[j,:] += s*g*B[i,:] --------------------- */

static ALWAYS_INLINE void reduce_body(float *dB, float *dAT, const float *g, const int32_t *col,
                                      const float *AT, const float *B, float scale, int64_t cnt, int64_t i,
                                      int64_t r) {
    float *db = dB + i * r;
    const float *bi = B + i * r;
    // one rank-1 update of length r per nonzero
    for (int64_t k = 0; k < cnt; k++) {
        float sg = scale * g[k];
        if (sg == 0.0f) continue;
        const float *a = AT + (int64_t)col[k] * r;
        float *da = dAT + (int64_t)col[k] * r;
        for (int64_t q = 0; q < r; q++) {
            db[q] += sg * a[q];
            da[q] += sg * bi[q];
        }
    }
}

static void reduce_portable(float *dB, float *dAT, const float *g, const int32_t *col, const float *AT,
                            const float *B, float scale, int64_t cnt, int64_t i, int64_t r) {
    reduce_body(dB, dAT, g, col, AT, B, scale, cnt, i, r);
}

#if SFT_X86
SFT_TARGET_AVX2 static void reduce_avx2(float *dB, float *dAT, const float *g, const int32_t *col,
                                        const float *AT, const float *B, float scale, int64_t cnt, int64_t i,
                                        int64_t r) {
    reduce_body(dB, dAT, g, col, AT, B, scale, cnt, i, r);
}
#endif

typedef void (*reduce_fn)(float *, float *, const float *, const int32_t *, const float *, const float *,
                          float, int64_t, int64_t, int64_t);

/* ---- drivers ------------------------------------------------------------------------------- */

int sparse_forward(float *y, const sparse_base *W, const float *x, const float *A, const float *B,
                   float scale, int64_t N, int64_t r) {
    int64_t out = W->out, in = W->in;
    if (N <= 0 || out <= 0) return 0;
    if (in <= 0) {
        memset(y, 0, sizeof(float) * (size_t)(N * out));
        return 0;
    }
    int nthreads = sft_get_num_threads();
    int64_t NC = sparse_token_block(in, nthreads, 0);
    int64_t ncpad_max = SFT_MIN(NC, (N + TOK_VEC - 1) / TOK_VEC * TOK_VEC);
    int64_t cap = chunk_capacity(W);
    float *xT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(in * ncpad_max));
    float *AT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(in * r, 1));
    float *wv = (float *)sft_scratch_alloc(sizeof(float) * (size_t)cap);
    int32_t *col = (int32_t *)sft_scratch_alloc(sizeof(int32_t) * (size_t)cap);
    float *ytile_all = (float *)sft_scratch_alloc(sizeof(float) * (size_t)nthreads * CHUNK_ROWS * TOK_TILE);
    int rc = 0;
    if (xT == NULL || AT == NULL || wv == NULL || col == NULL || ytile_all == NULL) {
        rc = -1;
        goto done;
    }
    recompute_fn rcf = select_recompute();
    fwd_tile_fn tile = fwd_tile_portable;
#if SFT_X86
    if (sft_simd_path == SFT_SIMD_AVX2) tile = fwd_tile_avx2;
#endif

#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        int tid = 0, nth = 1;
#endif
        float *ytile = ytile_all + (int64_t)tid * CHUNK_ROWS * TOK_TILE;
        transpose_A(AT, A, r, in);
        // loop over token blocks
        for (int64_t jc = 0; jc < N; jc += NC) {
            int64_t nc = SFT_MIN(NC, N - jc);
            int64_t ncpad = (nc + TOK_VEC - 1) / TOK_VEC * TOK_VEC;
            pack_transposed(xT, ncpad, x, in, jc, nc, ncpad);
            int64_t ta, tb;
            token_range(ncpad, tid, nth, &ta, &tb);
            // loop over row chunks
            for (int64_t i0 = 0; i0 < out; i0 = chunk_end(W, i0)) {
                int64_t i1 = chunk_end(W, i0), off0 = row_begin(W, i0);
                // recompute the chunk's W' (rows split among threads)
#pragma omp for schedule(static)
                for (int64_t i = i0; i < i1; i++) fill_rows(wv, col, W, AT, B, scale, r, i, i + 1, off0, rcf);
                // this thread's tokens: tiles of up to 64 tokens, all rows of the chunk
                for (int64_t ts = ta; ts < tb; ts += TOK_TILE) {
                    int64_t nt = SFT_MIN(TOK_TILE, tb - ts);
                    for (int64_t i = i0; i < i1; i++) {
                        int64_t b = row_begin(W, i) - off0, e = row_begin(W, i + 1) - off0;
                        tile(ytile + (i - i0) * TOK_TILE, wv + b, col + b, e - b, xT + ts, ncpad, nt);
                    }
                    // write the tile transposed: y[jc+ts+t, i0:i1]
                    int64_t nvalid = SFT_MIN(nt, nc - ts);
                    for (int64_t t = 0; t < nvalid; t++) {
                        float *yr = y + (jc + ts + t) * out;
                        for (int64_t i = i0; i < i1; i++) yr[i] = ytile[(i - i0) * TOK_TILE + t];
                    }
                }
#pragma omp barrier
            }
        }
    }
done:
    sft_scratch_free(ytile_all);
    sft_scratch_free(col);
    sft_scratch_free(wv);
    sft_scratch_free(AT);
    sft_scratch_free(xT);
    return rc;
}

int sparse_backward(float *gx, float *dA, float *dB, const sparse_base *W, const float *gy, const float *x,
                    const float *A, const float *B, float scale, int64_t N, int64_t r) {
    int64_t out = W->out, in = W->in;
    int want_g = dA != NULL;
    if (want_g) {
        memset(dA, 0, sizeof(float) * (size_t)(r * in));
        memset(dB, 0, sizeof(float) * (size_t)(out * r));
    }
    if (gx != NULL && (out <= 0 || N <= 0)) memset(gx, 0, sizeof(float) * (size_t)SFT_MAX(N * in, 0));
    if (N <= 0 || out <= 0 || in <= 0 || (gx == NULL && !want_g)) return 0;
    int nthreads = sft_get_num_threads();
    int64_t NC = sparse_token_block(in, nthreads, 1);
    int64_t ncpad_max = SFT_MIN(NC, (N + TOK_VEC - 1) / TOK_VEC * TOK_VEC);
    int64_t cap = chunk_capacity(W);
    size_t panel = sizeof(float) * (size_t)(in * ncpad_max);
    float *xT = want_g ? (float *)sft_scratch_alloc(panel) : NULL;
    float *gxT = gx != NULL ? (float *)sft_scratch_alloc(panel) : NULL;
    float *gyT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(CHUNK_ROWS * ncpad_max));
    float *AT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(in * r, 1));
    float *dAT_all =
        want_g ? (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(nthreads * in * r, 1)) : NULL;
    float *wv = gx != NULL ? (float *)sft_scratch_alloc(sizeof(float) * (size_t)cap) : NULL;
    int32_t *col = (int32_t *)sft_scratch_alloc(sizeof(int32_t) * (size_t)cap);
    float *gpart_all = want_g ? (float *)sft_scratch_alloc(sizeof(float) * (size_t)(nthreads * cap)) : NULL;
    int rc = 0;
    if ((want_g && (xT == NULL || dAT_all == NULL || gpart_all == NULL)) ||
        (gx != NULL && (gxT == NULL || wv == NULL)) || gyT == NULL || AT == NULL || col == NULL) {
        rc = -1;
        goto done;
    }
    if (want_g) memset(dAT_all, 0, sizeof(float) * (size_t)(nthreads * in * r));
    recompute_fn rcf = select_recompute();
    bwd_row_fn row = bwd_row_portable;
    reduce_fn red = reduce_portable;
#if SFT_X86
    if (sft_simd_path == SFT_SIMD_AVX2) row = bwd_row_avx2, red = reduce_avx2;
#endif

#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        int tid = 0, nth = 1;
#endif
        float *dAT = want_g ? dAT_all + (int64_t)tid * in * r : NULL;
        float *gpart = want_g ? gpart_all + (int64_t)tid * cap : NULL;
        transpose_A(AT, A, r, in);
        // loop over token blocks
        for (int64_t jc = 0; jc < N; jc += NC) {
            int64_t nc = SFT_MIN(NC, N - jc);
            int64_t ncpad = (nc + TOK_VEC - 1) / TOK_VEC * TOK_VEC;
            if (want_g) pack_transposed(xT, ncpad, x, in, jc, nc, ncpad);
            int64_t ta, tb;
            token_range(ncpad, tid, nth, &ta, &tb);
            // zero this thread's columns of the gx^T panel
            if (gx != NULL)
                for (int64_t j = 0; j < in; j++)
                    memset(gxT + j * ncpad + ta, 0, sizeof(float) * (size_t)(tb - ta));
            // loop over row chunks
            for (int64_t i0 = 0; i0 < out; i0 = chunk_end(W, i0)) {
                int64_t i1 = chunk_end(W, i0), off0 = row_begin(W, i0);
                // recompute the chunk's W', expand columns, transpose the chunk's gy columns
#pragma omp for schedule(static)
                for (int64_t i = i0; i < i1; i++) {
                    fill_rows(wv, col, W, AT, B, scale, r, i, i + 1, off0, rcf);
                    float *g = gyT + (i - i0) * ncpad;
                    for (int64_t t = 0; t < nc; t++) g[t] = gy[(jc + t) * out + i];
                    for (int64_t t = nc; t < ncpad; t++) g[t] = 0.0f;
                }
                // this thread's tokens, all rows of the chunk
                int64_t cnt_chunk = row_begin(W, i1) - off0;
                if (gpart != NULL && ta == tb) memset(gpart, 0, sizeof(float) * (size_t)cnt_chunk);
                if (ta < tb)
                    for (int64_t i = i0; i < i1; i++) {
                        int64_t b = row_begin(W, i) - off0, e = row_begin(W, i + 1) - off0;
                        row(gpart != NULL ? gpart + b : NULL, gxT != NULL ? gxT + ta : NULL,
                            wv != NULL ? wv + b : NULL, col + b, e - b, gyT + (i - i0) * ncpad + ta,
                            xT != NULL ? xT + ta : NULL, ncpad, tb - ta);
                    }
#pragma omp barrier
                if (want_g) {
                    // sum the threads' partial g in thread order, reduce into dB and this thread's dA^T
#pragma omp for schedule(static)
                    for (int64_t i = i0; i < i1; i++) {
                        int64_t b = row_begin(W, i) - off0, e = row_begin(W, i + 1) - off0;
                        float *g0 = gpart_all + b;
                        for (int u = 1; u < nth; u++) {
                            const float *gu = gpart_all + (int64_t)u * cap + b;
                            for (int64_t k = 0; k < e - b; k++) g0[k] += gu[k];
                        }
                        red(dB, dAT, g0, col + b, AT, B, scale, e - b, i, r);
                    }
                }
            }
            // write this thread's tokens of gx
            if (gx != NULL) {
                int64_t te = SFT_MIN(tb, nc);
                for (int64_t t = ta; t < te; t++) {
                    float *gr = gx + (jc + t) * in;
                    for (int64_t j = 0; j < in; j++) gr[j] = gxT[j * ncpad + t];
                }
#pragma omp barrier
            }
        }
        if (want_g) {
            // dA[q, j] = sum over threads (in order) of dAT_u[j, q]
#pragma omp for schedule(static)
            for (int64_t j = 0; j < in; j++)
                for (int64_t q = 0; q < r; q++) {
                    float s = 0.0f;
                    for (int u = 0; u < nth; u++) s += dAT_all[(int64_t)u * in * r + j * r + q];
                    dA[q * in + j] = s;
                }
        }
    }
done:
    sft_scratch_free(gpart_all);
    sft_scratch_free(col);
    sft_scratch_free(wv);
    sft_scratch_free(dAT_all);
    sft_scratch_free(AT);
    sft_scratch_free(gyT);
    sft_scratch_free(gxT);
    sft_scratch_free(xT);
    return rc;
}

int sparse_merge(float *values_out, const sparse_base *W, const float *A, const float *B, float scale,
                 int64_t r) {
    int64_t out = W->out, in = W->in;
    if (out <= 0 || in <= 0) return 0;
    int nthreads = sft_get_num_threads();
    int64_t cap = chunk_capacity(W);
    float *AT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(in * r, 1));
    int32_t *col_all = (int32_t *)sft_scratch_alloc(sizeof(int32_t) * (size_t)(nthreads * cap));
    if (AT == NULL || col_all == NULL) {
        sft_scratch_free(col_all);
        sft_scratch_free(AT);
        return -1;
    }
    recompute_fn rcf = select_recompute();
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num();
#else
        int tid = 0;
#endif
        int32_t *col = col_all + (int64_t)tid * cap;
        transpose_A(AT, A, r, in);
        // one row at a time: columns into the thread's buffer, W' straight into the output
#pragma omp for schedule(static)
        for (int64_t i = 0; i < out; i++) {
            int64_t b = row_begin(W, i);
            fill_cols(col, W, i, i + 1, b);
            rcf(values_out + b, col, W->values + b, B + i * r, AT, scale, row_begin(W, i + 1) - b, r);
        }
    }
    sft_scratch_free(col_all);
    sft_scratch_free(AT);
    return 0;
}

int sparse_check(const sparse_base *W, int64_t nnz) {
    if (W->kind == SPARSE_CSR) {
        if (W->rowptr[0] != 0 || W->rowptr[W->out] != nnz) return 1;
        // rows: pointers nondecreasing, columns increasing and inside [0, in)
        for (int64_t i = 0; i < W->out; i++) {
            if (W->rowptr[i + 1] < W->rowptr[i]) return 1;
            for (int64_t k = W->rowptr[i]; k < W->rowptr[i + 1]; k++) {
                if (W->colidx[k] < 0 || W->colidx[k] >= W->in) return 2;
                if (k > W->rowptr[i] && W->colidx[k] <= W->colidx[k - 1]) return 2;
            }
        }
        return 0;
    }
    if (W->m < 1 || W->n < 0 || W->n > W->m || W->in % W->m != 0) return 4;
    if (W->out * (W->in / W->m * W->n) != nnz) return 1;
    // groups: indices increasing and below m
    for (int64_t k = 0; k < nnz; k++) {
        if (W->idx[k] >= W->m) return 3;
        if (k % W->n != 0 && W->idx[k] <= W->idx[k - 1]) return 3;
    }
    return 0;
}

/* ---- naive references ---------------------------------------------------------------------- */

/* Column of the k-th stored entry of row i (k counted from the row's start). */
static int64_t naive_col(const sparse_base *W, int64_t i, int64_t k) {
    if (W->kind == SPARSE_CSR) return W->colidx[W->rowptr[i] + k];
    return (k / W->n) * W->m + W->idx[row_begin(W, i) + k];
}

/* W'_ij at the k-th stored entry of row i. */
static float naive_wprime(const sparse_base *W, const float *A, const float *B, float scale, int64_t r,
                          int64_t i, int64_t k) {
    int64_t j = naive_col(W, i, k);
    float d = 0.0f;
    for (int64_t q = 0; q < r; q++) d += B[i * r + q] * A[q * W->in + j];
    return W->values[row_begin(W, i) + k] + scale * d;
}

void sparse_forward_naive(float *y, const sparse_base *W, const float *x, const float *A, const float *B,
                          float scale, int64_t N, int64_t r) {
    // one sparse dot product per output element
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < W->out; i++) {
            float acc = 0.0f;
            int64_t cnt = row_begin(W, i + 1) - row_begin(W, i);
            for (int64_t k = 0; k < cnt; k++)
                acc += naive_wprime(W, A, B, scale, r, i, k) * x[t * W->in + naive_col(W, i, k)];
            y[t * W->out + i] = acc;
        }
}

void sparse_backward_naive(float *gx, float *dA, float *dB, const sparse_base *W, const float *gy,
                           const float *x, const float *A, const float *B, float scale, int64_t N,
                           int64_t r) {
    int64_t out = W->out, in = W->in;
    if (gx != NULL) memset(gx, 0, sizeof(float) * (size_t)(N * in));
    if (dA != NULL) {
        memset(dA, 0, sizeof(float) * (size_t)(r * in));
        memset(dB, 0, sizeof(float) * (size_t)(out * r));
    }
    // loop over stored entries: scatter into gx, sample g_ij, rank-1 updates of dA and dB
    for (int64_t i = 0; i < out; i++) {
        int64_t cnt = row_begin(W, i + 1) - row_begin(W, i);
        for (int64_t k = 0; k < cnt; k++) {
            int64_t j = naive_col(W, i, k);
            float w = naive_wprime(W, A, B, scale, r, i, k);
            float g = 0.0f;
            for (int64_t t = 0; t < N; t++) {
                if (gx != NULL) gx[t * in + j] += gy[t * out + i] * w;
                g += gy[t * out + i] * x[t * in + j];
            }
            if (dA == NULL) continue;
            for (int64_t q = 0; q < r; q++) {
                dB[i * r + q] += scale * g * A[q * in + j];
                dA[q * in + j] += scale * g * B[i * r + q];
            }
        }
    }
}
